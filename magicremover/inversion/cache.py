"""An on-disk cache of inversions, so a sweep inverts each image once.

An entry is a safetensors file named by a hash of everything that changes the result: the model's identity
(including dtype), the preprocessed image tensor (so the file bytes *and* the resize mode), the prompt and the
inversion config. Writes go to a temporary file that is renamed into place, so a crash never leaves a partial
entry under a valid name; an unreadable or inconsistent entry is deleted and recomputed, never trusted.

Entries are lean (format v5): only the trajectory latents the methods read back (z₀, the t = 1 latent and z_T;
every entry for Direct Inversion, which asks for them), and the per-step null embeddings as the first step's
embedding plus, for each later step, its int8 difference from the step before as decoded, with one float32 scale per
(step, token) row (none at all when every step shares one embedding, as with negative-prompt and plain DDIM
inversion). Coding each step against the previous *decoded* one (closed-loop differences) keeps errors from adding
up over the steps, and a step moves the embedding far less than the whole optimisation does: on a fresh toy
null-text inversion (50 steps) the largest error is 33× smaller than with differences from the first step, in fewer
bytes. A miss returns the same compacted inversion it stores, so a run's results never depend on whether its
inversions came from the cache.

``max_gb`` caps the folder: after a write that takes it over the cap, the least recently used entries (a hit
refreshes an entry's modification time) are deleted until it fits, with one warning per cache; the entry just
written is never the one evicted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from magicremover.errors import ConfigError, NonFiniteError
from magicremover.inversion.core import Inversion, InversionConfig, invert
from magicremover.models import SDComponents
from magicremover.outputs import temp_file

log = logging.getLogger(__name__)
_FORMAT = "magicremover-inversion-v5"  # v2: a digest; v3: lean; v4: int8 null rows; v5: step to step (older: unread)
_TENSORS = ("timesteps", "trajectory", "null_embeddings", "cond_embedding")  # of an Inversion
_ENDS = (0, 1, -1)  # z₀ (the VAE reconstruction), the t = 1 latent (M₀'s attention) and z_T


def pack(inversion: Inversion, full_trajectory: bool) -> dict[str, torch.Tensor]:
    """The tensors a lean entry stores (see the module docstring)."""
    trajectory, nulls = inversion.trajectory.detach().cpu(), inversion.null_embeddings.detach().cpu()
    n = len(trajectory)
    index = torch.arange(n) if full_trajectory else torch.tensor(sorted({i % n for i in _ENDS}))
    tensors = {
        "timesteps": inversion.timesteps.detach().cpu(),
        "cond_embedding": inversion.cond_embedding.detach().cpu(),
        "trajectory_index": index,
        "trajectory_kept": trajectory[index],
        "null_base": nulls[:1],
    }
    if (nulls != nulls[:1]).any():
        # Per-row symmetric int8 of each step's difference from the previous step as the reader will decode it: a
        # row's error is at most half that difference's largest magnitude / 127, whatever came before.
        codes, scales, decoded = [], [], nulls[:1]
        for row in nulls[1:]:
            step = row[None] - decoded
            scale = step.abs().amax(-1, keepdim=True) / 127
            code = torch.round(step / scale.clamp_min(torch.finfo(scale.dtype).tiny)).to(torch.int8)
            decoded = _decode_step(decoded, code, scale)
            codes.append(code)
            scales.append(scale)
        tensors["null_step"], tensors["null_step_scale"] = torch.cat(codes), torch.cat(scales)
    return {name: tensor.contiguous() for name, tensor in tensors.items()}


def _decode_step(previous: torch.Tensor, code: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """One step's null embedding from the previous decoded one; writer and reader share it, so both round alike."""
    return previous + code.to(previous.dtype) * scale


