"""Half precision, which every GPU user runs (``model.dtype=auto`` is float16 on CUDA): the method with guided steps,
null-text inversion and classifier optimisation, P2P and the harness, in float16 and bfloat16 on the CPU.

Figures on the tiny model (6 steps, 3 null-text iterations), mean / max absolute difference from float32 in [0, 1]
pixels: float16 0.003 / 0.04 (MagicRemover) and 0.05 max (P2P); bfloat16 0.02 / 0.47 and 0.26 max (8 mantissa bits).
The paper's numbers were computed in float32, which the artefact commands set.
"""

from pathlib import Path

import pytest
import torch

from magicremover.baselines.p2p import PromptToPrompt
from magicremover.experiments import evaluate as ev
from magicremover.inversion import InversionConfig, invert_cached
from magicremover.method import MagicRemover
from magicremover.tiny import build_tiny
from magicremover.types import RemovalSample

INVERSION = InversionConfig(method="null_text", num_inference_steps=4, inner_steps=2)
TOLERANCE = {"float16": 0.01, "bfloat16": 0.05}  # mean absolute difference from float32


@pytest.fixture(scope="module")
def float32_results(example_image):
    c = build_tiny(seed=0, device="cpu")
    sample = RemovalSample(example_image, "a photo of a red circle on horizontal stripes", "red circle")
    return sample, MagicRemover(c, INVERSION)(sample), PromptToPrompt(c, INVERSION)(sample)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_method_and_p2p_in_half_precision(dtype, float32_results, image_tensor):
    sample, method32, p2p32 = float32_results
    c = build_tiny(seed=0, device="cpu", dtype=dtype)
    method = MagicRemover(c, INVERSION)(sample)
    assert method.extras["optimization_steps"] > 0 and method.extras["guided_steps"] > 0
    assert method.extras["dtype"] == dtype and method32.extras["dtype"] == "float32"
    p2p = PromptToPrompt(c, INVERSION)(sample)
    for half, full in ((method, method32), (p2p, p2p32)):
        assert torch.isfinite(half.image).all() and half.image.dtype == torch.float32
        assert (half.image - full.image).abs().mean() < TOLERANCE[dtype]
    inversion = invert_cached(c, image_tensor, sample.prompt, INVERSION, None)
    assert inversion.null_embeddings.dtype == torch.float32 and inversion.trajectory.dtype == torch.float32


def test_the_harness_records_the_precision(config):
    cfg = config("data.size=1", "model=tiny", "model.dtype=bfloat16")
    assert ev.evaluate(cfg, Path(cfg.out_dir))["ok"] == 1
    (record,) = ev.read_manifests(Path(cfg.out_dir)).values()
    assert record["status"] == "ok" and record["extras"]["dtype"] == "bfloat16"
