"""An on-disk cache of inversions, so a sweep inverts each image once.

An entry is a safetensors file named by a hash of everything that changes the result: the model's identity
(including dtype), the preprocessed image tensor (so the file bytes *and* the resize mode), the prompt and the
inversion config. Writes go to a temporary file that is renamed into place, so a crash never leaves a partial
entry under a valid name; an unreadable or inconsistent entry is deleted and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from magicremover.errors import NonFiniteError
from magicremover.inversion.core import Inversion, InversionConfig, invert
from magicremover.models import SDComponents

log = logging.getLogger(__name__)
_FORMAT = "magicremover-inversion-v2"  # v2: a content digest in the metadata
_TENSORS = ("timesteps", "trajectory", "null_embeddings", "cond_embedding")


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


class InversionCache:
    """A folder of cached inversions.

    Args:
        root: the cache folder (created on first write).

    Attributes:
        hits / misses: lookups answered from disk / computed, since construction.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0
        self.writable = True

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str) -> Inversion | None:
        """The cached inversion for ``key``, or None when absent or unusable (then the entry is removed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("key") != key:
                    raise ValueError("entry belongs to another key")
                tensors = {name: handle.get_tensor(name) for name in _TENSORS}
            if metadata.get("digest") != _digest(tensors):
                raise ValueError("its content does not match its digest")
            n_steps = len(tensors["timesteps"])
            if len(tensors["trajectory"]) != n_steps + 1 or len(tensors["null_embeddings"]) != n_steps:
                raise ValueError("tensor lengths disagree")
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed
            log.warning("inversion cache entry %s is unusable (%s); recomputing it", path.name, err)
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only cache: the entry stays, and is checked (and skipped) again next time
            return None
        return Inversion(**tensors, from_cache=True)

    def save(self, key: str, inversion: Inversion) -> None:
        """Write atomically: a temporary file in the same folder, then ``os.replace``. The cache is an optimisation:
        a folder that cannot be written (read-only, full, a file) disables it with one warning."""
        if not self.writable:
            return
        path = self.path(key)
        tensors = {name: getattr(inversion, name).detach().cpu().contiguous() for name in _TENSORS}
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(handle)
            save_file(tensors, tmp, metadata={"key": key, "format": _FORMAT, "digest": _digest(tensors)})
            os.replace(tmp, path)
        except OSError as err:
            self.writable = False
            log.warning("inversion cache %s cannot be written (%s); continuing without caching", self.root, err)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for name in _TENSORS:
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def invert_cached(
    c: SDComponents, image: torch.Tensor, prompt: str, config: InversionConfig, cache: InversionCache | None
) -> Inversion:
    """:func:`~magicremover.inversion.core.invert`, answered from ``cache`` when possible (zero UNet calls)."""
    if cache is None:
        return _finite(invert(c, image, prompt, config))
    key = cache_key(c.identity, image, prompt, config)
    cached = cache.load(key)
    if cached is not None:
        cache.hits += 1
        return _to_device(cached, c.device)
    cache.misses += 1
    inversion = _finite(invert(c, image, prompt, config))  # a non-finite inversion is never cached
    cache.save(key, inversion)
    return inversion


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
