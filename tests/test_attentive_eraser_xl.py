"""Attentive Eraser on SDXL through our controller, equal to the loop of diffusers' community pipeline
(``StableDiffusionXL_AE_Pipeline``, written out here) with its own attention editor (``AAS_XL``, vendored under
``oracles/``) patched into a copy of the tiny SDXL UNet."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionXLPipeline
from oracles.ae_xl_aas import AAS_XL, regiter_attention_editor_diffusers
from PIL import Image

from magicremover.baselines.attentive_eraser import AttentiveEraser
from magicremover.diffusion import encode_image
from magicremover.images import to_tensor
from magicremover.toy.quality import held_out_cases

# Images in [0, 1] after 9 steps in float32; the two loops order their float operations differently (measured 6.0e-6);
# one 8-bit level is 3.9e-3.
FINAL_IMAGE_TOLERANCE = 5e-5


@pytest.fixture(scope="module")
def xl256(tiny_xl):
    """The tiny SDXL at 256² (32² latents): its query grid (16²) is one the reference's masks exist for (it max-pools
    a 1024² mask by 1024 // side for sides 16, 32, 64 and 128 only)."""
    unet = copy.deepcopy(tiny_xl.unet)
    unet.register_to_config(sample_size=32)
    return dataclasses.replace(tiny_xl, unet=unet, identity="tiny-xl-256")


def _decoder_blocks(unet) -> list[int]:
    """Indices of the decoder's transformer blocks in call order (down, mid, up), as the reference counts them
    (``cur_att_layer // 2``; SDXL: 34–69 of 70)."""
    names = [n for n, _ in unet.named_modules() if n.endswith("attn1")]
    first = sum(not name.startswith("up_blocks") for name in names)  # down and mid run before the decoder
    return list(range(first, len(names)))


def test_sip_on_sdxl_equals_the_community_pipelines_loop(xl256):
    c = xl256
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 64:160, 80:176] = 1
    case = held_out_cases(1)[0].sample
    picture = case.image.resize((256, 256))
    sample = dataclasses.replace(case, image=picture, mask=Image.fromarray(np.uint8(mask[0, 0] * 255)))
    ours = AttentiveEraser(c, num_inference_steps=12, strength=0.75, mask_blur=0, freeu=None, seed=3)(sample)
    assert ours.extras["latent_mask"] == "max_pool" and ours.calls["edit"].calls == 9
    # The reference: its editor on a UNet copy, given the prepared mask at the 1024² it hard-codes.
    prepared, blocks = ours.mask, _decoder_blocks(c.unet)
    assert blocks == list(range(6, 12))  # the tiny UNet's 12 transformer blocks: down 4, mid 2, up 6
    editor = AAS_XL(0, 9, blocks[0], blocks[-1] + 1, mask=F.interpolate(prepared, size=(1024, 1024)), model_type="SDXL")
    editor.ss_steps, editor.ss_scale = 9, 0.3
    unet = copy.deepcopy(c.unet)
    regiter_attention_editor_diffusers(unet, editor)
    # Its conditioning: prompt "" through SDXL's encode_prompt (CFG off), both halves; its size ids.
    pipe = StableDiffusionXLPipeline(
        c.vae, c.text_encoder, c.text_encoder_2, c.tokenizer, c.tokenizer_2, c.unet, c.scheduler
    )
    text, _, pooled, _ = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)
    cond = {"text_embeds": pooled.expand(2, -1), "time_ids": torch.tensor([[256.0, 256, 0, 0, 256, 256]]).expand(2, -1)}
    scheduler = DDIMScheduler.from_config(c.scheduler.config)
    scheduler.set_timesteps(12)
    timesteps = scheduler.timesteps[12 - int(12 * 0.75) :]
    clean = encode_image(c, to_tensor(picture), mode="sample", seed=3)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    init_mask = F.max_pool2d(prepared, (8, 8)).round()  # its prepare_mask_latents
    latents = scheduler.add_noise(clean, noise, timesteps[:1])
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            pred = unet(
                torch.cat([latents] * 2), t, encoder_hidden_states=text.expand(2, -1, -1), added_cond_kwargs=cond
            )
            noise_pred_wo, noise_pred_w = pred.sample.chunk(2)
            noise_pred = noise_pred_wo + 9.0 * (noise_pred_w - noise_pred_wo)  # SARG
            latents = scheduler.step(noise_pred, t, latents).prev_sample
            proper = clean if i == len(timesteps) - 1 else scheduler.add_noise(clean, noise, timesteps[i + 1 : i + 2])
            latents = (1 - init_mask) * proper + init_mask * latents
        expected = (c.vae.decode(latents / c.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert (ours.image - expected).abs().max() < FINAL_IMAGE_TOLERANCE, (ours.image - expected).abs().max()
    # The edit did something inside the mask and nothing the VAE round trip would not do outside it.
    assert (ours.image - to_tensor(picture)).abs()[..., 64:160, 80:176].mean() > 0.01


def test_a_latent_mask_rule_it_does_not_know_is_a_one_line_error(tiny_xl):
    from magicremover.errors import ConfigError

    with pytest.raises(ConfigError, match="method.latent_mask=bilinear is not auto, nearest or max_pool"):
        AttentiveEraser(tiny_xl, latent_mask="bilinear")
    assert (
        AttentiveEraser(tiny_xl).freeu is None
        and AttentiveEraser(tiny_xl, latent_mask="nearest").latent_mask == "nearest"
    )
