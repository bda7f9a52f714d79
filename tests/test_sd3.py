"""The SD3 family: a standard diffusers SD3 folder loads through ``model=``, and the controlled joint-attention
processor equals diffusers' ``JointAttnProcessor2_0`` on every block, with the target word's map readable from it."""

import pytest
import torch
from sd3_world import save_sd3_folder

from magicremover import sd3
from magicremover.attention.install import controlled_attention
from magicremover.attention.joint import JointController
from magicremover.errors import ConfigError
from magicremover.models import load_pretrained


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    folder = save_sd3_folder(tmp_path_factory.mktemp("models") / "tiny-sd3", seed=4)
    return load_pretrained(path=str(folder), device="cpu", dtype="float32", resolution=64)


class Recorder(JointController):
    def __init__(self, explicit: bool):
        self.explicit, self.seen, self.probs = explicit, {}, {}

    def wants_probs(self, ctx):
        return self.explicit

    def on_kv(self, ctx, key, value):
        self.seen[ctx.name] = ctx
        return key, value

    def on_probs(self, ctx, probs):
        self.probs[ctx.name] = probs
        return probs


def _inputs(c):
    torch.manual_seed(0)
    return torch.randn(1, 16, 32, 32), sd3.encode_prompt(c, "a photo of a red circle")


def test_an_sd3_folder_loads_as_the_sd3_family(c, tmp_path):
    assert isinstance(c, sd3.SD3Components) and c.family == "sd3" and c.resolution == 64
    text = sd3.encode_prompt(c, "a photo of a dog")
    assert text.tokens.shape == (1, 77 + 256, 64) and text.pooled.shape == (1, 64)
    image = torch.rand(1, 3, 64, 64)
    latents = sd3.encode_image(c, image)
    assert latents.shape == (1, 16, 32, 32) and sd3.decode(c, latents).shape == (1, 3, 64, 64)
    levels = sd3.sigmas(c, 10)
    assert len(levels) == 11 and levels[0] == pytest.approx(1.0) and levels[-1] == 0
    no_t5 = load_pretrained(path=str(save_sd3_folder(tmp_path / "no-t5", t5=False)), device="cpu", resolution=64)
    assert no_t5.pipe.text_encoder_3 is None
    assert not sd3.encode_prompt(no_t5, "a photo of a dog").tokens[:, 77:].any()  # T5's part is zeros


def test_controlled_joint_processor_equals_diffusers_on_every_block(c):
    latents, text = _inputs(c)
    plain = sd3.velocity(c, latents, 0.6, text)
    original = dict(c.transformer.attn_processors)
    fused, explicit = Recorder(explicit=False), Recorder(explicit=True)
    with controlled_attention(c.transformer, fused):
        sdpa = sd3.velocity(c, latents, 0.6, text)
    with controlled_attention(c.transformer, explicit):
        with_probs = sd3.velocity(c, latents, 0.6, text)
    assert torch.allclose(sdpa, plain, atol=1e-6) and torch.allclose(with_probs, plain, atol=1e-5)
    assert set(explicit.seen) == {key.removesuffix(".processor") for key in original} and len(original) == 2
    for ctx in explicit.seen.values():
        assert ctx.image_first and (ctx.image_len, ctx.text_len, ctx.height, ctx.width) == (256, 333, 16, 16)
        assert ctx.image == slice(0, 256) and ctx.text == slice(256, 589)
        probs = explicit.probs[ctx.name]
        assert torch.allclose(probs.sum(-1), torch.ones(1), atol=1e-5)
        # the target word's map: image queries to its text keys, renormalised over the text keys
        word = probs[:, :, ctx.image, ctx.text]
        as_cross = word / word.sum(-1, keepdim=True)
        assert as_cross.shape == (1, 4, 256, 333) and torch.allclose(as_cross.sum(-1), torch.ones(1), atol=1e-5)
    assert all(type(p) is type(original[k]) for k, p in c.transformer.attn_processors.items())


def test_image_kv_from_a_reconstruction_branch_reproduce_it(c):
    """The edit branch reads the image tokens' K/V of the reconstruction branch (MagicRemover's self-attention
    guidance): with its own K/V injected, a branch comes back exactly; with another's, it changes."""
    latents, text = _inputs(c)

    class Inject(JointController):
        def __init__(self):
            self.kv, self.inject = {}, False

        def on_kv(self, ctx, key, value):
            if not self.inject:
                self.kv[ctx.name] = (key[:, :, ctx.image], value[:, :, ctx.image])
                return key, value
            key, value = key.clone(), value.clone()
            key[:, :, ctx.image], value[:, :, ctx.image] = self.kv[ctx.name]
            return key, value

    inject = Inject()
    with controlled_attention(c.transformer, inject):
        reconstruction = sd3.velocity(c, latents, 0.4, text)
        inject.inject = True
        again = sd3.velocity(c, latents, 0.4, text)
        edited = sd3.velocity(c, latents + 0.3, 0.4, text)
    assert torch.equal(again, reconstruction)
    assert (edited - sd3.velocity(c, latents + 0.3, 0.4, text)).abs().max() > 1e-3


def test_sd3_runs_no_unet_method_yet(c, tmp_path):
    from magicremover.config import check_family

    with pytest.raises(ConfigError, match="not on sd3: use an SD or SDXL model .SD3 loads, but no remover runs on it"):
        check_family("magicremover.method.MagicRemover", c)
