import json
import time
from types import SimpleNamespace

import pytest
import torch

from magicremover.attention import CrossAttentionStore, controlled_attention
from magicremover.errors import ConfigError, ModelLoadError
from magicremover.models import check_components, load_pretrained, resolve_device, resolve_dtype
from magicremover.tiny import build_tiny


def test_tiny_has_sd_geometry_and_frozen_weights(tiny):
    assert tiny.vae_scale_factor == 8 and tiny.resolution == 64
    assert len(tiny.tokenizer) == 49408 == tiny.text_encoder.config.vocab_size
    assert tiny.unet.config.cross_attention_dim == tiny.text_encoder.config.hidden_size
    for module in (tiny.unet, tiny.vae, tiny.text_encoder):
        assert not any(p.requires_grad for p in module.parameters())
    latent = tiny.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latent.shape == (1, 4, 8, 8)
    store = CrossAttentionStore()
    with controlled_attention(tiny.unet, store):
        tiny.unet(torch.zeros(1, 4, 8, 8), 1, encoder_hidden_states=torch.zeros(1, 77, 32))
    assert {shape for shape in store.shapes.values()} == {(8, 8), (4, 4)}  # cross-attention at two resolutions


def test_scheduler_is_built_with_sd_settings(tiny):
    config = tiny.scheduler.config
    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (config.clip_sample, config.set_alpha_to_one, config.steps_offset) == (False, False, 1)
    tiny.scheduler.set_timesteps(50)
    assert tiny.scheduler.timesteps[:2].tolist() == [981, 961] and tiny.scheduler.timesteps[-1] == 1


def test_tiny_build_is_deterministic_per_seed():
    a, b, c = build_tiny(seed=3, device="cpu"), build_tiny(seed=3, device="cpu"), build_tiny(seed=4, device="cpu")
    pa, pb, pc = (next(m.unet.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_save_pretrained_round_trip_through_the_real_loader(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "model")
    loaded = load_pretrained(path=str(tmp_path / "model"), device="cpu")
    z, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    assert torch.equal(
        loaded.unet(z, 501, encoder_hidden_states=emb).sample, tiny.unet(z, 501, encoder_hidden_states=emb).sample
    )
    assert len(loaded.tokenizer) == 49408
    again = load_pretrained(path=str(tmp_path / "model"), device="cpu")
    assert again.identity == loaded.identity  # content-based, so the inversion cache survives reloads


def test_loader_rejects_v_prediction_checkpoints(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    config_file = tmp_path / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text()) | {"prediction_type": "v_prediction"}
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="predicts 'v_prediction'"):
        load_pretrained(path=str(tmp_path), device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "/does/not/exist"}, "model.path=/does/not/exist is not a directory"),
        ({"path": "/tmp"}, "lacks unet/, vae/, text_encoder/, tokenizer/"),
        ({}, "no model given"),
    ],
)
def test_bad_model_locations(kwargs, message):
    with pytest.raises((ModelLoadError, ConfigError), match=message):
        load_pretrained(device="cpu", **kwargs)


def test_missing_hub_weights_fail_fast_with_the_fix():
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="pass model.path=DIR") as info:
        load_pretrained(source="stable-diffusion-v1-5/stable-diffusion-v1-5", device="cpu")
    assert time.perf_counter() - start < 10
    assert "\n" not in str(info.value)


def _parts(tiny, **changes):
    parts = dict(unet=tiny.unet, vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, is_xl=False)
    return SimpleNamespace(**(parts | changes))


def test_silently_broken_offline_tokenizer_is_caught(tiny):
    from transformers import CLIPTokenizer

    # Offline, this does not raise: it returns a 2-token stand-in that maps every word to one id.
    broken = CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14")
    assert len(broken) < 100
    with pytest.raises(ModelLoadError, match=f"only {len(broken)} tokens"):
        check_components(_parts(tiny, tokenizer=broken))


def test_mismatched_components_are_caught(tiny):
    text = SimpleNamespace(config=SimpleNamespace(vocab_size=49408, hidden_size=768, max_position_embeddings=77))
    with pytest.raises(ModelLoadError, match="cross_attention_dim 32 != text encoder hidden size 768"):
        check_components(_parts(tiny, text_encoder=text))


def test_device_and_dtype_resolution():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ConfigError, match="model.dtype=half is not one of"):
        resolve_dtype("half", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="use device=auto or device=cpu"):
            resolve_device("cuda")


def test_half_precision_export_loads_back_as_float32(tiny, tmp_path):
    tiny.save_pretrained(tmp_path, dtype=torch.float16)
    size = sum(f.stat().st_size for f in tmp_path.rglob("*.safetensors"))
    loaded = load_pretrained(path=str(tmp_path), device="cpu", dtype="float32")
    assert loaded.dtype == torch.float32 and next(tiny.unet.parameters()).dtype == torch.float32  # original untouched
    z, emb = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    reference = tiny.unet(z, 501, encoder_hidden_states=emb).sample
    assert (loaded.unet(z, 501, encoder_hidden_states=emb).sample - reference).abs().max() < 1e-2
    tiny.save_pretrained(tmp_path / "full")
    assert size < 0.6 * sum(f.stat().st_size for f in (tmp_path / "full").rglob("*.safetensors"))
