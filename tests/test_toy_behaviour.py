"""Removal on the trained toy model, against ground truth, on held-out scenes (a handful, 20 DDIM steps).

Measured when the model was committed (20 steps, null-text inversion, the scenes below) — see the model card
(magicremover/assets/toy/README.md) for the 50-scene, 50-step figures.
"""

import numpy as np
import pytest

from baselines.p2p import PromptToPrompt
from magicremover.inversion import InversionConfig
from magicremover.method import MagicRemover
from magicremover.toy import load_toy
from magicremover.toy.quality import held_out_cases, removal_metrics, to_uint8

STEPS = 20


@pytest.fixture(scope="module")
def toy():
    return load_toy(device="cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("toy_inversions")


def _scores(remover, cases):
    rows = [removal_metrics(case, to_uint8(remover(case.sample).image)) for case in cases]
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


@pytest.fixture(scope="module")
def plain_cases():
    return held_out_cases(4)


@pytest.fixture(scope="module")
def default_scores(toy, cache, plain_cases):
    return _scores(MagicRemover(toy, InversionConfig(num_inference_steps=STEPS), cache_dir=cache), plain_cases)
