"""Tiny SD3-family folders for the tests: a standard diffusers ``StableDiffusion3Pipeline`` folder with random weights
(three text encoders: two CLIPs with projections and the tiny T5 of :mod:`flux_world`)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from flux_world import tiny_t5_tokenizer
from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

from magicremover.clip_tokenizer import build_clip_tokenizer
from magicremover.models import text_config_for

WIDTH = 64  # T5's width = the transformer's joint_attention_dim = the two CLIPs' 32 + 32 (padded to it)


def tiny_sd3_pipeline(seed: int = 0, t5: bool = True) -> StableDiffusion3Pipeline:
    """SD3's architecture at toy size: 2 joint blocks (the last context-pre-only), patch 2, f2 VAE with 16 channels
    (64 px images ↔ 32² latents ↔ 16² tokens), two 32-wide CLIPs and a 64-wide T5 (none with ``t5=False``)."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=16,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5305,
    )
    size = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_clip_tokenizer(pad_token="!")
    text_encoder = CLIPTextModelWithProjection(text_config_for(tokenizer, projection_dim=32, **size))
    text_encoder_2 = CLIPTextModelWithProjection(text_config_for(tokenizer_2, projection_dim=32, **size))
    tokenizer_3 = tiny_t5_tokenizer() if t5 else None
    text_encoder_3 = (
        T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), d_model=WIDTH, d_kv=8, d_ff=37, num_layers=2, num_heads=4))
        if t5
        else None
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def save_sd3_folder(directory: Path, seed: int = 0, t5: bool = True) -> Path:
    """Write a standard diffusers SD3 folder."""
    tiny_sd3_pipeline(seed, t5).save_pretrained(directory)
    return directory
