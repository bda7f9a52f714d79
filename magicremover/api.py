"""One call for people who want an object gone from a photo (an entry point above the library; nothing in the library
imports it).

    from magicremover import remove
    removal = remove("photo.jpg", target="dog")      # the embedded toy model unless model= says otherwise
    removal.image.save("no-dog.png")                 # the photo at its own size, untouched away from the dog

or, to load the model once for many photos, ``pipe = Pipeline.from_pretrained("sd15")`` and ``pipe(photo, "dog")``.
Every Hydra key of ``conf/remove.yaml`` can be overridden (``overrides=["method.lambda_=0.7"]``).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from magicremover import fullsize
from magicremover.config import build_remover, compose_config
from magicremover.errors import ConfigError, ImageError, NonFiniteError
from magicremover.images import fit_to_model, load_image, to_pil, to_tensor
from magicremover.outputs import heatmap, jsonable
from magicremover.types import RemovalResult, RemovalSample, Remover

PROMPT_TEMPLATE = "a photo of a {target}"  # COCO's caption template, used when no prompt is given
_PRESETS = ("toy", "tiny", "sd15", "sd21base")


@dataclass
class Removal:
    """What :func:`remove` returns. Images are RGB PIL images at the photo's size (``mode="full_size"``) or at the
    model's square (``mode="model"``, the paper protocol).

    Attributes:
        input: the photo as read (upright RGB), at the output's size.
        image: the photo with the object removed.
        reconstruction: the inversion's reconstruction of the photo (every pixel re-rendered), when the method makes one.
        mask: the final mask M (grey, white = removed), when the method makes one; at full size, the compositing
            weight (the mask dilated and feathered).
        attention: the target word's attention as a heat map over the photo, when the method makes one.
        record: what ran: prompt, target, mode, sizes, paste-back figures, UNet calls and seconds per stage.
        result: the method's raw result at the model's resolution.
    """

    input: Image.Image
    image: Image.Image
    reconstruction: Image.Image | None
    mask: Image.Image | None
    attention: Image.Image | None
    record: dict
    result: RemovalResult = field(repr=False)


def as_image(source: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """A path, PIL image or array (``(H, W)`` / ``(H, W, 3|4)``, uint8, or float in [0, 1]) as upright 8-bit RGB.

    Raises:
        ImageError: an array of another shape, dtype or range (one line naming the accepted forms).
    """
    if isinstance(source, np.ndarray):
        array = source
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
                raise ImageError("a float image array must hold values in [0, 1]; scale it or pass uint8")
            array = np.round(array * 255)
        elif array.dtype != np.uint8:
            raise ImageError(f"an image array must be uint8 or float in [0, 1]; got {array.dtype}")
        source = Image.fromarray(array.astype(np.uint8))
    return load_image(source)


class Pipeline:
    """A loaded remover plus the full-size handling around it.

    Args:
        cfg: a composed ``conf/remove.yaml`` (see :meth:`from_pretrained`).
        remover: an already built remover for ``cfg`` (built from ``cfg.method`` when omitted).
    """

    def __init__(self, cfg: DictConfig, remover: Remover | None = None):
        self.cfg = cfg
        self.paste = fullsize.PasteSettings(**cfg.paste)
        self.remover = remover if remover is not None else build_remover(cfg)
        self.side = self.remover.resolution
        self._mask_remover = None

    @classmethod
    def from_pretrained(
        cls, model: str = "toy", method: str = "magicremover", overrides: Sequence[str] = (), device: str = "auto"
    ) -> Pipeline:
        """Load a model and a method.

        Args:
            model: a preset (``toy``, ``tiny``, ``sd15``, ``sd21base``), a local diffusers folder, or a hub id.
            method: a ``conf/method`` preset (``magicremover``, ``magicremover_paper``, ``p2p_reweight``, ``lama``, …).
            overrides: Hydra overrides of ``conf/remove.yaml``, e.g. ``["method.lambda_=0.7", "num_inference_steps=25"]``.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        """
        folder = Path(model).expanduser()
        preset = model if model in _PRESETS else "local" if folder.is_dir() else "sd15"
        cfg = compose_config("remove", [f"model={preset}", f"method={method}", f"device={device}", *overrides])
        if preset == "local":
            cfg.model.path = str(folder.resolve())
        elif preset == "sd15" and model != "sd15":
            cfg.model.source = model  # a hub id: the loader fails in one line, naming model.path=, when offline
        return cls(cfg)

    def __call__(
        self,
        image: str | Path | Image.Image | np.ndarray,
        target: str,
        prompt: str | None = None,
        mask: str | Path | Image.Image | np.ndarray | None = None,
        full_size: bool | None = None,
        name: str = "image",
    ) -> Removal:
        """Remove ``target`` from ``image``.

        Args:
            image: the photo (any size; EXIF orientation is applied).
            target: the word or phrase of the prompt naming the object.
            prompt: a caption naming the object; ``"a photo of a {target}"`` when omitted.
            mask: optional mask of the photo's size (white = object): mask mode (Eq. 13) for the methods that take one.
            full_size: paste the result back into the photo at its size (default: ``cfg.full_size``); ``False``
                returns the model's square, as the paper's evaluation does.
            name: the sample's name in logs and records.
        """
        photo = as_image(image)
        prompt = prompt if prompt is not None else PROMPT_TEMPLATE.format(target=target)
        full_size = self.cfg.full_size if full_size is None else full_size
        box = fullsize.whole(photo.size)
        user_mask = as_image(mask) if mask is not None else None
        sample = RemovalSample(
            image=fullsize.model_input(photo, box, self.side) if full_size else photo,
            prompt=prompt,
            target=target,
            mask=(fullsize.model_mask(user_mask, photo.size, box, self.side) if full_size else user_mask)
            if user_mask is not None
            else None,
            sample_id=name,
        )
        result = self._remover_for(user_mask is not None)(sample)
        try:
            result.check_finite()
        except NonFiniteError as err:
            raise ConfigError(f"{err}; nothing was written (float16 can overflow: try model.dtype=float32)") from err
        record = {"prompt": prompt, "target": target, "input_size": list(photo.size), "method": self.method_name}
        record |= {"unet_calls": {stage: asdict(count) for stage, count in result.calls.items()}}
        record |= {"seconds": result.seconds, "extras": json.loads(json.dumps(result.extras, default=jsonable))}
        if full_size:
            return self._paste(photo, box, user_mask, result, record)
        record |= {"mode": "model", "output_size": [result.image.shape[-1], result.image.shape[-2]]}
        seen = fit_to_model(photo, tuple(result.image.shape[-2:]), self.remover.resize)
        return Removal(
            input=to_pil(seen),
            image=to_pil(result.image),
            reconstruction=to_pil(result.reconstruction) if result.reconstruction is not None else None,
            mask=to_pil(result.mask) if result.mask is not None else None,
            attention=to_pil(heatmap(result.attention, seen)) if result.attention is not None else None,
            record=record,
            result=result,
        )

    @property
    def method_name(self) -> str:
        """The method's class, as recorded (``MagicRemover``, ``LaMa``, …)."""
        return type(self.remover).__name__

    def _remover_for(self, mask: bool):
        """The remover; with a mask, the same method in mask mode (Eq. 13) when it has one, sharing the loaded model."""
        if not mask or "use_mask" not in self.cfg.method or self.cfg.method.use_mask:
            return self.remover
        if self._mask_remover is None:
            cfg = copy.deepcopy(self.cfg)
            cfg.method.use_mask = True
            self._mask_remover = build_remover(cfg, components=self.remover.components)
        return self._mask_remover

    def _paste(self, photo, box, user_mask, result: RemovalResult, record: dict) -> Removal:
        """Composite the result into the photo through its final mask (or the user's, for methods that make none)."""
        final = result.mask
        if final is None and user_mask is not None:
            final = to_tensor(user_mask.resize((self.side, self.side), Image.Resampling.BILINEAR))[:, :1]
        dilate, feather = self.paste.pixels(photo.size)
        record |= {"mode": "full_size", "output_size": list(photo.size), "box": list(box)}
        full = {
            "input": photo,
            "reconstruction": fullsize.full_size_map(result.reconstruction, photo.size, box)
            if result.reconstruction is not None
            else None,
            "attention": self._attention(photo, box, result),
            "record": record,
            "result": result,
        }
        if final is None:
            # Without any mask the whole frame is the method's: resized back, nothing kept byte for byte.
            record["paste_back"] = {"applied": False, "reason": "the method gives no mask and none was passed"}
            return Removal(image=fullsize.full_size_map(result.image, photo.size, box), mask=None, **full)
        alpha = fullsize.paste_alpha(final, photo.size, box, self.paste)
        record["paste_back"] = {
            "applied": True,
            "dilate_px": dilate,
            "feather_px": feather,
            "threshold": self.paste.threshold,
            "replaced_fraction": float((alpha > 0).mean()),
        }
        mask_image = Image.fromarray(np.round(alpha * 255).astype(np.uint8)).convert("RGB")
        return Removal(image=fullsize.paste_back(photo, result.image, alpha, box), mask=mask_image, **full)

    @staticmethod
    def _attention(photo: Image.Image, box, result: RemovalResult) -> Image.Image | None:
        if result.attention is None:
            return None
        soft = to_tensor(fullsize.full_size_map(result.attention, photo.size, box).convert("RGB"))[:, :1]
        return to_pil(heatmap(soft, to_tensor(photo)))


@functools.lru_cache(maxsize=2)
def _pipeline(model: str, method: str, overrides: tuple[str, ...], device: str) -> Pipeline:
    return Pipeline.from_pretrained(model, method, overrides, device)


def remove(
    image: str | Path | Image.Image | np.ndarray,
    target: str,
    prompt: str | None = None,
    *,
    mask: str | Path | Image.Image | np.ndarray | None = None,
    model: str = "toy",
    method: str = "magicremover",
    overrides: Sequence[str] = (),
    device: str = "auto",
    full_size: bool = True,
) -> Removal:
    """Remove ``target`` from ``image`` in one call; the loaded model is kept for the next call with the same
    ``model``, ``method``, ``overrides`` and ``device``. Arguments as :meth:`Pipeline.from_pretrained` and
    :meth:`Pipeline.__call__`."""
    pipe = _pipeline(model, method, tuple(overrides), device)
    return pipe(image, target, prompt, mask=mask, full_size=full_size)
