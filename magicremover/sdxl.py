"""Stable Diffusion XL's conditioning: two CLIP encoders, and a pooled embedding and size ids beside the tokens.

SDXL's UNet reads, through cross-attention, the penultimate hidden layers of its two text encoders joined per token
(CLIP ViT-L 768 + OpenCLIP ViT-bigG 1280 = 2048 features), and, added to its timestep embedding, the second
encoder's pooled and projected embedding (1280) and six "time ids": original size, crop corner and target size
(``StableDiffusionXLPipeline.encode_prompt`` and ``_get_add_time_ids``).

The framework keeps one text tensor per prompt, so the pooled embedding rides along as one extra row: an SDXL
embedding is ``(B, L + 1, D)`` whose last row holds the pooled vector in its first P features and zeros after.
Everything that handles embeddings (CFG batches, null-text optimisation, the inversion cache, P2P's prompts) keeps
treating them as one tensor; the UNet call splits them (:func:`unet_inputs_xl`), so attention layers see ``L`` tokens.
The time ids are the image's own size with no crop, for both CFG halves, as the pipeline builds them by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from magicremover.models import SDComponents


@torch.no_grad()
def encode_text_xl(c: SDComponents, prompts: list[str]) -> torch.Tensor:
    """Prompts → ``(B, L + 1, D)`` float32: both encoders' penultimate layers joined, then the pooled row."""
    hidden = []
    for tokenizer, encoder in ((c.tokenizer, c.text_encoder), (c.tokenizer_2, c.text_encoder_2)):
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        output = encoder(ids.to(c.device), output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
    tokens = torch.cat(hidden, dim=-1)
    pooled = F.pad(output.text_embeds, (0, tokens.shape[-1] - output.text_embeds.shape[-1]))
    return torch.cat([tokens, pooled[:, None]], dim=1).float()


def unet_inputs_xl(c: SDComponents, embeddings: torch.Tensor, latent_hw: tuple[int, int]) -> dict:
    """The UNet's text keyword arguments for an SDXL embedding ``(B, L + 1, D)`` and latents of size ``latent_hw``:
    ``encoder_hidden_states`` ``(B, L, D)`` and ``added_cond_kwargs`` (``text_embeds`` ``(B, P)``, ``time_ids``
    ``(B, 6)``)."""
    tokens, pooled = embeddings[:, :-1], embeddings[:, -1, : c.text_encoder_2.config.projection_dim]
    return {
        "encoder_hidden_states": tokens,
        "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids(c, latent_hw).expand(len(embeddings), -1)},
    }


def time_ids(c: SDComponents, latent_hw: tuple[int, int]) -> torch.Tensor:
    """``(1, 6)``: (original height, width, crop top, left, target height, width) in pixels; the image is its own
    original and target, uncropped."""
    height, width = (side * c.vae_scale_factor for side in latent_hw)
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=c.dtype, device=c.device)
