"""The toy world: synthetic scenes with ground truth, and the tiny text-to-image model trained on them."""

from importlib import resources
from pathlib import Path


def toy_model_dir() -> Path:
    """The trained toy model shipped inside the package (a diffusers folder)."""
    return Path(str(resources.files("magicremover.assets").joinpath("toy")))


def load_toy(device: str = "auto", dtype: str = "float32"):
    """The embedded toy model, through the same loader as ``model=sd15 model.path=...``."""
    from magicremover.models import load_pretrained

    return load_pretrained(path=str(toy_model_dir()), device=device, dtype=dtype)
