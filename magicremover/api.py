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
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from magicremover import fullsize
from magicremover.config import CONFIG_DIR, build_remover, compose_config
from magicremover.errors import ConfigError, NonFiniteError
from magicremover.fullsize import Box
from magicremover.images import fit_to_model, load_image, to_pil, to_tensor
from magicremover.inputs import ImageInput, as_mask, as_pil
from magicremover.locate import Pass, locate
from magicremover.outputs import heatmap, jsonable
from magicremover.photo_meta import PhotoMeta, read_meta
from magicremover.removal import Removal, combined
from magicremover.target_tokens import find_target
from magicremover.types import RemovalResult, RemovalSample, Remover
from magicremover.unet_calls import UNetCalls

MaskInput = ImageInput
PROMPT_TEMPLATE = "a photo of a {target}"  # COCO's caption template, used when no prompt is given
_PRESETS = tuple(sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml") if p.stem != "local"))  # model=
log = logging.getLogger("magicremover")
Frame = tuple[Box, dict, dict]  # the box the model sees, what decided it (``framing``), the locate passes' UNet calls


def default_prompt(targets: Sequence[str]) -> str:
    """``"a photo of a {target}"`` (COCO's caption template), the targets joined by "and a"."""
    return PROMPT_TEMPLATE.format(target=" and a ".join(targets))


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
            model: a preset (``toy``, ``tiny``, ``tiny_xl``, ``tiny_sd3``, ``sd15``, ``sd21base``, ``sdxl``, ``sd3``,
                ``flux_dev``, ``flux_fill``), a local diffusers folder, or a hub id (its family, SD, SDXL, SD3 or
                FLUX, read from its ``model_index.json``).
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
        image: ImageInput,
        target: str | Sequence[str],
        prompt: str | None = None,
        mask: MaskInput | Sequence[MaskInput] | None = None,
        full_size: bool | None = None,
        name: str = "image",
    ) -> Removal:
        """Remove ``target`` from ``image``.

        Args:
            image: the photo (any size and mode; EXIF orientation is applied); arrays and tensors as
                :func:`magicremover.inputs.as_pil` takes them.
            target: the word or phrase of the prompt naming the object, or a list of them: each object is removed
                from the photo in its own pass and the passes are composited through their masks (every target is
                checked before any UNet call).
            prompt: a caption naming the object(s); ``"a photo of a {target}"`` (joined by "and") when omitted.
            mask: optional mask of the photo's size (white = object, or one colour painted on transparency): mask
                mode (Eq. 13) for the methods that take one; with several targets, one mask per target.
            full_size: paste the result back into the photo at its size (default: ``cfg.full_size``); ``False``
                returns the model's square, as the paper's evaluation does.
            name: the sample's name in logs and records.
        """
        opened = as_pil(image)
        photo = load_image(opened)
        targets = [target] if isinstance(target, str) else list(target) if isinstance(target, (list, tuple)) else []
        if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
            raise ConfigError(f"target={target!r}: give a word of the prompt, or a list of them (target=[dog,cat])")
        prompt = prompt if prompt is not None else default_prompt(targets)
        masks = [as_mask(m) if m is not None else None for m in _masks_per_target(mask, len(targets))]
        for user_mask in filter(None, masks):
            fullsize.check_mask_size(user_mask, photo.size)
        if self.remover.components is not None:  # every target is checked before the first pass runs
            for word in targets:
                find_target(self.remover.components.tokenizer, prompt, word)
        full_size = self.cfg.full_size if full_size is None else full_size
        meta = read_meta(opened, photo) if full_size else None
        # Each object from the photo itself (one inversion, shared through the cache), composited through each
        # pass's mask: a pass on the previous output re-inverts an edited image and lost 5-18 dB on the second object.
        passes = [
            self._one(photo, meta, word, prompt, m, name, frame)
            for word, m in zip(targets, masks)
            for frame in (self._frames(photo, word, prompt, m, name) if meta else [None])
        ]
        removal = passes[0] if len(passes) == 1 else combined(passes, meta or PhotoMeta(passes[0].input))
        removal.record["photo"] = meta.record() if meta else {"kept": "not on the model's square"}
        return removal

    def _one(
        self,
        photo: Image.Image,
        meta: PhotoMeta | None,
        target: str,
        prompt: str,
        user_mask,
        name: str,
        frame: Frame | None,
    ):
        """One object out of ``photo``: the method on the ``frame`` it sees, and the paste back (at full size when
        ``meta`` is given, else on the model's square)."""
        box, framing, locate_calls = frame if meta else (None, None, {})
        model_mask = None
        if user_mask is not None:
            model_mask = fullsize.model_mask(user_mask, photo.size, box, self.side) if meta else user_mask
        sample = RemovalSample(
            image=fullsize.model_input(photo, box, self.side) if meta else photo,
            prompt=prompt,
            target=target,
            mask=model_mask,
            sample_id=name,
        )
        result = self._remover_for(user_mask is not None)(sample)
        try:
            result.check_finite()
        except NonFiniteError as err:
            raise ConfigError(f"{err}; nothing was written (float16 can overflow: try model.dtype=float32)") from err
        record = {"prompt": prompt, "target": target, "input_size": list(photo.size), "method": self.method_name}
        calls = locate_calls | {stage: count.record() for stage, count in result.calls.items()}
        record |= {"unet_calls": calls, "seconds": result.seconds}
        record |= {"extras": json.loads(json.dumps(result.extras, default=jsonable))}
        if meta:
            return self._paste(photo, meta, box, model_mask, result, record | {"framing": framing})
        record |= {"mode": "model", "output_size": [result.image.shape[-1], result.image.shape[-2]]}
        seen = fit_to_model(photo, tuple(result.image.shape[-2:]), self.remover.resize)
        mask = to_pil(result.mask) if result.mask is not None else None
        return Removal(
            input=to_pil(seen),
            image=to_pil(result.image),
            reconstruction=to_pil(result.reconstruction) if result.reconstruction is not None else None,
            mask=mask,
            attention=to_pil(heatmap(result.attention, seen)) if result.attention is not None else None,
            record=record,
            result=result,
            alpha=np.asarray(mask.convert("L"), np.float32) / 255 if mask else None,
            edit=to_pil(result.image),
        )

    def _frames(self, photo: Image.Image, target: str, prompt: str, user_mask, name: str) -> list[Frame]:
        """The parts of the photo the model sees for ``target`` (``paste.strategy``): one per located instance, or
        one from the mask, or the whole photo; each with what decided it and, on the first, the locate passes' UNet
        calls. Located without a mask: :func:`magicremover.locate.locate` (one UNet call per pass)."""
        settings = self.paste
        if settings.strategy == "auto" and fullsize.AUTO_CROP_FRACTION * max(photo.size) < self.side:
            reason = "the photo is under twice the model's side: a crop cannot enlarge the object 2x"
            return [(fullsize.whole(photo.size), {"strategy": "auto", "used": "resize", "reason": reason}, {})]
        if settings.strategy == "resize":
            return [(*fullsize.choose_box(None, photo.size, self.side, settings, "none"), {})]
        if user_mask is not None:
            region = fullsize.mask_box(np.asarray(user_mask.convert("L")) > 127)
            return [(*fullsize.choose_box(region, photo.size, self.side, settings, "mask"), {})]
        if not hasattr(self.remover, "locate"):
            source = f"{self.method_name} has no locate pass; give a mask to crop"
            return [(*fullsize.choose_box(None, photo.size, self.side, settings, source), {})]
        c = self.remover.components
        before = c.calls.totals()
        found = self.locate(photo, target, prompt, name)
        calls = {stage: n.record() for stage, n in UNetCalls.delta(c.calls.totals(), before).items()}
        if not found:
            return [(*fullsize.choose_box(None, photo.size, self.side, settings, "located"), calls)]
        frames = []
        for index, chain in enumerate(found):
            box, framing = fullsize.choose_box(chain[-1].region, photo.size, self.side, settings, "located")
            framing |= {"locate": [step.record() for step in chain], "instance": index, "instances": len(found)}
            frames.append((box, framing, calls if index == 0 else {}))
        if len(found) > 1:
            log.info("%s: %d separate instances located; each is removed in its own pass", target, len(found))
        return frames

    def locate(self, photo: Image.Image, target: str, prompt: str, name: str = "") -> list[list[Pass]]:
        """Where ``target`` is in ``photo`` (RGB, any size) from the text alone, by ``paste``'s settings: each instance
        as its locate passes, coarse first (:func:`magicremover.locate.locate`; one UNet call per square read)."""
        if not hasattr(self.remover, "locate"):
            raise ConfigError(f"{self.method_name} has no locate pass: give a mask, or use method=magicremover")

        def attend(square: Image.Image):
            return self.remover.locate(RemovalSample(image=square, prompt=prompt, target=target, sample_id=name))

        s = self.paste
        return locate(
            photo, self.side, attend, s.locate_threshold, s.crop_margin, s.locate_passes, s.instances, s.locate_tiles
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

    def _paste(self, photo, meta: PhotoMeta, box, model_mask, result: RemovalResult, record: dict) -> Removal:
        """Composite the result into the photo through its final mask (or the user's ``model_mask``, fitted to the
        model's square, for methods that make none)."""
        final = result.mask
        if final is None and model_mask is not None:
            final = to_tensor(model_mask.convert("RGB"))[:, :1]
        dilate, feather = self.paste.pixels((box[2] - box[0], box[3] - box[1]))
        record |= {"mode": "full_size", "output_size": list(photo.size), "box": list(box)}
        edit = fullsize.placed(photo, result.image, box)
        full = {
            "input": photo,
            "reconstruction": fullsize.full_size_map(result.reconstruction, photo.size, box)
            if result.reconstruction is not None
            else None,
            "attention": self._attention(photo, box, result),
            "record": record,
            "result": result,
            "edit": edit,
        }
        if final is None:
            # Without any mask the whole frame is the method's: resized back, nothing kept byte for byte.
            warning = (
                f"{self.method_name} gives no mask and none was passed: the whole {photo.width}x{photo.height} photo "
                f"is its {self.side}x{self.side} output resized; pass mask= to keep the photo outside the object"
            )
            log.warning("%s", warning)
            record["paste_back"] = {"applied": False, "warning": warning}
            return Removal(image=meta.composite(edit, None), mask=None, alpha=None, **full)
        alpha = fullsize.paste_alpha(final, photo.size, box, self.paste)
        record["paste_back"] = {
            "applied": True,
            "dilate_px": dilate,
            "feather_px": feather,
            "threshold": self.paste.threshold,
            "replaced_fraction": float((alpha > 0).mean()),
        }
        if not alpha.any():
            warning = "the final mask is empty: nothing was changed (the object's region may be too small to mark)"
            log.warning("%s: %s", record["target"], warning)
            record["paste_back"]["warning"] = warning
        mask_image = Image.fromarray(np.round(alpha * 255).astype(np.uint8)).convert("RGB")
        return Removal(image=meta.composite(edit, alpha), mask=mask_image, alpha=alpha, **full)

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
    target: str | Sequence[str],
    prompt: str | None = None,
    *,
    mask: MaskInput | Sequence[MaskInput] | None = None,
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


def _masks_per_target(mask, count: int) -> list:
    """One mask (or ``None``) per target; a single mask goes with a single target."""
    if mask is None:
        return [None] * count
    if isinstance(mask, (str, Path, Image.Image, np.ndarray, torch.Tensor)):
        if count > 1:
            raise ConfigError(f"one mask was given for {count} targets; give one mask per target (a list)")
        return [mask]
    masks = list(mask)
    if len(masks) != count:
        raise ConfigError(f"{len(masks)} masks were given for {count} targets; give one mask per target")
    return masks
