"""The toy model's architecture (SD's family at toy size) and the training pool of scenes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from magicremover.models import text_config_for
from magicremover.target_tokens import find_target
from magicremover.toy.scenes import RADIUS, render_scene

LATENT = 16  # f4 VAE: 64 px scenes ↔ 16×16×4 latents (f8 would leave a 12-px-radius object 3 latent pixels across)


def toy_modules(tokenizer: CLIPTokenizer, seed: int = 0) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """Randomly initialised UNet (cross-attention at 16² and 8² plus the mid block), VAE and CLIP text encoder."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 128),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=64,
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(
        text_config_for(tokenizer, hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4)
    )
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=LATENT,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,  # diffusers' name for the number of heads
        norm_num_groups=16,
    )
    return unet, vae, text_encoder


@dataclass
class ScenePool:
    """Pre-rendered scenes for training.

    Attributes:
        images: ``(N, 3, 64, 64)`` float32 in [-1, 1].
        captions: N captions.
        token_masks: ``(N, L, 16, 16)`` float16: for each caption token that names an object (its colour and shape
            words), that object's mask at latent resolution; zero for every other token.
    """

    images: torch.Tensor
    captions: list[str]
    token_masks: torch.Tensor

    @classmethod
    def render(
        cls, seeds: range, tokenizer: CLIPTokenizer, radius: tuple[float, float] = RADIUS, distinct_colours: bool = True
    ) -> "ScenePool":
        images, captions = [], []
        token_masks = torch.zeros(len(seeds), tokenizer.model_max_length, LATENT, LATENT, dtype=torch.float16)
        for n, seed in enumerate(seeds):
            scene = render_scene(seed, radius=radius, distinct_colours=distinct_colours)
            images.append(torch.from_numpy(scene.image).permute(2, 0, 1))
            captions.append(scene.caption)
            for obj in scene.objects:
                mask = F.adaptive_avg_pool2d(torch.from_numpy(obj.mask.astype(np.float32))[None], LATENT)[0]
                for position in find_target(tokenizer, scene.caption, obj.phrase).flat:
                    token_masks[n, position] = mask.half()
        return cls(torch.stack(images).float() / 127.5 - 1, captions, token_masks)

    def save(self, path) -> None:
        torch.save({"images": self.images.half(), "captions": self.captions, "token_masks": self.token_masks}, path)

    @classmethod
    def load(cls, path) -> "ScenePool":
        data = torch.load(path)
        return cls(data["images"].float(), data["captions"], data["token_masks"])
