"""Shared fixtures. The environment is forced offline before transformers/diffusers are imported."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-thread torch collapses ~40x when the other core is busy

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny():
    """The tiny random SD-architecture model (built once; tests must leave it as they found it)."""
    from magicremover.models import build_tiny

    return build_tiny(seed=0, device="cpu")


@pytest.fixture(scope="session")
def example_image() -> Image.Image:
    from experiments.remove import example_image

    return Image.open(example_image()).convert("RGB")


@pytest.fixture
def image_tensor(tiny, example_image) -> torch.Tensor:
    from magicremover.images import fit_to_model

    return fit_to_model(example_image, tiny.resolution)
