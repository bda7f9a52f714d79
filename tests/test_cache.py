import logging
import os

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
    for name in ("timesteps", "trajectory", "null_embeddings", "cond_embedding"):  # dropped latents are NaN in both
        torch.testing.assert_close(getattr(first, name), getattr(second, name), rtol=0, atol=0, equal_nan=True)
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
    torch.testing.assert_close(again.trajectory, first.trajectory, rtol=0, atol=0, equal_nan=True)
    assert invert_cached(tiny, image_tensor, PROMPT, CONFIG, cache).from_cache  # rewritten, valid again


def test_entry_stored_under_another_key_is_rejected(tiny, image_tensor, cache):
    invert_cached(tiny, image_tensor, PROMPT, CONFIG, cache)
    source = cache.path(cache_key(tiny.identity, image_tensor, PROMPT, CONFIG))
    other = cache_key(tiny.identity, image_tensor, "a photo of a blue square", CONFIG)
    cache.path(other).parent.mkdir(parents=True, exist_ok=True)
    cache.path(other).write_bytes(source.read_bytes())
    assert cache.load(other) is None and not cache.path(other).exists()


def test_entries_are_lean_and_their_bytes_follow_from_the_shapes(tiny, image_tensor, cache):
    from safetensors import safe_open

    from magicremover.inversion.cache import entry_bytes

    config = InversionConfig(num_inference_steps=6, inner_steps=2)
    full = invert_cached(tiny, image_tensor, PROMPT, config, None)  # no cache: the exact inversion
    lean = invert_cached(tiny, image_tensor, PROMPT, config, cache)
    path = cache.path(cache_key(tiny.identity, image_tensor, PROMPT, config))
    with safe_open(str(path), framework="pt") as handle:
        stored = {name: handle.get_tensor(name) for name in handle.keys()}
    assert stored["trajectory_index"].tolist() == [0, 1, 6] and stored["null_step"].dtype == torch.int8
    latent, text = tuple(full.trajectory.shape[1:]), tuple(full.null_embeddings.shape[1:])
    assert sum(t.nbytes for t in stored.values()) == entry_bytes(6, latent, text, True, False)
    # z0, t = 1 and z_T exact; the rest NaN; the first null embedding exact, each later row within half an int8 step
    # of its difference from the previous row *as read back* (largest magnitude / 127: the symmetric per-row
    # quantiser, closed loop), so no error carries over from one step to the next.
    assert torch.equal(lean.trajectory[[0, 1, 6]], full.trajectory[[0, 1, 6]]) and lean.trajectory[2:6].isnan().all()
    exact, read = full.null_embeddings, lean.null_embeddings
    half_step = (exact[1:] - read[:-1]).abs().amax(-1, keepdim=True) / 254
    assert half_step.max() > 0 and ((read[1:] - exact[1:]).abs() <= half_step + 1e-7).all()
    assert torch.equal(read[0], exact[0])
    # Coding each step against the first instead would allow errors up to half a step of the whole drift.
    drift = (exact[1:] - exact[:1]).abs().amax(-1, keepdim=True) / 254
    assert (read[1:] - exact[1:]).abs().max() < drift.max()
    # Direct Inversion asks for every latent: the lean entry is recomputed and replaced by a full one.
    again = invert_cached(tiny, image_tensor, PROMPT, config, cache, full_trajectory=True)
    assert not again.from_cache and torch.equal(again.trajectory, full.trajectory)
    assert invert_cached(tiny, image_tensor, PROMPT, config, cache).from_cache  # a full entry serves everyone


def test_shared_null_embeddings_are_stored_once(tiny, image_tensor, cache):
    from safetensors import safe_open

    config = InversionConfig(num_inference_steps=4, method="negative_prompt")
    first = invert_cached(tiny, image_tensor, PROMPT, config, cache)
    with safe_open(str(cache.path(cache_key(tiny.identity, image_tensor, PROMPT, config))), framework="pt") as handle:
        assert "null_step" not in handle.keys() and handle.get_tensor("null_base").shape[0] == 1
    second = invert_cached(tiny, image_tensor, PROMPT, config, cache)
    assert second.from_cache and torch.equal(second.null_embeddings, first.null_embeddings)
    assert torch.equal(second.null_embeddings, first.cond_embedding.expand(4, -1, -1))


def _entry(cache, name: str, size: int, mtime: float):
    path = cache.root / name[:2] / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def test_max_gb_evicts_least_recently_used_entries_with_one_warning(tiny, image_tensor, tmp_path, caplog):
    cache = InversionCache(tmp_path / "cache", max_gb=1e-9 * 100_000)  # 100 kB
    old, recent = _entry(cache, "aa-old", 45_000, 1_000), _entry(cache, "ab-recent", 45_000, 2_000)
    with caplog.at_level(logging.WARNING):
        invert_cached(tiny, image_tensor, PROMPT, CONFIG, cache)
    new = cache.path(cache_key(tiny.identity, image_tensor, PROMPT, CONFIG))
    assert 20_000 < new.stat().st_size < 40_000 and not old.exists() and recent.exists() and new.exists()
    assert cache.evicted == 1 and caplog.text.count("cache_max_gb=0.0001") == 1
    os.utime(recent, (3_000, 3_000))
    invert_cached(tiny, image_tensor, PROMPT, CONFIG, cache)  # a hit refreshes the entry: now the most recent use
    assert new.stat().st_mtime > 3_000
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        invert_cached(tiny, image_tensor, "a photo of a blue square", CONFIG, cache)
    assert not recent.exists() and new.exists() and cache.evicted == 2 and "cache_max_gb" not in caplog.text


@pytest.mark.parametrize("value", [0, -1, "ten"])
def test_a_bad_cache_cap_is_a_one_line_error_before_any_model_loads(value):
    from magicremover.config import build_remover, compose_config
    from magicremover.errors import ConfigError

    cfg = compose_config("remove", [f"cache_max_gb={value}"])
    with pytest.raises(ConfigError, match=r"^cache_max_gb=.* must be a positive number of GB \(or null for no cap\)$"):
        build_remover(cfg)  # cfg.model would be loaded after the check: the hub id does not exist offline
