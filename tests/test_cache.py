import logging

import pytest
import torch

from magicremover.inversion import InversionCache, InversionConfig, cache_key, invert_cached

PROMPT = "a photo of a red circle"
CONFIG = InversionConfig(num_inference_steps=3, inner_steps=2)


@pytest.fixture
def cache(tmp_path):
    return InversionCache(tmp_path / "cache")


def test_hit_returns_identical_tensors_with_zero_unet_calls(tiny, image_tensor, cache):
    first = invert_cached(tiny, image_tensor, PROMPT, CONFIG, cache)
    before = tiny.calls.totals()
    second = invert_cached(tiny, image_tensor, PROMPT, CONFIG, cache)
    assert tiny.calls.delta(tiny.calls.totals(), before) == {}
    assert (cache.hits, cache.misses) == (1, 1) and second.from_cache and not first.from_cache
    for name in ("timesteps", "trajectory", "null_embeddings", "cond_embedding"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert not list(cache.root.rglob("*.tmp"))


def test_key_covers_everything_that_changes_the_result(image_tensor):
    base = cache_key("model-a", image_tensor, PROMPT, CONFIG)
    assert base == cache_key("model-a", image_tensor.clone(), PROMPT, CONFIG)
    changed = [
        cache_key("model-b", image_tensor, PROMPT, CONFIG),
        cache_key("model-a", image_tensor.flip(-1), PROMPT, CONFIG),
        cache_key("model-a", image_tensor, PROMPT + " .", CONFIG),
        cache_key(
            "model-a", image_tensor, PROMPT, InversionConfig(num_inference_steps=3, inner_steps=2, guidance_scale=5.0)
        ),
        cache_key(
            "model-a", image_tensor, PROMPT, InversionConfig(num_inference_steps=3, inner_steps=2, encode="sample")
        ),
        cache_key(
            "model-a", image_tensor, PROMPT, InversionConfig(num_inference_steps=3, inner_steps=2, method="ddim")
        ),
    ]
    assert len({base, *changed}) == 7


def test_corrupt_entry_is_recomputed_not_trusted(tiny, image_tensor, cache, caplog):
    first = invert_cached(tiny, image_tensor, PROMPT, CONFIG, cache)
    path = cache.path(cache_key(tiny.identity, image_tensor, PROMPT, CONFIG))
    path.write_bytes(path.read_bytes()[:100])  # a truncated write from a crashed process
    with caplog.at_level(logging.WARNING):
        again = invert_cached(tiny, image_tensor, PROMPT, CONFIG, cache)
    assert "unusable" in caplog.text and not again.from_cache and cache.misses == 2
    assert torch.equal(again.trajectory, first.trajectory)
    assert invert_cached(tiny, image_tensor, PROMPT, CONFIG, cache).from_cache  # rewritten, valid again


def test_entry_stored_under_another_key_is_rejected(tiny, image_tensor, cache):
    invert_cached(tiny, image_tensor, PROMPT, CONFIG, cache)
    source = cache.path(cache_key(tiny.identity, image_tensor, PROMPT, CONFIG))
    other = cache_key(tiny.identity, image_tensor, "a photo of a blue square", CONFIG)
    cache.path(other).parent.mkdir(parents=True, exist_ok=True)
    cache.path(other).write_bytes(source.read_bytes())
    assert cache.load(other) is None and not cache.path(other).exists()
