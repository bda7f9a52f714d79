"""Attentive Eraser (Sun et al., AAAI 2025) on the shared attention kernel: training-free removal with a mask.

Each denoising step runs one UNet call of two identical halves (prompt ``""``, CFG off). In the second half the
decoder's self-attention is edited (Attention Activation and Suppression, AAS): logits from every query to keys inside
the mask get the dtype's most negative value, so attention is redirected to the background; for the first
``ss_steps`` steps (inclusive) queries inside the mask use logits × ``ss_scale``, a flatter distribution (the
self-attention "suppression" of the object). The step's noise is ε_normal + s · (ε_edited − ε_normal) (SARG,
``rm_guidance_scale``), and latents outside the mask are put back to the input's:

* ``sip`` (its ``inference/SIP.py``): start from the input's latent noised to ``strength`` (0.8: the last 40 of 50
  DDIM steps); after each step, outside the (nearest-resized) mask, the input's latent noised to the next timestep with
  the same noise (the clean latent after the last step). On SDXL, as its diffusers community pipeline
  (``StableDiffusionXL_AE_Pipeline``): the latent mask is max-pooled (``max_pool2d(mask, 8)``) and AAS edits the
  decoder's self-attention (its layers 34–69 of 70); that pipeline's example runs no FreeU (``freeu=auto``: none).
* ``dip`` (``inference/DIP.py``): DDIM inversion of the input under ``""`` first (strength 1); before each step,
  outside the (max-pooled) mask, the inversion's latent at that timestep; after the last, the input's latent.

Defaults are its SD-2.1 scripts': 50 steps, AAS on every step and on the decoder's self-attention (its transformer
blocks 7–15 of 16), ``ss_steps`` 9, ``ss_scale`` 0.3, ``rm_guidance_scale`` 9, the mask resized, Gaussian-blurred with
a 13-px kernel and thresholded at 0.1, FreeU b1 1.4, b2 1.6, s1 0.9, s2 0.2 (diffusers' ``enable_freeu``). The
original patches ``Attention.forward`` and counts calls to find layers and steps; here one controller, keyed by layer
name, is installed by :func:`~magicremover.attention.controlled_attention` and told the step by the loop.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from magicremover.attention import AttentionController, AttnContext, controlled_attention
from magicremover.diffusion import alpha_bar, ddim_step, decode_latents, encode_image, encode_text, step_size, unet_eps
from magicremover.errors import ConfigError, ImageError
from magicremover.images import Resize, fit_mask, fit_to_model, load_image
from magicremover.inversion import InversionConfig, invert, set_timesteps
from magicremover.models import SDComponents
from magicremover.types import RemovalResult, RemovalSample


class AttentionActivationSuppression(AttentionController):
    """AAS on the second half of a two-half batch, on the self-attention layers of ``places``.

    Args:
        mask: the object ``(1, 1, H, W)`` in {0, 1} at image resolution; each query grid takes its max-pool (a cell
            is inside when any of its pixels is).
        places: UNet parts whose self-attention is edited (``("up",)``: the decoder, as the SD scripts).
        ss_scale: the logit scale of queries inside the mask while :attr:`suppress` is on.

    Attributes:
        active: edit this call (the loop sets it per step); ``suppress``: also scale the inside queries' logits.
    """

    def __init__(self, mask: torch.Tensor, places: Sequence[str] = ("up",), ss_scale: float = 0.3):
        self.mask, self.places, self.ss_scale = mask, tuple(places), ss_scale
        self.active = False
        self.suppress = False

    def wants_probs(self, ctx: AttnContext) -> bool:
        return self.active and not ctx.is_cross and ctx.place in self.places

    def grid_mask(self, height: int, width: int) -> torch.Tensor:
        """The mask on a ``height × width`` query grid, flattened ``(height · width,)``, in {0, 1}."""
        return F.adaptive_max_pool2d(self.mask, (height, width)).round().flatten()

    def on_scores(self, ctx: AttnContext, scores: torch.Tensor) -> torch.Tensor:
        inside = self.grid_mask(ctx.height, ctx.width).to(scores.device)
        normal, edited = scores.chunk(2)
        background = torch.where(inside.bool(), torch.finfo(scores.dtype).min, 0.0).to(scores.dtype)
        if self.suppress:  # rows are independent softmaxes: the query mask picks the scaled or the plain row
            edited = torch.where(inside.bool()[:, None], self.ss_scale * edited, edited)
        return torch.cat([normal, edited + background])


class AttentiveEraser:
    """Mask-based removal by Attentive Eraser on the shared SD model.

    Args:
        components: the diffusion model.
        variant: ``sip`` (start from the noised input) or ``dip`` (DDIM inversion first).
        num_inference_steps: DDIM steps of the full schedule (50).
        strength: fraction of them run, from the noisy end (SIP 0.8; DIP runs all, 1.0).
        rm_guidance_scale: SARG's s in ε_normal + s · (ε_edited − ε_normal) (9).
        ss_steps / ss_scale: steps 0 … ``ss_steps`` flatten the inside queries' logits by ``ss_scale`` (9, 0.3).
        places: UNet parts whose self-attention AAS edits (the decoder).
        mask_blur / mask_threshold: the mask's Gaussian kernel in pixels and its threshold (13, 0.1); 0 disables
            the blur.
        freeu: FreeU's ``(b1, b2, s1, s2)`` for the call, ``None`` (off) or ``auto``: the SD scripts' (1.4, 1.6,
            0.9, 0.2) on SD 1.x/2.x, off on SDXL (its community pipeline's example).
        prompt: the text for both halves (``""``).
        resize: how image and mask are fitted to the model's square.
        seed: VAE posterior sample and SIP noise.
        latent_mask: how SIP brings the mask to the latent grid: ``nearest`` (the SD scripts), ``max_pool`` (the SDXL
            community pipeline: a latent cell is inside when any of its pixels is), ``auto`` (the one of the model's
            family).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"mask"})

    def __init__(
        self,
        components: SDComponents,
        variant: Literal["sip", "dip"] = "sip",
        num_inference_steps: int = 50,
        strength: float = 0.8,
        rm_guidance_scale: float = 9.0,
        ss_steps: int = 9,
        ss_scale: float = 0.3,
        places: Sequence[str] = ("up",),
        mask_blur: int = 13,
        mask_threshold: float = 0.1,
        freeu: Sequence[float] | Literal["auto"] | None = "auto",
        prompt: str = "",
        resize: Resize = "stretch",
        seed: int = 0,
        latent_mask: Literal["auto", "nearest", "max_pool"] = "auto",
    ):
        if variant not in ("sip", "dip"):
            raise ConfigError(f"method.variant={variant} is not sip or dip")
        if not 0 < strength <= 1 or (variant == "dip" and strength != 1):
            raise ConfigError(f"method.strength={strength} must be in (0, 1] (and 1 for variant=dip)")
        if mask_blur and mask_blur % 2 == 0:
            raise ConfigError(f"method.mask_blur={mask_blur} must be an odd kernel size in pixels (or 0)")
        if latent_mask not in ("auto", "nearest", "max_pool"):
            raise ConfigError(f"method.latent_mask={latent_mask} is not auto, nearest or max_pool")
        if freeu == "auto":
            freeu = None if components.is_xl else (1.4, 1.6, 0.9, 0.2)
        if freeu is not None and len(freeu) != 4:
            raise ConfigError(f"method.freeu={list(freeu)} must be [b1, b2, s1, s2] or null")
        self.components, self.variant, self.steps, self.strength = components, variant, num_inference_steps, strength
        self.rm_guidance_scale, self.ss_steps, self.ss_scale, self.places = (
            rm_guidance_scale,
            ss_steps,
            ss_scale,
            places,
        )
        self.mask_blur, self.mask_threshold, self.freeu = mask_blur, mask_threshold, freeu
        self.prompt, self.resize, self.seed = prompt, resize, seed
        self.latent_mask = ("max_pool" if components.is_xl else "nearest") if latent_mask == "auto" else latent_mask

    @property
    def resolution(self) -> int:
        return self.components.resolution

    def prepare_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The mask ``(1, 1, H, W)`` in [0, 1] blurred and thresholded to {0, 1}, as its data loader does."""
        if self.mask_blur:
            mask = gaussian_blur(mask, [self.mask_blur, self.mask_blur])
        return (mask >= self.mask_threshold).float()

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        if sample.mask is None:
            raise ImageError(
                f"Attentive Eraser needs a mask and sample {sample.sample_id} has none; pass one or use a dataset with masks"
            )
        c = self.components
        start, before = time.perf_counter(), c.calls.totals()
        source = load_image(sample.image)
        image = fit_to_model(source, self.resolution, self.resize).to(c.device)
        mask = self.prepare_mask(fit_mask(sample.mask, source.size, tuple(image.shape[-2:]), self.resize).to(c.device))
        controller = AttentionActivationSuppression(mask, self.places, self.ss_scale)
        if self.freeu is not None:
            b1, b2, s1, s2 = self.freeu
            c.unet.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)
        try:
            latent = self._denoise(image, mask, controller)
        finally:
            if self.freeu is not None:
                c.unet.disable_freeu()
        calls, seconds = c.calls.since(before, start)
        return RemovalResult(
            image=decode_latents(c, latent).cpu(),
            mask=mask.cpu(),
            calls=calls,
            seconds=seconds,
            extras={
                "variant": self.variant,
                "strength": self.strength,
                "prompt": self.prompt,
                "latent_mask": self.latent_mask,
            },
        )

    @torch.no_grad()
    def _denoise(self, image: torch.Tensor, mask: torch.Tensor, controller: AttentionActivationSuppression):
        """The edited denoising loop; returns the final latent ``(1, C, h, w)``."""
        c = self.components
        text = encode_text(c, [self.prompt]).expand(2, -1, -1)
        if self.variant == "dip":
            with c.calls.stage("inversion"):
                config = InversionConfig(
                    method="ddim", num_inference_steps=self.steps, guidance_scale=1.0, encode="sample", seed=self.seed
                )
                trajectory = invert(c, image, self.prompt, config).trajectory
            clean = trajectory[0]
            keep = F.max_pool2d(mask, c.vae_scale_factor).round()  # its DIP pipeline's latent mask
        else:
            clean = encode_image(c, image, mode="sample", seed=self.seed)
            if self.latent_mask == "max_pool":  # the SDXL pipeline's
                keep = F.max_pool2d(mask, c.vae_scale_factor).round()
            else:  # its SD SIP pipeline's
                keep = F.interpolate(mask, size=tuple(clean.shape[-2:]))
            noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(self.seed)).to(c.device)
        timesteps = set_timesteps(c, self.steps).tolist()
        first = self.steps - int(self.steps * self.strength)
        run = timesteps[first:]
        z = trajectory[-1] if self.variant == "dip" else c.scheduler.add_noise(clean, noise, torch.tensor(run[:1]))
        with controlled_attention(c.unet, controller), c.calls.stage("edit"):
            for i, t in enumerate(run):
                if self.variant == "dip":  # outside the mask, the inversion's latent at this timestep
                    z = keep * z + (1 - keep) * trajectory[self.steps - i]
                controller.active, controller.suppress = True, i <= self.ss_steps
                eps_normal, eps_edited = unet_eps(c, z.expand(2, -1, -1, -1), t, text).chunk(2)
                eps = eps_normal + self.rm_guidance_scale * (eps_edited - eps_normal)  # SARG
                z = ddim_step(z, eps, alpha_bar(c, t), alpha_bar(c, t - step_size(c)))
                if self.variant == "sip":  # outside the mask, the input noised to the next timestep
                    last = i == len(run) - 1
                    reference = clean if last else c.scheduler.add_noise(clean, noise, torch.tensor(run[i + 1 : i + 2]))
                    z = keep * z + (1 - keep) * reference
        if self.variant == "dip":
            z = keep * z + (1 - keep) * clean
        return z
