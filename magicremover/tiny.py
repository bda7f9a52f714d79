"""Random-weight models with Stable Diffusion's architectures at toy size, built offline and deterministically.

What the tests and smoke runs use where no weights can be downloaded: every code path of the real families (SD
1.x/2.x, SDXL, and SD3 without its optional T5 encoder) on a model whose UNet or transformer call takes milliseconds
on a CPU.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel, T5TokenizerFast

from magicremover.clip_tokenizer import build_clip_tokenizer
from magicremover.models import SDComponents, build_ddim_scheduler, resolve_device, resolve_dtype, text_config_for
from magicremover.sd3 import SD3Components

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


def build_tiny_sd3(seed: int = 0, device: str = "auto", dtype: str = "float32") -> SD3Components:
    """A random-weight model with SD3's architecture at toy size (64 px), built offline and deterministically.

    :func:`tiny_sd3_pipeline` without T5 (no T5 tokenizer can be built offline in the library; its tokens are then
    zeros, as diffusers does for a folder without ``text_encoder_3/``).
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    pipe = tiny_sd3_pipeline(seed)
    pipe = pipe.to(dev) if torch_dtype == torch.float32 else pipe.to(dev, torch_dtype)  # no no-op cast warning
    return SD3Components(pipe, f"tiny-sd3:seed={seed}:{torch_dtype}", resolution=64)


def tiny_sd3_pipeline(
    seed: int = 0, text_encoder_3: T5EncoderModel | None = None, tokenizer_3: T5TokenizerFast | None = None
) -> StableDiffusion3Pipeline:
    """SD3's architecture at toy size: 2 joint blocks (the last context-pre-only), patch 2, an f2 VAE with 16 latent
    channels (64 px images ↔ 32² latents ↔ 16² tokens), two 32-wide CLIPs with projections (joined: 64 = the joint
    width), SD3's scheduler (shift 3); a 64-wide T5 (``text_encoder_3``) when given."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
    )
    vae = tiny_flow_vae(seed)
    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_clip_tokenizer(pad_token="!")
    size = TEXT_SIZE | {"num_hidden_layers": 2}
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(text_config_for(tokenizer, projection_dim=32, **size)),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(text_config_for(tokenizer_2, projection_dim=32, **size)),
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def tiny_flow_vae(seed: int = 0) -> AutoencoderKL:
    """The transformer families' autoencoder at toy size: 16 latent channels with a shift and a scale, as FLUX's and
    SD3's, but f2 (64 px images ↔ 32² latents), seeded."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=16,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,  # SD3's
        scaling_factor=1.5305,
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
