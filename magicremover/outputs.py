"""Writing results: images and records written atomically, orphaned temporary files swept, heat maps."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from magicremover.errors import StorageError
from magicremover.images import to_pil

_TEMP = ".tmp-"


def cache_root() -> Path:
    """Where magicremover keeps what it computes or downloads (inversions, weights fetched from a URL):
    ``$MAGICREMOVER_CACHE``, else ``~/.cache/magicremover``. The configs' ``cache_root`` reads it too."""
    return Path(os.environ.get("MAGICREMOVER_CACHE") or "~/.cache/magicremover").expanduser()


def _temp_prefix() -> str:
    """Temporary names carry host and pid, so concurrent writers never collide and orphans can be told apart."""
    return f"{_TEMP}{socket.gethostname()}-{os.getpid()}-"


def temp_file(folder: Path, suffix: str = "") -> tuple[int, str]:
    """A new, uniquely named file in ``folder`` (its name carries host and pid), open for writing: ``(fd, path)``.
    Created with the permissions the umask gives any new file, as ``open`` would (``tempfile.mkstemp`` gives 0600,
    which hides results from the others of a shared project folder)."""
    while True:
        path = Path(folder) / f"{_temp_prefix()}{os.urandom(6).hex()}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(path)
        except FileExistsError:
            continue


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a unique temporary file and a rename: readers see the old file or the new one,
    and a failed write (a full disk) leaves no file under the final name.

    Raises:
        StorageError: the file cannot be written (one line, naming the path).
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = temp_file(path.parent, path.suffix)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise StorageError(f"cannot write {path} ({err.strerror or err}); free space or choose another folder") from err
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def save_image(image: torch.Tensor | Image.Image, path: Path) -> None:
    """Save an image ``(1, 3, H, W)`` / ``(1, 1, H, W)`` in [0, 1] (or a PIL image, with the ICC profile and EXIF its
    ``info`` holds) as PNG, atomically."""
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    buffer = io.BytesIO()
    kept = {key: pil.info[key] for key in ("icc_profile", "exif") if pil.info.get(key)}
    pil.save(buffer, format="PNG", **kept)
    atomic_write(path, buffer.getvalue())


def remove_orphans(folder: Path) -> int:
    """Delete temporary files left under ``folder`` by killed writers of this host (their pid no longer runs).
    Returns how many were removed."""
    prefix, removed = f"{_TEMP}{socket.gethostname()}-", 0
    for path in Path(folder).rglob(f"{prefix}*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def heatmap(attention: torch.Tensor, image: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """Overlay a soft map ``(1, 1, h, w)`` in [0, 1] on an image ``(1, 3, H, W)`` as a red-yellow heat map."""
    a = F.interpolate(attention.float().cpu(), size=image.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
    colour = torch.cat([torch.ones_like(a), a, torch.zeros_like(a)], dim=1)  # black-body ramp: red → yellow
    weight = alpha * a
    return (1 - weight) * image.float().cpu() + weight * colour


def jsonable(value):
    """``json.dumps(..., default=jsonable)``: numpy scalars and tensors as lists, paths as strings."""
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
