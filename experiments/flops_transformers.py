"""FLOPs of the transformer families at 1024², without a GPU or weights: the FLUX rows (KV-Edit, FLUX.1 Fill) and
SD3-medium's per-call figures (its rows' calls are counted by :mod:`magicremover.experiments.flops` on the tiny SD3).

As :mod:`magicremover.experiments.flops` does for the UNet families: torch's ``FlopCounterMode`` on FLUX.1-dev's
transformer and VAE built from their public configs on the ``meta`` device, times the calls a removal makes
(``planned_calls`` of the method, checked against counted calls in ``tests/test_flux.py``). KV-Edit's denoising
calls carry only the masked tokens, whose queries attend to every cached key: they are counted by running the meta
transformer under KV-Edit's own :class:`~magicremover.baselines.kv_edit.attention.KVCache` with a mask of
``MASK_FRACTION`` of the image (the UNet rows' mask: a quarter of each side). The text encoders are left out.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
from hydra.utils import get_object
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from magicremover.attention.install import controlled_attention
from magicremover.baselines.kv_edit.attention import KVCache
from magicremover.config import compose_config

SIDE, TEXT_TOKENS = 1024, 512
MASK_FRACTION = 1 / 16  # the mask the UNet rows use: a square of a quarter of each side
FLUX_METHODS = {"kv_edit": 64, "flux_fill": 384}  # method → its transformer's input channels


def flux_transformer(in_channels: int = 64) -> FluxTransformer2DModel:
    """FLUX.1-dev's transformer (``black-forest-labs/FLUX.1-dev``'s ``transformer/config.json``; Fill: 384 inputs)."""
    return FluxTransformer2DModel(
        in_channels=in_channels,
        out_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )


def sd3_medium_transformer() -> SD3Transformer2DModel:
    """SD3-medium's transformer (``stabilityai/stable-diffusion-3-medium-diffusers``'s ``transformer/config.json``)."""
    return SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=192,
    )


def sd3_per_call_flops() -> dict[str, int]:
    """FLOPs of one SD3-medium transformer call (batch 1, 77 CLIP + 256 T5 tokens), one VAE encode and one decode
    (SD3's VAE has FLUX's architecture) at 1024²."""
    with torch.device("meta"):
        model, vae = sd3_medium_transformer(), flux_vae()
        latent, image = torch.zeros(1, 16, SIDE // 8, SIDE // 8), torch.zeros(1, 3, SIDE, SIDE)
        text = {"encoder_hidden_states": torch.zeros(1, 333, 4096), "pooled_projections": torch.zeros(1, 2048)}
        return {
            "unet": _flops(lambda: model(hidden_states=latent, timestep=torch.ones(1), **text)),
            "vae_encode": _flops(lambda: vae.encode(image)),
            "vae_decode": _flops(lambda: vae.decode(latent)),
        }


def flux_vae() -> AutoencoderKL:
    """FLUX.1's f8 autoencoder with 16 latent channels (its ``vae/config.json``)."""
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=16,
        sample_size=1024,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


def _flops(run) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        run()
    return counter.get_total_flops()


def per_call_flops(in_channels: int = 64) -> dict[str, int]:
    """FLOPs of one transformer call over every token, one over the masked tokens under KV-Edit's decoupled
    attention, one VAE encode and one decode, at 1024² (4096 image tokens)."""
    grid = SIDE // 16
    tokens = grid * grid
    with torch.device("meta"):
        model, vae = flux_transformer(in_channels), flux_vae()
        rows, cols = torch.meshgrid(torch.arange(grid, device="cpu"), torch.arange(grid, device="cpu"), indexing="ij")
        ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()  # real: read by the hook
        text = {
            "encoder_hidden_states": torch.zeros(1, TEXT_TOKENS, 4096),
            "pooled_projections": torch.zeros(1, 768),
            "txt_ids": torch.zeros(TEXT_TOKENS, 3, device="cpu"),
            "timestep": torch.ones(1),
            "guidance": torch.ones(1),
        }
        foreground = torch.arange(int(tokens * MASK_FRACTION), device="cpu")

        def call(n: int, picked=slice(None)):
            model(hidden_states=torch.zeros(1, n, in_channels), img_ids=ids[picked], **text)

        flops = {"full": _flops(lambda: call(tokens))}
        cache = KVCache(foreground, tokens, attn_scale=1.0, store_device="meta")
        with controlled_attention(model, cache):
            cache.at("record", 1.0)
            call(tokens)
            cache.at("decouple", 1.0)
            flops["foreground"] = _flops(lambda: call(len(foreground), foreground))
        latent, image = torch.zeros(1, 16, SIDE // 8, SIDE // 8), torch.zeros(1, 3, SIDE, SIDE)
        flops |= {"vae_encode": _flops(lambda: vae.encode(image)), "vae_decode": _flops(lambda: vae.decode(latent))}
    return flops


def flux_rows(steps: int | None, throughput: float) -> list[dict]:
    """The FLUX rows of the cost table: each method's preset (or ``steps``), FLOPs and GPU seconds at
    ``throughput`` FLOP/s."""
    rows = []
    for method, in_channels in FLUX_METHODS.items():
        per_call = per_call_flops(in_channels)
        settings = OmegaConf.to_container(compose_config("remove", [f"method={method}"]).method, resolve=True)
        if steps:
            settings["num_inference_steps"] = steps
        calls = get_object(settings["_target_"]).planned_calls(**settings)
        transformer = sum(per_call[kind] * calls[kind] for kind in ("full", "foreground"))
        vae = sum(per_call[kind] * calls[kind] for kind in ("vae_encode", "vae_decode"))
        rows.append(
            {
                "family": "flux",
                "method": method,
                "forward_equivalents": calls["full"] + calls["foreground"],
                "vae_encode": calls["vae_encode"],
                "vae_decode": calls["vae_decode"],
                "unet_tflops_per_call": per_call["full"] / 1e12,
                "unet_tflops": transformer / 1e12,
                "vae_tflops": vae / 1e12,
                "h100_seconds": (transformer + vae) / throughput,
            }
        )
    return rows
