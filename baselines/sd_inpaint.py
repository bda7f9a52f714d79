"""SD-Inpaint: diffusers' Stable Diffusion inpainting pipeline, with the authors' settings as defaults.

The authors ran ``runwayml/stable-diffusion-inpainting`` (removed from the hub; the mirror is
``stable-diffusion-v1-5/stable-diffusion-inpainting``) with prompt ``" "``, strength 1.0, 50 steps, CFG 7.5, the GT
mask dilated by a 20×20 kernel, and no paste-back of unmasked pixels. An SDXL inpainting folder (e.g.
``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``, ``model_index.json`` naming an SDXL pipeline) runs through
``StableDiffusionXLInpaintPipeline`` instead, at its native 1024².
"""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

from magicremover.errors import ConfigError, ImageError, ModelLoadError
from magicremover.images import Resize, dilate, fit_mask, fit_to_model, load_image, to_pil, to_tensor
from magicremover.models import is_xl_folder, model_folder, resolve_device, resolve_dtype
from magicremover.types import RemovalResult, RemovalSample


class SDInpaint:
    """Mask-based inpainting with a 9-channel Stable Diffusion (1.x/2.x or XL) inpainting UNet.

    Args:
        source / path: hub id, or a local diffusers folder (wins).
        prompt / negative_prompt: the authors used ``" "`` and none.
        num_inference_steps, guidance_scale, strength: pipeline settings (50, 7.5, 1.0: start from pure noise).
        mask_dilation: square kernel applied to the binarised mask first (20).
        paste_back: copy the unmasked input pixels over the output (the authors did not).
        resolution / resize: how image and mask are fitted (``None``: the UNet's native side, 512 for SD 1.5 and 2.x
            inpainting, 1024 for SDXL's; stretched, like every other method).
        seed: generator seed per call.
        device / dtype: as for ``model=`` (fp16 on CUDA).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"mask"})
    components = None  # its own network, no shared diffusion model

    def __init__(
        self,
        source: str | None = "stable-diffusion-v1-5/stable-diffusion-inpainting",
        path: str | None = None,
        prompt: str = " ",
        negative_prompt: str | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        strength: float = 1.0,
        mask_dilation: int = 20,
        paste_back: bool = False,
        resolution: int | None = None,
        resize: Resize = "stretch",
        seed: int = 0,
        device: str = "auto",
        dtype: str = "auto",
    ):
        if not 0 < strength <= 1:
            raise ConfigError(f"method.strength={strength} must be in (0, 1]")
        folder = model_folder(source, path, key="method")
        self.device = resolve_device(device)
        xl = is_xl_folder(folder)
        pipeline = StableDiffusionXLInpaintPipeline if xl else StableDiffusionInpaintPipeline
        no_checker = {} if xl else {"safety_checker": None, "requires_safety_checker": False}  # SDXL has none
        try:
            self.pipe = pipeline.from_pretrained(
                folder, torch_dtype=resolve_dtype(dtype, self.device), **no_checker
            ).to(self.device)
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"could not load an inpainting pipeline from {folder}: {str(err).splitlines()[0]}"
            ) from err
        if self.pipe.unet.config.in_channels != 9:
            raise ModelLoadError(
                f"{folder} has a {self.pipe.unet.config.in_channels}-channel UNet, not an inpainting model (9 channels)"
            )
        self.pipe.set_progress_bar_config(disable=True)
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.steps, self.guidance_scale, self.strength = num_inference_steps, guidance_scale, strength
        native = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self.mask_dilation, self.paste_back, self.resolution, self.resize, self.seed = (
            mask_dilation,
            paste_back,
            resolution or native,
            resize,
            seed,
        )

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        if sample.mask is None:
            raise ImageError(
                f"SD-Inpaint needs a mask and sample {sample.sample_id} has none; use a dataset with masks"
            )
        source = load_image(sample.image)
        image = fit_to_model(source, self.resolution, self.resize)
        hole = dilate(
            (fit_mask(sample.mask, source.size, tuple(image.shape[-2:]), self.resize) > 0.5).float(), self.mask_dilation
        )
        height, width = image.shape[-2:]
        output = self.pipe(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            image=to_pil(image),
            mask_image=to_pil(hole),
            height=height,
            width=width,
            strength=self.strength,
            guidance_scale=self.guidance_scale,
            num_inference_steps=self.steps,
            generator=torch.Generator(self.device).manual_seed(self.seed),
        ).images[0]
        result = to_tensor(output)
        if self.paste_back:
            result = hole * result + (1 - hole) * image
        return RemovalResult(image=result, mask=hole, extras={"prompt": self.prompt, "paste_back": self.paste_back})
