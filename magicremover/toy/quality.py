"""The toy world's quality gates: VAE fidelity, sample correctness, word-specific attention, inversion, removal.

Every figure is computed on held-out scenes (seeds ≥ ``HELD_OUT_SEED``, never trained on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from magicremover.attention import CrossAttentionStore, controlled_attention, token_maps
from magicremover.diffusion import decode_latents, encode_image, encode_text, unconditional_embedding, unet_eps
from magicremover.images import psnr
from magicremover.inversion import InversionConfig, invert, reconstruct
from magicremover.models import SDComponents
from magicremover.target_tokens import find_target
from magicremover.toy.scenes import ToyObject, ToyScene, render_scene
from magicremover.types import RemovalSample

HELD_OUT_SEED = 10_000_000


@dataclass(frozen=True)
class ToyCase:
    """One removal case: a held-out scene and the object to remove, with its ground truth."""

    scene: ToyScene
    obj: ToyObject

    @property
    def sample(self) -> RemovalSample:
        return RemovalSample(
            Image.fromarray(self.scene.image),
            self.scene.caption,
            self.obj.phrase,
            sample_id=f"toy{self.scene.seed}_{self.obj.phrase.replace(' ', '_')}",
        )


def held_out_cases(n: int, first_seed: int = HELD_OUT_SEED, kind: str | None = None) -> list[ToyCase]:
    """``n`` cases, the first object of consecutive held-out scenes; ``kind`` = ``glass`` / ``shadow`` filters."""
    cases, seed = [], first_seed
    while len(cases) < n:
        scene = render_scene(seed)
        seed += 1
        obj = scene.objects[0]
        is_glass, has_shadow = obj.shape == "glass disc", bool((obj.shadow_mask > obj.mask + 0.5).any())
        if kind == "glass" and not is_glass or kind == "shadow" and not has_shadow:
            continue
        cases.append(ToyCase(scene, obj))
    return cases


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` in [0, 1] → ``(H, W, 3)`` uint8."""
    return (image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 → ``(1, 3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255


@torch.no_grad()
def vae_reconstruction(c: SDComponents, image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 → encode (posterior mean) → decode → ``(H, W, 3)`` uint8."""
    return to_uint8(decode_latents(c, encode_image(c, to_tensor(image))))


def vae_psnr(c: SDComponents, scenes: list[ToyScene]) -> float:
    """Mean PSNR of the VAE's reconstructions."""
    return float(np.mean([psnr(s.image, vae_reconstruction(c, s.image)) for s in scenes]))


def removal_metrics(case: ToyCase, output: np.ndarray) -> dict[str, float]:
    """PSNR inside the object's mask (with shadow) against the ground truth, and outside it against the input.

    Inside is every pixel the object or its shadow touches at all (coverage > 0), so the ground truth equals the input
    outside: an anti-aliased rim pixel changes when the object goes, and counted outside it would cost even a perfect
    removal (the ground truth itself scored ~39 dB there).
    """
    inside = case.obj.shadow_mask > 0
    return {
        "psnr_in_vs_gt": psnr(output, case.obj.removed, inside),
        "psnr_in_input_vs_gt": psnr(case.scene.image, case.obj.removed, inside),
        "psnr_out_vs_input": psnr(output, case.scene.image, ~inside),
    }


@torch.no_grad()
def attention_iou(c: SDComponents, cases: list[ToyCase], quantile: float = 0.8) -> dict[str, float]:
    """IoU of the top-20 % region of a token's cross-attention with the object's true mask.

    The map is taken like M₀: one conditional UNet pass on the DDIM-inverted latent at the last timestep, heads and
    layers summed. Reported for the object's words, the "photo" token, the start token and, in two-object scenes,
    the other object's words; plus how often the target's map is higher on its own object than on the other.
    ``iou_ceiling`` is the best any map can score under this protocol (a top-20 % region against an object covering
    a fraction f of the image: min(f, 0.2) / max(f, 0.2)); ``iou_object_matched`` sizes the region to the object.
    ``other_covered``: in two-object scenes, the fraction of the other object's mask inside the target's top-20 %
    region — what the edit will also touch.
    """
    scores: dict[str, list[float]] = {
        "object": [],
        "photo": [],
        "start": [],
        "other_object": [],
        "ceiling": [],
        "object_matched": [],
    }
    prefers_right, covered = [], []
    config = InversionConfig(method="ddim", num_inference_steps=50)
    for case in cases:
        image = to_tensor(case.scene.image)
        inversion = invert(c, image, case.scene.caption, config)
        store = CrossAttentionStore()
        with controlled_attention(c.unet, store):
            unet_eps(c, inversion.trajectory[1:2], int(inversion.timesteps[-1]), inversion.cond_embedding)

        def region(tokens) -> np.ndarray:
            amap = token_maps(store.maps, store.shapes, list(tokens), tuple(image.shape[-2:])).sum(1)[0].numpy()
            return amap >= np.quantile(amap, quantile), amap

        truth = case.obj.mask > 0.5
        target = find_target(c.tokenizer, case.scene.caption, case.obj.phrase)
        own, own_map = region(target.flat)
        scores["object"].append(_iou(own, truth))
        area = truth.mean()
        scores["ceiling"].append(min(area, 1 - quantile) / max(area, 1 - quantile))
        scores["object_matched"].append(_iou(own_map >= np.quantile(own_map, 1 - area), truth))
        scores["photo"].append(_iou(region(find_target(c.tokenizer, case.scene.caption, "photo").flat)[0], truth))
        scores["start"].append(_iou(region([0])[0], truth))
        if len(case.scene.objects) == 2:
            other = case.scene.objects[1]
            other_truth = other.mask > 0.5
            other_region, _ = region(find_target(c.tokenizer, case.scene.caption, other.phrase).flat)
            scores["other_object"].append(_iou(other_region, truth))
            prefers_right.append(own_map[truth].mean() > own_map[other_truth].mean())
            covered.append(float((own & other_truth).sum() / max(other_truth.sum(), 1)))
    result = {f"iou_{k}": float(np.mean(v)) for k, v in scores.items() if v}
    result["two_object_scenes"] = len(covered)
    if covered:
        result.update(other_covered=float(np.mean(covered)), prefers_right_object=float(np.mean(prefers_right)))
    return result


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@torch.no_grad()
def sample_scores(
    c: SDComponents, scenes: list[ToyScene], steps: int = 50, guidance: float = 7.5, seed: int = 0
) -> dict:
    """Generate one image per held-out caption; score object recall and background accuracy with the detectors."""
    from magicremover.diffusion import alpha_bar, cfg_eps, ddim_step, step_size
    from magicremover.toy.detect import caption_background, caption_objects, classify_background, detect_objects

    c.scheduler.set_timesteps(steps)
    generator, images = torch.Generator().manual_seed(seed), []
    size = c.unet.config.sample_size
    uncond = unconditional_embedding(c)
    for scene in scenes:
        cond, z = encode_text(c, [scene.caption]), torch.randn(1, 4, size, size, generator=generator)
        for t in c.scheduler.timesteps.tolist():
            z = ddim_step(z, cfg_eps(c, z, t, uncond, cond, guidance), alpha_bar(c, t), alpha_bar(c, t - step_size(c)))
        images.append(to_uint8(decode_latents(c, z)))
    wanted = [caption_objects(s.caption) for s in scenes]
    hits = sum(len(w & detect_objects(img)) for w, img in zip(wanted, images))
    backgrounds = classify_background(images)
    return {
        "object_recall": hits / max(sum(len(w) for w in wanted), 1),
        "background_accuracy": float(
            np.mean([b == caption_background(s.caption) for b, s in zip(backgrounds, scenes)])
        ),
        "images": images,
    }


@torch.no_grad()
def inversion_gap(c: SDComponents, scenes: list[ToyScene], steps: int = 50) -> dict[str, float]:
    """Null-text reconstruction PSNR vs the VAE's own reconstruction, and both vs the input."""
    vae, nti, nti_vs_vae = [], [], []
    for scene in scenes:
        image = to_tensor(scene.image)
        inversion = invert(c, image, scene.caption, InversionConfig(num_inference_steps=steps))
        recon = to_uint8(decode_latents(c, reconstruct(c, inversion, 7.5)))
        own = to_uint8(decode_latents(c, inversion.trajectory[:1]))
        vae.append(psnr(own, scene.image))
        nti.append(psnr(recon, scene.image))
        nti_vs_vae.append(psnr(recon, own))
    return {
        "vae_psnr": float(np.mean(vae)),
        "nti_psnr": float(np.mean(nti)),
        "nti_vs_vae_psnr": float(np.mean(nti_vs_vae)),
    }
