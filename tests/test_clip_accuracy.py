"""CLIP@N and CLIP distance (Inst-Inpaint's protocol): the counting rule on hand-made logits, the crop and the scores
against an independent computation on a tiny random CLIP, and the keys in a run's scores."""

import numpy as np
import pytest
import torch
from PIL import Image

from magicremover.eval.authors import Sample
from magicremover.eval.clip import tiny_clip
from magicremover.eval.clip_accuracy import ClipAccuracy, box_crop, clip_at_n


def test_clip_at_n_counts_samples_whose_seen_class_left_the_top_n():
    source = torch.tensor([[9.0, 1, 0, 0, 0, 0], [0, 0, 8, 1, 0, 0], [0, 0, 0, 0, 0, 7]])
    output = torch.tensor(
        [
            [1.0, 9, 8, 7, 6, 5],  # class 0 ranks 6th: gone at every N
            [0, 0, 3, 5, 4, 0],  # class 2 ranks 3rd: seen at N = 3 and 5
            [6, 5, 4, 3, 0, 9],
        ]  # class 5 still first
    )
    assert [clip_at_n(source, output, n) for n in (1, 3, 5)] == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert clip_at_n(source, output[:, :2], 5) == clip_at_n(source, output[:, :2], 2)  # N beyond the classes: all


def test_the_box_crop_is_resized_cut_and_padded_like_inst_inpaint():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 30:50] = 255  # a wide box: rows 10–19, columns 30–49
    crop = box_crop(image, mask)
    # By hand: 64 → 256 is × 4; the box (30, 10, 50, 20) becomes (120, 40, 200, 80): 80 × 40, padded to 80².
    cut = np.asarray(Image.fromarray(image).resize((256, 256), Image.BILINEAR))[40:80, 120:200]
    expected = np.zeros((80, 80, 3), np.uint8)
    expected[20:60] = cut
    assert crop.size == (80, 80) and np.array_equal(np.asarray(crop), expected)
    assert box_crop(image, np.zeros_like(mask)) is None


def _samples():
    rng = np.random.default_rng(1)
    out = []
    for i, name in enumerate(["dog", "cat", "dog"]):
        original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        output = original.copy()
        output[16:40, 8 + i : 40] = output[16:40, 8 + i : 40] // 2
        mask = np.zeros((64, 64), np.uint8)
        mask[16:40, 8 + i : 40] = 255
        out.append((original, output, mask, name))
    return out


def test_the_scores_equal_an_independent_computation_on_a_tiny_clip():
    clip, processor = tiny_clip(seed=5)()
    accuracy = ClipAccuracy(clip, processor)
    samples = _samples()
    accuracy.update(
        [Sample(str(i), out, orig, None, name, object_mask=mask) for i, (orig, out, mask, name) in enumerate(samples)]
    )
    report = accuracy.compute()
    # By hand: every crop through CLIP, logits against "a photo of a cat" / "... dog" (sorted), then the rule.
    names = ["cat", "dog"]
    with torch.no_grad():
        tokens = processor.tokenizer([f"a photo of a {n}" for n in names], padding=True, return_tensors="pt")
        text = clip.get_text_features(**tokens)
        text = getattr(text, "pooler_output", text)
        text = text / text.norm(dim=-1, keepdim=True)

        def logits(image, mask):
            pixels = processor(images=box_crop(image, mask), return_tensors="pt")["pixel_values"]
            feature = clip.get_image_features(pixel_values=pixels)
            feature = getattr(feature, "pooler_output", feature)
            return (clip.logit_scale.exp() * feature / feature.norm(dim=-1, keepdim=True) @ text.T)[0].numpy()

        rows = [(logits(o, m), logits(r, m), names.index(n)) for o, r, m, n in _samples()]
    for n in (1, 3, 5):
        gone = [src.argmax() not in np.argsort(-out)[:n] for src, out, _ in rows]
        assert report[f"clip_acc@{n}"] == pytest.approx(np.mean(gone))
    assert report["clip_distance"] == pytest.approx(np.mean([src[k] - out[k] for src, out, k in rows]), rel=1e-5)
    assert (report["clip_accuracy_settings"]["classes"], report["clip_accuracy_settings"]["n"]) == (2, 3)


def test_run_scores_carry_the_clip_accuracy_keys_and_skip_unmasked_samples():
    from magicremover.eval.authors import Sample
    from magicremover.eval.scores import SetScores

    scores = SetScores(clip=tiny_clip(seed=5), clip_accuracy=True)
    for i, (original, output, mask, name) in enumerate(_samples()):
        scores.add(Sample(str(i), output, original, None, name, object_mask=mask if i else None))
    report = scores.compute()
    assert {"clip_acc@1", "clip_acc@3", "clip_acc@5", "clip_distance"} <= set(report)
    assert (
        report["clip_accuracy_settings"]["n"] == 2 and "tiny random CLIP" in report["clip_accuracy_settings"]["model"]
    )
    assert report["clip_acc@3"] == 0.0  # two classes: the seen class is always within the top 3
