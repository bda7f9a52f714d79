"""KV-Edit: parity with its own code (vendored in tests/oracles/kv_edit.py) on one tiny FLUX-architecture model.

The oracle is KV-Edit's ``Flux_kv`` (BFL's FLUX with its K/V hooks) holding the same random weights as the diffusers
transformer our remover runs on (converted by diffusers' own converter; the forward passes agree exactly). Compared
stage by stage: the inversion trajectory, the K/V cache, one decoupled transformer call, the edited latent, the image.
"""

from types import SimpleNamespace

import pytest
import torch
from flux_world import bfl_flux_from_diffusers, tiny_flux_pipeline
from oracles import kv_edit as oracle

from magicremover import flux
from magicremover.attention.install import controlled_attention
from magicremover.baselines.kv_edit import KVEdit
from magicremover.baselines.kv_edit.remover import token_mask
from magicremover.images import fit_to_model
from magicremover.models import load_pretrained

SIDE, LATENT = 64, (32, 32)  # the tiny VAE's factor is 2: 64 px images, 32² latents, 16² = 256 tokens
PROMPT = "a photo of a red circle on blue stripes"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny FLUX folder (written and loaded as a user's would be) and KV-Edit's model with the same weights."""
    pipe = tiny_flux_pipeline(seed=3)
    bfl = bfl_flux_from_diffusers(pipe.transformer)
    folder = tmp_path_factory.mktemp("flux") / "tiny-flux"
    pipe.save_pretrained(folder)
    c = load_pretrained(path=str(folder), device="cpu", dtype="float32", resolution=SIDE)
    return SimpleNamespace(c=c, bfl=bfl)


@pytest.fixture(scope="module")
def scene(world, example_image):
    """The example scene's latents, a mask over part of it (touching 40 of 256 tokens, some partly)."""
    image = fit_to_model(example_image, SIDE)
    hole = torch.zeros(1, 1, SIDE, SIDE)
    hole[..., 21:45, 13:39] = 1
    return SimpleNamespace(z0=flux.encode_image(world.c, image), hole=hole)


def run_oracle(world, scene, **options):
    """KV-Edit's ``Flux_kv_edit`` (or ``Flux_kv_edit_inf``) on the same latents, prompts and mask; its ``info``."""
    c = world.c
    opts = SimpleNamespace(
        height=LATENT[0] * 8,  # its mask code divides by FLUX's VAE factor, 8
        width=LATENT[1] * 8,
        denoise_num_steps=28,
        skip_step=4,
        inversion_guidance=1.5,
        denoise_guidance=5.5,
        attn_scale=1.0,
        re_init=False,
        attn_mask=False,
    )
    for key, value in options.items():
        setattr(opts, key, value)
    ids = flux.image_ids(c, LATENT)[None]

    def inputs(prompt):
        text = flux.encode_prompt(c, prompt)
        return {
            "img": scene.z0.clone(),
            "img_ids": ids,
            "txt": text.tokens,
            "txt_ids": text.ids[None],
            "vec": text.pooled,
        }

    if options.get("inversion_free"):
        model = oracle.Flux_kv_edit_inf("cpu", "flux-dev", model=world.bfl)
        return model(inputs(PROMPT), inputs(""), scene.hole.clone(), opts), None
    model = oracle.Flux_kv_edit("cpu", "flux-dev", model=world.bfl)
    z0, zt, info = model.inverse(inputs(PROMPT), scene.hole.clone(), opts)
    inverted = {key: value.clone() for key, value in info["feature"].items()}
    return model.denoise(z0, zt, inputs(""), scene.hole.clone(), opts, info), inverted


def test_token_mask_is_kv_edit_mask(world, scene):
    elements, pixels = token_mask(scene.hole, LATENT, 16)
    mask = (torch.nn.functional.interpolate(scene.hole, size=LATENT, mode="bilinear", align_corners=False) > 0).float()
    expected = oracle.rearrange(mask.repeat(1, 16, 1, 1), "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
    assert torch.equal(elements, expected)
    partial = (elements.sum(-1) > 0) & (elements.sum(-1) < 64)
    assert partial.any(), "the scene must have tokens only partly inside the mask"
    assert pixels.shape == scene.hole.shape and pixels[scene.hole > 0].min() == 1


def test_inversion_and_cache_equal_kv_edit(world, scene):
    remover = KVEdit(world.c)
    trace = remover.edit(scene.z0, LATENT, scene.hole, PROMPT)
    _, feature = run_oracle(world, scene)
    levels = sorted(trace.inverted)
    theirs = sorted(
        (float(key.removesuffix("_img")), key.removesuffix("_img")) for key in feature if key.endswith("_img")
    )
    assert len(levels) == len(theirs) == len(trace.cache.cache) == 24  # 28 steps, 4 skipped
    assert max(abs(a - b) for a, (b, _) in zip(levels, theirs)) < 1e-6  # diffusers' schedule is KV-Edit's get_schedule
    their_key = dict(zip(levels, (key for _, key in theirs)))
    for level in levels:
        assert torch.allclose(trace.inverted[level], feature[f"{their_key[level]}_img"], atol=1e-5), level
    # The cache: BFL's keys are stored before RoPE; rotate them with the full positions to compare.
    text_ids = torch.zeros(1, 512, 3)
    pe = world.bfl.pe_embedder(torch.cat([text_ids, flux.image_ids(world.c, LATENT)[None]], dim=1))[:, :, 512:]
    worst = 0.0
    for level in levels:
        for index in range(2):
            for ours, theirs in (
                (f"transformer_blocks.{index}.attn", "MB"),
                (f"single_transformer_blocks.{index}.attn", "SB"),
            ):
                key, value = trace.cache.cache[level][ours]
                name = f"{their_key[level]}_{index}_{theirs}"
                rotated, _ = oracle.apply_rope(feature[f"{name}_K"], feature[f"{name}_K"], pe)
                worst = max(worst, (key - rotated).abs().max().item())
                assert torch.allclose(value, feature[f"{name}_V"], atol=1e-5)
    assert worst < 1e-5


def test_removal_equals_kv_edit(world, scene):
    """The edited latent after 24 decoupled steps (measured: ≤ 1.2e-6 on latents up to 2.8; KV-Edit's options too)."""
    trace = KVEdit(world.c).edit(scene.z0, LATENT, scene.hole, PROMPT)
    theirs, _ = run_oracle(world, scene)
    ours = flux.unpack(trace.edited, LATENT)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    outside = token_mask(scene.hole, LATENT, 16)[1][:, :, ::2, ::2] == 0  # latent pixels outside the mask
    assert torch.equal(ours.masked_select(outside), flux.unpack(scene.z0, LATENT).masked_select(outside))
    assert (ours - flux.unpack(scene.z0, LATENT)).abs().max() > 0.1  # the masked region did change


@pytest.mark.parametrize(
    "options",
    [{"attn_mask": True}, {"attn_scale": 0.0}, {"re_init": True, "skip_step": 10}, {"inversion_free": True}],
    ids=["attn_mask", "no_attn_scale", "re_init", "inversion_free"],
)
def test_options_equal_kv_edit(world, scene, options, monkeypatch):
    if options.get("re_init"):  # KV-Edit draws re_init's noise unseeded: hand it the noise we draw
        noise = torch.randn(scene.z0.shape, generator=torch.Generator().manual_seed(0))
        monkeypatch.setattr(oracle.torch, "randn_like", lambda x: noise.clone())
    trace = KVEdit(world.c, **options).edit(scene.z0, LATENT, scene.hole, PROMPT)
    theirs, _ = run_oracle(world, scene, **options)
    ours = flux.unpack(trace.edited, LATENT)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_one_decoupled_call_equals_kv_edit(world, scene):
    """The first denoising call alone: foreground queries over text + cached background + their own K/V."""
    c = world.c
    remover = KVEdit(c)
    trace = remover.edit(scene.z0, LATENT, scene.hole, PROMPT)
    _, feature = run_oracle(world, scene)
    top, fg = max(trace.inverted), trace.foreground
    x = trace.inverted[top][:, fg] + 0.1 * torch.randn(1, len(fg), 64, generator=torch.Generator().manual_seed(1))
    text, ids = flux.encode_prompt(c, ""), flux.image_ids(c, LATENT)
    with controlled_attention(c.transformer, trace.cache):
        trace.cache.at("decouple", top)
        ours = flux.velocity(c, x, top, text, ids[fg], 5.5)
    their_top = max((key.removesuffix("_img") for key in feature if key.endswith("_img")), key=float)
    scale = oracle.Flux_kv_edit("cpu", "flux-dev", model=world.bfl).create_attention_scale(
        512 + 256, fg, device="cpu", scale=1.0
    )
    info = {"feature": feature, "inverse": False, "mask_indices": fg, "t": their_top, "attention_scale": scale}
    theirs = world.bfl(
        img=x,
        img_ids=ids[None],
        txt=text.tokens,
        txt_ids=text.ids[None],
        timesteps=torch.tensor([top]),
        y=text.pooled,
        guidance=torch.tensor([5.5]),
        info=info,
    )
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    plain = flux.velocity(c, x, top, text, ids[fg], 5.5)  # the same tokens without the cached background
    assert (plain - ours).abs().max() > 1e-2
