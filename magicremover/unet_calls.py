"""UNet call accounting: every forward and backward pass through the UNet, counted per stage."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import Iterator

import torch

BACKWARD_COST = (
    2  # one backward pass ≈ two forward passes (the usual rule; checked by magicremover.experiments.benchmark)
)


@dataclass
class StageCount:
    """What one stage cost.

    Attributes:
        calls: UNet invocations (a CFG call with batch 2 counts once).
        samples: sum of the batch sizes of those invocations ("sample-forwards").
        backward: backward passes that reached the UNet's output.
        seconds: wall time spent inside the stage's ``with`` blocks.
        backward_samples: the batch sizes of the calls a backward pass went through.
        recomputed_samples: of those, the ones whose forward was recomputed in the backward (gradient checkpointing).
    """

    calls: int = 0
    samples: int = 0
    backward: int = 0
    seconds: float = 0.0
    backward_samples: int = 0
    recomputed_samples: int = 0

    @property
    def forward_equivalents(self) -> int:
        """What the stage cost in single-sample UNet forwards: forward samples + 2 × backward samples (a backward
        costs about two forwards; ``magicremover.experiments.benchmark`` measures the ratio) + the recomputed forwards."""
        return self.samples + BACKWARD_COST * self.backward_samples + self.recomputed_samples

    def record(self) -> dict:
        """The counts as a record (``result.json``), with the forward-equivalents."""
        return asdict(self) | {"forward_equivalents": self.forward_equivalents}

    def __sub__(self, other: "StageCount") -> "StageCount":
        return StageCount(*(a - b for a, b in zip(asdict(self).values(), asdict(other).values())))


class _CountBackward(torch.autograd.Function):
    """Identity on the UNet's differentiable inputs whose backward reports that a gradient went through."""

    @staticmethod
    def forward(ctx, callback, *tensors):
        ctx.callback = callback
        return tuple(t.clone() for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.callback()
        return (None, *grads)


class UNetCalls:
    """Counts the calls of one UNet, attributed to the stage that is active when they happen.

    A forward pre-hook counts invocations and their batch sizes. When an input (latent or text embedding)
    requires grad, it is routed through an identity autograd node that counts one backward pass whenever a
    gradient flows back into that call — whether the loss was on the output or on attention maps inside it.
    Calls outside any stage go to ``"other"``.

    Example::

        calls = UNetCalls(unet)
        with calls.stage("inversion"):
            unet(z, t, emb)
        calls.totals()["inversion"].calls  # 1
    """

    def __init__(self, unet: torch.nn.Module):
        self._counts: dict[str, StageCount] = defaultdict(StageCount)
        self._stage = "other"
        self._handle = unet.register_forward_pre_hook(self._on_forward, with_kwargs=True)

    def _on_forward(self, module, args, kwargs):
        stage = self._stage
        args, kwargs = list(args), dict(kwargs)
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))  # a UNet's or a transformer's
        self._counts[stage].calls += 1
        self._counts[stage].samples += sample.shape[0]
        if torch.is_grad_enabled():
            # The differentiable inputs: the latent (arg 0) and the text embedding (arg 2), positional or by name.
            slots = [(args, i) for i in (0, 2) if i < len(args)]
            slots += [(kwargs, k) for k in ("sample", "hidden_states", "encoder_hidden_states") if k in kwargs]
            slots = [(box, key) for box, key in slots if torch.is_tensor(box[key]) and box[key].requires_grad]
            if slots:
                recomputed = bool(getattr(module, "is_gradient_checkpointing", False))
                counted = partial(self._on_backward, stage, sample.shape[0], recomputed)
                marked = _CountBackward.apply(counted, *(box[key] for box, key in slots))
                for (box, key), tensor in zip(slots, marked):
                    box[key] = tensor
        return tuple(args), kwargs

    def _on_backward(self, stage: str, batch: int, recomputed: bool) -> None:
        count = self._counts[stage]
        count.backward += 1
        count.backward_samples += batch
        count.recomputed_samples += batch if recomputed else 0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Attribute the calls (and the wall time) inside the block to ``name``; stages nest."""
        outer, self._stage = self._stage, name
        start = time.perf_counter()
        try:
            yield
        finally:
            self._counts[name].seconds += time.perf_counter() - start
            self._stage = outer

    def totals(self) -> dict[str, StageCount]:
        """A copy of the running totals per stage."""
        return {k: StageCount(**asdict(v)) for k, v in self._counts.items()}

    def since(self, before: dict[str, StageCount], start: float) -> tuple[dict[str, StageCount], dict[str, float]]:
        """What a removal cost since the snapshot ``before`` (:meth:`totals`) taken at ``start``
        (``time.perf_counter()``): the per-stage counts (:meth:`delta`) and the wall seconds per stage plus ``total``."""
        calls = self.delta(self.totals(), before)
        return calls, {name: count.seconds for name, count in calls.items()} | {"total": time.perf_counter() - start}

    @staticmethod
    def delta(after: dict[str, StageCount], before: dict[str, StageCount]) -> dict[str, StageCount]:
        """Per-stage cost between two :meth:`totals` snapshots; stages with no activity are left out."""
        out = {}
        for name, count in after.items():
            diff = count - before.get(name, StageCount())
            if diff.calls or diff.backward or diff.seconds > 0:
                out[name] = diff
        return out

    def close(self) -> None:
        self._handle.remove()