def unpack(tensors: dict[str, torch.Tensor], from_cache: bool) -> Inversion:
    """The inversion a lean entry holds; trajectory latents it did not keep are NaN, so reading one is caught as a
    non-finite result rather than silently used."""
    n_steps, kept = len(tensors["timesteps"]), tensors["trajectory_kept"]
    trajectory = torch.full((n_steps + 1, *kept.shape[1:]), float("nan"), dtype=kept.dtype)
    trajectory[tensors["trajectory_index"]] = kept
    base = tensors["null_base"]
    if "null_step" not in tensors:
        nulls = base.expand(n_steps, -1, -1).clone()
    else:
        rows = [base]
        for code, scale in zip(tensors["null_step"], tensors["null_step_scale"]):
            rows.append(_decode_step(rows[-1], code[None], scale[None]))
        nulls = torch.cat(rows)
    return Inversion(tensors["timesteps"], trajectory, nulls, tensors["cond_embedding"], from_cache=from_cache)


def entry_bytes(
    n_steps: int,
    latent_shape: tuple[int, ...],
    text_shape: tuple[int, int],
    distinct_nulls: bool,
    full_trajectory: bool,
) -> int:
    """Tensor bytes of one lean entry (float32 latents and embeddings), from shapes alone: e.g. SD-1.5 at 512² has
    ``latent_shape=(4, 64, 64)`` and ``text_shape=(77, 768)``."""
    latent, text = math.prod(latent_shape) * 4, math.prod(text_shape) * 4
    kept = n_steps + 1 if full_trajectory else len(_ENDS)
    nulls = text + ((n_steps - 1) * (text // 4 + text_shape[0] * 4) if distinct_nulls else 0)
    return n_steps * 8 + text + kept * (latent + 8) + nulls


def cache_key(identity: str, image: torch.Tensor, prompt: str, config: InversionConfig) -> str:
    """Hex digest identifying one inversion; ``image`` is the preprocessed ``(1, 3, H, W)`` input."""
    digest = hashlib.sha256()
    header = {
        "format": _FORMAT,
        "model": identity,
        "prompt": prompt,
        "config": asdict(config),
        "shape": list(image.shape),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(image.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cap_bytes(max_gb: float | None) -> int | None:
    """``cache_max_gb`` in bytes, checked (``None`` or infinity: no cap)."""
    if max_gb is None or (isinstance(max_gb, float) and math.isinf(max_gb) and max_gb > 0):
        return None
    if isinstance(max_gb, bool) or not isinstance(max_gb, (int, float)) or not max_gb > 0:
        raise ConfigError(f"cache_max_gb={max_gb} must be a positive number of GB (or null for no cap)")
    return int(max_gb * 1e9)


class InversionCache:
    """A folder of cached inversions.

    Args:
        root: the cache folder (created on first write).
        max_gb: the folder's cap in gigabytes (10⁹ bytes); ``None``: unbounded.

    Attributes:
        hits / misses / evicted: lookups answered from disk / computed, and entries deleted for the cap, since
            construction.
    """

    def __init__(self, root: str | Path, max_gb: float | None = None):
        self.root = Path(root).expanduser()
        self.max_bytes = cap_bytes(max_gb)
        self.hits = 0
        self.misses = 0
        self.evicted = 0
        self.writable = True
        self._total: int | None = None  # the folder's entry bytes, scanned at the first capped write

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str, full_trajectory: bool = False) -> Inversion | None:
        """The cached inversion for ``key``, or None when absent, unusable (then the entry is removed) or without the
        whole trajectory that ``full_trajectory`` asks for (then it is recomputed and replaced)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("key") != key:
                    raise ValueError("entry belongs to another key")
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            if metadata.get("digest") != _digest(tensors):
                raise ValueError("its content does not match its digest")
            n_steps = len(tensors["timesteps"])
            if len(tensors.get("null_step", tensors["null_base"].expand(n_steps - 1, -1, -1))) != n_steps - 1:
                raise ValueError("tensor lengths disagree")
            if full_trajectory and len(tensors["trajectory_index"]) != n_steps + 1:
                return None
            inversion = unpack(tensors, from_cache=True)
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed
            log.warning("inversion cache entry %s is unusable (%s); recomputing it", path.name, err)
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only cache: the entry stays, and is checked (and skipped) again next time
            return None
        try:
            os.utime(path)  # a hit is a use: least recently used entries are the ones max_gb evicts
        except OSError:
            pass  # a read-only cache is never written, so never evicted
        return inversion

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write atomically: a temporary file in the same folder, then ``os.replace``. The cache is an optimisation:
        a folder that cannot be written (read-only, full, a file) disables it with one warning."""
        if not self.writable:
            return
        path = self.path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = temp_file(path.parent, ".tmp")
            os.close(handle)
            save_file(tensors, tmp, metadata={"key": key, "format": _FORMAT, "digest": _digest(tensors)})
            os.replace(tmp, path)
            if self.max_bytes is not None:
                self._fit(path)
        except OSError as err:
            self.writable = False
            log.warning("inversion cache %s cannot be written (%s); continuing without caching", self.root, err)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(modification time, bytes, path) of every entry, oldest first."""
        entries = []
        for path in self.root.glob("*/*.safetensors"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # another process evicted it
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        return sorted(entries)

    def _fit(self, newest: Path) -> None:
        """Delete least recently used entries until the folder is within ``max_bytes``, sparing ``newest``."""
        if self._total is None:
            self._total = sum(size for _, size, _ in self._entries())
        else:
            self._total += newest.stat().st_size
        if self._total <= self.max_bytes:
            return
        entries = self._entries()  # rescanned: other processes may share the folder
        self._total = sum(size for _, size, _ in entries)
        evicted = 0
        for _, size, path in entries:
            if self._total <= self.max_bytes:
                break
            if path == newest:
                continue
            path.unlink(missing_ok=True)
            self._total -= size
            evicted += 1
        if evicted and not self.evicted:
            log.warning(
                "inversion cache %s reached cache_max_gb=%g: evicted %d least recently used entries "
                "(further evictions are not reported)",
                self.root,
                self.max_bytes / 1e9,
                evicted,
            )
        self.evicted += evicted


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def invert_cached(
    c: SDComponents,
    image: torch.Tensor,
    prompt: str,
    config: InversionConfig,
    cache: InversionCache | None,
    full_trajectory: bool = False,
    after_call: Callable[[int], None] | None = None,
) -> Inversion:
    """:func:`~magicremover.inversion.core.invert`, answered from ``cache`` when possible (zero UNet calls).
    ``full_trajectory``: the caller reads every trajectory latent (Direct Inversion), not only z₀, t = 1 and z_T.
    ``after_call`` (see :func:`~magicremover.inversion.core.ddim_invert`) needs the UNet calls a hit would skip: with
    it the cache is neither read nor written (an entry its caller never reads would only take disk)."""
    if cache is None or after_call is not None:
        return _finite(invert(c, image, prompt, config, after_call))
    key = cache_key(c.identity, image, prompt, config)
    cached = cache.load(key, full_trajectory)
    if cached is not None:
        cache.hits += 1
        return _to_device(cached, c.device)
    cache.misses += 1
    fresh = _finite(invert(c, image, prompt, config))  # a non-finite inversion is never cached
    tensors = pack(fresh, full_trajectory)
    cache.save(key, tensors)
    inversion = unpack(tensors, from_cache=False)
    inversion.calls = fresh.calls
    return _to_device(inversion, c.device)


def _finite(inversion: Inversion) -> Inversion:
    for name in _TENSORS:
        tensor = getattr(inversion, name)
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteError("inversion", f"the inversion's {name}")
    return inversion


def _to_device(inversion: Inversion, device: torch.device) -> Inversion:
    for name in _TENSORS:
        tensor = getattr(inversion, name)
        setattr(inversion, name, tensor.to(device) if tensor.is_floating_point() else tensor)
    return inversion
