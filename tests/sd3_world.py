"""Tiny SD3-family folders for the tests: the library's tiny SD3 (:func:`magicremover.tiny.tiny_sd3_pipeline`) with
its third encoder, a 64-wide T5 over the tiny T5 tokenizer of :mod:`flux_world`, saved as a standard diffusers
``StableDiffusion3Pipeline`` folder."""

from __future__ import annotations

from pathlib import Path

import torch
from flux_world import tiny_t5_tokenizer
from transformers import T5Config, T5EncoderModel

from magicremover.tiny import tiny_sd3_pipeline


def save_sd3_folder(directory: Path, seed: int = 0, t5: bool = True) -> Path:
    """Write a standard diffusers SD3 folder (three encoders; two without ``t5``)."""
    if t5:
        tokenizer = tiny_t5_tokenizer()
        torch.manual_seed(seed)
        config = T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
        pipe = tiny_sd3_pipeline(seed, T5EncoderModel(config), tokenizer)
    else:
        pipe = tiny_sd3_pipeline(seed)
    pipe.save_pretrained(directory)
    return directory
