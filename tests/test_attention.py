import pytest
import torch

from magicremover.attention import (
    AttentionController,
    ComposedController,
    CrossAttentionStore,
    EmptyController,
    SelfAttentionKV,
    controlled_attention,
    token_maps,
)
from magicremover.attention.processor import grid_size

EXPECTED_GRID = {
    "down_blocks.0": (8, 8),
    "down_blocks.1": (4, 4),
    "mid_block": (4, 4),
    "up_blocks.0": (4, 4),
    "up_blocks.1": (8, 8),
}


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)


def _run(unet, z, emb, t=501):
    return unet(z, t, encoder_hidden_states=emb).sample


class Recorder(AttentionController):
    def __init__(self):
        self.kv_calls, self.prob_calls = [], []

    def wants_probs(self, ctx):
        return True  # every layer, self-attention included

    def on_kv(self, ctx, key, value):
        self.kv_calls.append(ctx)
        return key, value

    def on_probs(self, ctx, probs):
        self.prob_calls.append((ctx, probs.detach()))
        return probs


def test_empty_controller_reproduces_the_uncontrolled_unet_and_restores(tiny, inputs):
    original = dict(tiny.unet.attn_processors)
    reference = _run(tiny.unet, *inputs)
    with controlled_attention(tiny.unet, EmptyController()):
        controlled = _run(tiny.unet, *inputs)
    assert (controlled - reference).abs().max() <= 1e-5
    assert tiny.unet.attn_processors == original


def test_processors_are_restored_when_the_body_raises(tiny, inputs):
    original = dict(tiny.unet.attn_processors)
    with pytest.raises(KeyError), controlled_attention(tiny.unet, EmptyController()):
        raise KeyError("boom")
    assert tiny.unet.attn_processors == original
    assert not tiny.unet._forward_pre_hooks or all(
        "remember_latent_size" not in repr(h) for h in tiny.unet._forward_pre_hooks.values()
    )


def test_every_layer_is_seen_once_per_call_with_its_name_and_grid(tiny, inputs):
    recorder = Recorder()
    with controlled_attention(tiny.unet, recorder):
        explicit = _run(tiny.unet, *inputs)
    names = [ctx.name for ctx in recorder.kv_calls]
    assert sorted(names) == sorted(k.removesuffix(".processor") for k in tiny.unet.attn_processors)
    for ctx in recorder.kv_calls:
        assert ctx.is_cross == ctx.name.endswith("attn2")
        assert (ctx.height, ctx.width) == EXPECTED_GRID[".".join(ctx.name.split(".")[:2]).replace(".attentions", "")]
        assert ctx.place == ctx.name.split("_")[0]
    # probabilities for every layer that asks, rows summing to one, and the explicit path matches SDPA
    assert sorted(ctx.name for ctx, _ in recorder.prob_calls) == sorted(names)
    for ctx, probs in recorder.prob_calls:
        keys = 77 if ctx.is_cross else ctx.height * ctx.width
        assert probs.shape == (2, 4, ctx.height * ctx.width, keys)
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    assert (explicit - _run(tiny.unet, *inputs)).abs().max() <= 1e-5


def test_edited_probabilities_are_used(tiny, inputs):
    class ZeroTokens(AttentionController):
        def wants_probs(self, ctx):
            return ctx.is_cross

        def on_probs(self, ctx, probs):
            return torch.zeros_like(probs)  # attend to nothing: cross-attention contributes only its bias

    with controlled_attention(tiny.unet, ZeroTokens()):
        zeroed = _run(tiny.unet, *inputs)
    with controlled_attention(tiny.unet, ZeroTokens()):
        other_text = _run(tiny.unet, inputs[0], torch.randn(2, 77, 32))
    assert not torch.allclose(zeroed, _run(tiny.unet, *inputs))
    assert torch.allclose(zeroed, other_text, atol=1e-6)  # the text no longer matters


def test_token_maps_shape_sign_gradient_and_hand_computation(tiny, inputs):
    z = inputs[0].clone().requires_grad_(True)
    store = CrossAttentionStore(keep_graph=True, batch_index=slice(1, 2))
    with controlled_attention(tiny.unet, store):
        _run(tiny.unet, z, inputs[1])
    maps = token_maps(store.maps, store.shapes, [5, 6], (8, 8))
    assert maps.shape == (1, 2, 8, 8) and (maps >= 0).all()
    grad = torch.autograd.grad(maps[:, 0].sum(), z)[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # independent computation for one 8x8 layer: the heads' sum of token 5, as an image
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    single = token_maps({name: store.maps[name]}, store.shapes, [5], (8, 8))
    assert torch.allclose(single[0, 0], store.maps[name][0, :, :, 5].sum(0).reshape(8, 8))
    mean = token_maps(store.maps, store.shapes, [5, 6], (8, 8), reduce="mean")
    n_heads = sum(m.shape[1] for m in store.maps.values())
    assert torch.allclose(mean * n_heads, maps, atol=1e-6)


def test_self_attention_kv_injection(tiny, inputs):
    z, emb = inputs
    kv = SelfAttentionKV()
    with controlled_attention(tiny.unet, ComposedController([kv, CrossAttentionStore()])):
        kv.mode = "record"
        recorded = _run(tiny.unet, z, emb)
        kv.mode = "inject"
        assert torch.equal(_run(tiny.unet, z, emb), recorded)  # same latent + own K/V = same output
        injected = _run(tiny.unet, z + 0.5, emb)
        kv.mode = "off"
        free = _run(tiny.unet, z + 0.5, emb)
        kv.reset()
        kv.mode = "inject"
        with pytest.raises(RuntimeError, match="no recorded K/V"):
            _run(tiny.unet, z, emb)
    assert not torch.allclose(injected, free)
    assert len([k for k in tiny.unet.attn_processors if "attn1" in k]) == 7


def test_a_batch_1_recording_serves_a_larger_batch_only_when_asked(tiny, inputs):
    z, emb = inputs
    for broadcast in (False, True):
        kv = SelfAttentionKV(broadcast=broadcast)
        with controlled_attention(tiny.unet, kv):
            kv.mode = "record"
            recorded = _run(tiny.unet, z[:1], emb[:1])
            kv.mode = "inject"
            if not broadcast:
                with pytest.raises(RuntimeError, match="recorded batch 1 != injected batch 2"):
                    _run(tiny.unet, z[:1].expand(2, -1, -1, -1), emb[:1].expand(2, -1, -1))
                continue
            both = _run(tiny.unet, torch.cat([z[:1], z[:1] + 0.5]), emb[:1].expand(2, -1, -1))
            assert torch.allclose(both[:1], recorded, atol=1e-6)  # each row reads the one recording
            kv.mode = "off"
            assert not torch.allclose(both[1:], _run(tiny.unet, z[:1] + 0.5, emb[:1]))


def test_grid_size_handles_non_square_latents(tiny):
    assert grid_size(8 * 6, (8, 6)) == (8, 6)
    assert grid_size(4 * 3, (8, 6)) == (4, 3)
    assert grid_size(2 * 2, (8, 6)) == (2, 2)
    with pytest.raises(ValueError, match="do not match"):
        grid_size(7, (8, 8))
    recorder = Recorder()
    with controlled_attention(tiny.unet, recorder):
        tiny.unet(torch.randn(1, 4, 8, 16), 1, encoder_hidden_states=torch.randn(1, 77, 32))
    assert {(c.height, c.width) for c in recorder.kv_calls} == {(8, 16), (4, 8)}
