"""What the transformer families' components share: one diffusers pipeline holding every part, frozen, a call counter
on its transformer, and the side it runs at (:class:`~magicremover.flux.FluxComponents`,
:class:`~magicremover.sd3.SD3Components`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from diffusers import DiffusionPipeline

from magicremover.errors import ModelLoadError
from magicremover.unet_calls import UNetCalls


@dataclass
class PipelineComponents:
    """A transformer-family model.

    Attributes:
        pipe: the diffusers pipeline holding every component.
        identity: a string that changes whenever the weights do.
        resolution: the image side it runs at (1024, the native side of FLUX.1 and SD3).
        calls: per-stage transformer call counter.
    """

    pipe: DiffusionPipeline
    identity: str
    resolution: int = 1024
    calls: UNetCalls = field(init=False, repr=False)

    family: ClassVar[str]  # which methods can run on it (a remover's ``families``)
    transformer = property(lambda self: self.pipe.transformer)
    vae = property(lambda self: self.pipe.vae)
    tokenizer = property(lambda self: self.pipe.tokenizer, doc="CLIP ViT-L's tokenizer (where a target is looked up)")
    device = property(lambda self: self.transformer.device)
    dtype = property(lambda self: self.transformer.dtype)
    vae_scale_factor = property(lambda self: 2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def side_multiple(self) -> int:
        """What the image side must be a multiple of (the VAE's factor times the transformer's patch)."""
        raise NotImplementedError

    def __post_init__(self) -> None:
        for module in self.pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval()
        self.pipe.set_progress_bar_config(disable=True)
        self.calls = UNetCalls(self.transformer)
        if self.resolution % self.side_multiple:
            raise ModelLoadError(
                f"model.resolution={self.resolution} must be a multiple of {self.side_multiple} "
                "(the VAE's factor times the transformer's patch)"
            )

    def save_pretrained(self, directory) -> None:
        """Write the diffusers folder ``model.path=`` reads back."""
        self.pipe.save_pretrained(directory)
