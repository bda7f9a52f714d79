"""Random-weight models with Stable Diffusion's architectures at toy size, built offline and deterministically.

What the tests and smoke runs use where no weights can be downloaded: every code path of the real families (SD
1.x/2.x and SDXL) on a model whose UNet call takes milliseconds on a CPU.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from magicremover.clip_tokenizer import build_clip_tokenizer
from magicremover.models import SDComponents, build_ddim_scheduler, resolve_device, resolve_dtype, text_config_for

TEXT_SIZE = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 5}


def build_tiny(seed: int = 0, device: str = "auto", dtype: str = "float32") -> SDComponents:
    """A random-weight model with SD's architecture at toy size, built offline and deterministically.

    UNet with cross-attention at two resolutions plus the mid block (7 self- and 7 cross-attention layers),
    an f8 ``AutoencoderKL`` (64 px images ↔ 8×8×4 latents, like SD's geometry), a 5-layer CLIP text encoder over
    the real 49,408-token tokenizer. About 2.6 M parameters; a UNet call takes milliseconds on a CPU.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    vae = _tiny_vae(seed, image_side=64)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    text_encoder = CLIPTextModel(text_config_for(tokenizer, **TEXT_SIZE))
    unet, vae, text_encoder = _placed((unet, vae, text_encoder), dev, torch_dtype)
    return SDComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=build_ddim_scheduler(),
        identity=f"tiny:seed={seed}:{torch_dtype}",
    )


def build_tiny_xl(seed: int = 0, device: str = "auto", dtype: str = "float32") -> SDComponents:
    """A random-weight model with SDXL's architecture at toy size, built offline and deterministically.

    The UNet of diffusers' own SDXL pipeline tests (no attention at the first level, one and two transformer layers
    below it, linear projections, ``text_time`` added embedding) at a 16² latent, an f8 ``AutoencoderKL`` (128 px
    images), two 32-wide CLIP encoders over the real tokenizer (the second pads with ``"!"`` and projects its pooled
    output, as SDXL's OpenCLIP does); the unconditional input is zeros, as SDXL base's.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    vae = _tiny_vae(seed, image_side=128)
    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_clip_tokenizer(pad_token="!")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config_for(tokenizer, **TEXT_SIZE))
    text_encoder_2 = CLIPTextModelWithProjection(text_config_for(tokenizer_2, projection_dim=32, **TEXT_SIZE))
    modules = _placed((unet, vae, text_encoder, text_encoder_2), dev, torch_dtype)
    return SDComponents(
        *modules[:3],
        tokenizer=tokenizer,
        scheduler=build_ddim_scheduler(),
        identity=f"tiny-xl:seed={seed}:{torch_dtype}",
        text_encoder_2=modules[3],
        tokenizer_2=tokenizer_2,
        zero_empty_prompt=True,  # as SDXL base
    )


def _tiny_vae(seed: int, image_side: int) -> AutoencoderKL:
    """An f8 ``AutoencoderKL`` (images of ``image_side`` ↔ latents of ``image_side / 8``), seeded."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=image_side,
        scaling_factor=4.5,  # random-init latents have std ≈ 0.22; SD and SDXL scale their latents to std ≈ 1
    )


def _placed(modules, device: torch.device, dtype: torch.dtype) -> list[torch.nn.Module]:
    """The modules on ``device`` in ``dtype`` (float32 ones only moved: diffusers warns on a no-op cast)."""
    return [m.to(device) if dtype == torch.float32 else m.to(device, dtype) for m in modules]
