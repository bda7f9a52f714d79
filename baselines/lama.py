"""LaMa (Suvorov et al.) through its widely used TorchScript export ``big-lama.pt``, and MagicRemover's text-derived
mask handed to LaMa (``attn_lama``).

Loading TorchScript runs code stored in the file: weights are read only from a path or URL the user configured.
The export's contract: ``forward(image, mask)`` with image ``(1, 3, H, W)`` float in [0, 1], mask ``(1, 1, H, W)``
with 1 = hole, H and W multiples of 8; it returns the inpainted image in [0, 1]. FFT convolutions break in
half precision, so it always runs in float32.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from magicremover.errors import ConfigError, ImageError, ModelLoadError
from magicremover.images import Resize, dilate, fit_mask, fit_to_model, load_image
from magicremover.method.settings import Settings
from magicremover.models import resolve_device
from magicremover.outputs import cache_root
from magicremover.remover_base import InvertingRemover
from magicremover.secrets import redact_url
from magicremover.types import RemovalResult, RemovalSample

BIG_LAMA_MD5 = "e3aa4aaa15225a33ec84f9f4bc47e500"  # the big-lama.pt export distributed with IOPaint / lama-cleaner


def resolve_weights(weights: str | None, cache_dir: str | Path, allow_http: bool = False) -> Path:
    """A local file for ``weights``: a path as given, or an https URL downloaded once into ``cache_dir`` (plain http
    only with ``allow_http``: the file is TorchScript, which runs code when loaded)."""
    if not weights:
        raise ModelLoadError("LaMa needs its TorchScript weights: set weights.lama=/path/to/big-lama.pt (or a URL)")
    if weights.startswith("http://") and not allow_http:
        raise ModelLoadError(
            f"weights.lama={redact_url(weights)} is not https; use an https URL or a local file "
            "(or method.allow_http=true if you trust the network)"
        )
    if weights.startswith(("http://", "https://")):
        target = Path(cache_dir).expanduser() / Path(weights.split("?")[0]).name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(weights, str(target), progress=False)
            except Exception as err:  # noqa: BLE001 - any download failure has the same fix
                raise ModelLoadError(
                    f"could not download {redact_url(weights)} ({type(err).__name__}); download it yourself and set "
                    "weights.lama=PATH"
                ) from None
        return target
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"method.weights={weights} does not exist; point it at big-lama.pt")
    return path


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LaMa:
    """Mask-based inpainting with LaMa.

    Args:
        weights: path or URL of ``big-lama.pt`` (or any TorchScript module with the same contract).
        md5: expected MD5 of the file (``null`` skips the check, e.g. for another export).
        mask_dilation: dilate the (binarised) mask by this square kernel first (30 as the authors' masked runs).
        resolution: side the image and mask are fitted to (the evaluation resolution, 512 in the paper).
        resize: ``stretch`` or ``center_crop``, as for every other method.
        device: ``auto``, ``cpu``, ``cuda``…
        cache_dir: where a URL is downloaded to (default: ``lama`` in :func:`~magicremover.outputs.cache_root`).
        allow_http: accept a plain-http URL (off: only https or a local file).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"mask"})
    components = None  # its own network, no shared diffusion model

    def __init__(
        self,
        weights: str | None = None,
        md5: str | None = BIG_LAMA_MD5,
        mask_dilation: int = 30,
        resolution: int = 512,
        resize: Resize = "stretch",
        device: str = "auto",
        cache_dir: str | Path | None = None,
        allow_http: bool = False,
    ):
        if cache_dir is None:  # beside the inversion cache
            cache_dir = cache_root() / "lama"
        path = resolve_weights(weights, cache_dir, allow_http)
        if md5 is not None and (found := file_md5(path)) != md5:
            raise ModelLoadError(
                f"{path} has MD5 {found}, not the expected {md5}: re-download it, or set method.md5=null for another export"
            )
        if mask_dilation < 0 or resolution < 8:
            raise ConfigError("method.mask_dilation must be ≥ 0 and method.resolution ≥ 8")
        self.device = resolve_device(device)
        self.model = torch.jit.load(str(path), map_location=self.device).eval()
        self.mask_dilation, self.resolution, self.resize = mask_dilation, resolution, resize

    @torch.no_grad()
    def inpaint(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Image ``(1, 3, H, W)`` in [0, 1] and mask ``(1, 1, H, W)`` (> 0.5 = hole) → inpainted ``(1, 3, H, W)``.

        Pads symmetrically to multiples of 8, crops back, and pastes the known pixels back exactly.
        """
        hole = dilate((mask > 0.5).float(), self.mask_dilation)
        height, width = image.shape[-2:]
        pad = (0, -width % 8, 0, -height % 8)
        padded_image = F.pad(image, pad, mode="reflect") if any(pad) else image
        padded_hole = F.pad(hole, pad, mode="reflect") if any(pad) else hole
        out = self.model(padded_image.to(self.device, torch.float32), padded_hole.to(self.device, torch.float32))
        out = out[..., :height, :width].float().cpu().clamp(0, 1)
        return hole * out + (1 - hole) * image

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        if sample.mask is None:
            raise ImageError(f"LaMa needs a mask and sample {sample.sample_id} has none; use a dataset with masks")
        source = load_image(sample.image)
        image = fit_to_model(source, self.resolution, self.resize)
        mask = fit_mask(sample.mask, source.size, tuple(image.shape[-2:]), self.resize)
        hole = dilate((mask > 0.5).float(), self.mask_dilation)
        return RemovalResult(image=self.inpaint(image, mask), mask=hole)


class AttentionLaMa(InvertingRemover):
    """A text-only baseline no paper row has: MagicRemover's own t = 1 attention mask (M₀), handed to LaMa.

    It tells whether MagicRemover's guidance, or just the text-derived mask, does the work. Costs one inversion
    (shared through the cache) and one UNet call.

    Args:
        components: the diffusion model whose attention picks the region.
        inversion: inversion settings (the mask is read on its t = 1 latent).
        lama: a :class:`LaMa` (its ``resolution`` is replaced by the model's).
        mask_threshold: M₀ = normalised attention > threshold (MagicRemover's default).
        resize: image fitting.
        cache_dir: inversion cache folder.
    """

    def __init__(
        self,
        components,
        inversion,
        lama: LaMa,
        mask_threshold: float = Settings.mask_threshold,
        resize: Resize = "stretch",
        cache_dir=None,
    ):
        super().__init__(components, inversion, resize, cache_dir)
        self.lama, self.mask_threshold = lama, mask_threshold

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        from magicremover.method.remover import t1_attention
        from magicremover.target_tokens import find_target
        from magicremover.unet_calls import UNetCalls

        c = self.components
        before = c.calls.totals()
        target = find_target(c.tokenizer, sample.prompt, sample.target)
        _, image = self.fit(sample)
        inversion = self.invert(sample, image)
        soft, fixed = t1_attention(c, inversion, target, tuple(inversion.trajectory.shape[-2:]), self.mask_threshold)
        size = tuple(image.shape[-2:])
        mask = F.interpolate(fixed.cpu(), size=size, mode="nearest")
        return RemovalResult(
            image=self.lama.inpaint(image, mask),
            attention=F.interpolate(soft.cpu(), size=size, mode="bilinear", align_corners=False).clamp(0, 1),
            mask=dilate(mask, self.lama.mask_dilation),
            calls=UNetCalls.delta(c.calls.totals(), before),
        )
