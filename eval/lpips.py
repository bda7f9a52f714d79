"""LPIPS (Zhang et al., 2018) on torchmetrics' network: its linear layers (shipped inside torchmetrics) over an
ImageNet backbone whose weights come from a local torchvision file, so nothing is downloaded.

Two scores per sample, both on the whole image at the output's size, inputs in [0, 1] (``normalize=True``):
``lpips_outside`` compares the input with the output whose object region is put back to the input's pixels, so only
what changed outside the object counts (the mask applied by compositing); ``lpips_gt`` compares the output with the
ground truth, on datasets that have it (the mask ignored, as Attentive Eraser scores LPIPS). Lower is better.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from magicremover.errors import ModelLoadError

log = logging.getLogger(__name__)
BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def load_lpips(backbone: str | Path | None = None, net: str = "alex") -> Lpips | None:
    """:class:`Lpips` with the backbone from ``backbone`` (a torchvision state-dict file), else from torch hub's cache
    when torchvision put it there; ``None`` (no LPIPS, said once) when neither exists."""
    if net not in BACKBONE_FILES:
        raise ModelLoadError(f"metrics.lpips.net={net} is not one of {', '.join(BACKBONE_FILES)}")
    if backbone is None:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]
        if not cached.is_file():
            log.info("lpips: off (no %s in %s; set weights.lpips_backbone=PATH)", BACKBONE_FILES[net], cached.parent)
            return None
        backbone = cached
    return Lpips(backbone, net)


@functools.cache  # stateless: one network per seed serves every run of a process (a sweep's jobs)
def tiny_lpips(seed: int = 0) -> Lpips:
    """LPIPS on a random AlexNet backbone (torchmetrics' own linear layers): for offline tests of the plumbing; its
    numbers mean nothing."""
    with torch.random.fork_rng():  # seeded without moving the caller's random state
        torch.manual_seed(seed)
        return Lpips(None, "alex")


class Lpips:
    """Per-image LPIPS of uint8 ``(N, H, W, 3)`` pairs.

    Args:
        backbone: torchvision's ImageNet state dict for ``net`` (e.g. ``alexnet-owt-7be5be79.pth``); ``None`` keeps
            a random backbone (:func:`tiny_lpips`).
        net: ``alex`` (LPIPS's default), ``vgg`` or ``squeeze``.
    """

    def __init__(self, backbone: str | Path | None, net: str = "alex"):
        # The private network, because torchmetrics' public LPIPS downloads torchvision's backbone itself; this one
        # takes it from a local file (or leaves it random), so nothing is downloaded.
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        self.net = _NoTrainLpips(pretrained=True, net=net, pnet_rand=True).eval()  # random backbone, replaced below
        if backbone is None:
            self.description = f"LPIPS {net}, random backbone (tiny stand-in), torchmetrics linear layers"
            return
        path = Path(backbone).expanduser()
        if not path.is_file():
            raise ModelLoadError(
                f"weights.lpips_backbone={backbone} does not exist; give torchvision's {BACKBONE_FILES[net]}"
            )
        try:  # torchmetrics keeps torchvision's layer indices: slice<k>.<index>.<param> is features.<index>.<param>
            state = torch.load(path, map_location="cpu", weights_only=True)
            mapped = {key: state[f"features.{key.split('.', 1)[1]}"] for key in self.net.net.state_dict()}
            self.net.net.load_state_dict(mapped)
        except Exception as err:  # noqa: BLE001 - any unreadable or foreign file is the same one-line error
            raise ModelLoadError(
                f"weights.lpips_backbone={backbone} is not torchvision's {net} state dict ({err})"
            ) from None
        self.description = f"LPIPS {net}, backbone {path.name}, torchmetrics linear layers"

    @torch.no_grad()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        to_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
        return self.net(to_tensor(a), to_tensor(b), normalize=True).flatten().numpy()


def outside_only(output: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``output`` with the object region (``mask`` > 127) put back to ``original``'s pixels."""
    inside = (mask.max(-1) if mask.ndim == 3 else mask) > 127
    return np.where(inside[..., None], original, output)


class LpipsScores(Metric):
    """``lpips_outside`` (input vs the output with the object put back, over samples with a mask) and ``lpips_gt``
    (ground truth vs output, over samples with one), means of the per-image scores, and ``lpips_settings``. Lower
    is better.

    Args:
        lpips: the network (:class:`Lpips`).
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, lpips: Lpips):
        super().__init__()
        self.lpips = lpips
        self.add_state("outside", default=[], dist_reduce_fx="cat")
        self.add_state("gt", default=[], dist_reduce_fx="cat")

    def update(self, samples: list) -> None:
        """``samples``: :class:`magicremover.eval.authors.Sample` s."""
        masked = [s for s in samples if s.object_mask is not None]
        if masked:
            composites = np.stack([outside_only(s.output, s.original, s.object_mask) for s in masked])
            self.outside.append(torch.from_numpy(self.lpips(np.stack([s.original for s in masked]), composites)))
        truths = [s for s in samples if s.truth is not None]
        if truths:
            scores = self.lpips(np.stack([s.truth for s in truths]), np.stack([s.output for s in truths]))
            self.gt.append(torch.from_numpy(scores))

    def compute(self) -> dict:
        values = {
            key: dim_zero_cat(getattr(self, key)).numpy() if getattr(self, key) else [] for key in ("outside", "gt")
        }
        return {
            "lpips_outside": float(np.mean(values["outside"])) if len(values["outside"]) else None,
            "lpips_gt": float(np.mean(values["gt"])) if len(values["gt"]) else None,
            "lpips_settings": {
                "network": self.lpips.description,
                "outside": "input vs the output with the object region put back to the input (the mask applied)",
                "gt": "ground truth vs output, whole image (the mask ignored)",
                "n_outside": len(values["outside"]),
                "n_gt": len(values["gt"]),
            },
        }
