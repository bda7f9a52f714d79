"""Removal on the trained toy model against ground truth, on a few held-out scenes at the model card's 50 DDIM steps.

Measured when the model was committed (1 thread, these scenes): the default preset lifted the PSNR inside the
object's mask (with its shadow) against the ground truth from 11.73 dB (the input) to 29.18 dB (+17.5 dB) and kept
29.0 dB outside it against the input; P2P reweight reached 13.59 dB inside and 24.7 dB outside. Glass discs
+13.6 dB (32.2 dB outside), shadowed objects +19.4 dB (28.1 dB outside). The model card has the 50-scene figures.
(At 20 steps this model removes shadows far less: +2.4 dB on the two shadow scenes, hence 50 steps here.)
"""

import numpy as np
import pytest

from experiments._cli import build_remover, compose_config
from magicremover.toy import load_toy
from magicremover.toy.quality import held_out_cases, removal_metrics, to_uint8


@pytest.fixture(scope="module")
def toy():
    return load_toy(device="cpu")


@pytest.fixture(scope="module")
def run(toy, tmp_path_factory):
    cache = tmp_path_factory.mktemp("toy_inversions")

    def scores(preset, cases):
        cfg = compose_config("remove", [f"method={preset}", f"cache_dir={cache}", "device=cpu", "num_inference_steps=50"])
        remover = build_remover(cfg, toy)
        rows = [removal_metrics(case, to_uint8(remover(case.sample).image)) for case in cases]
        return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}

    return scores


def _gain(scores):
    return scores["psnr_in_vs_gt"] - scores["psnr_in_input_vs_gt"]


def test_removal_restores_the_background_and_keeps_the_rest(run):
    scores = run("magicremover", held_out_cases(3))
    assert _gain(scores) >= 6.0, scores  # the model card's gate; measured +17.5 dB
    assert scores["psnr_out_vs_input"] >= 27.0, scores  # measured 29.0 dB


def test_magicremover_beats_p2p_reweight_on_the_same_scenes(run):
    cases = held_out_cases(3)
    ours, p2p = run("magicremover", cases), run("p2p_reweight", cases)
    assert ours["psnr_in_vs_gt"] > p2p["psnr_in_vs_gt"] + 2.0, (ours, p2p)  # measured 29.18 vs 13.59 dB
    assert ours["psnr_out_vs_input"] > p2p["psnr_out_vs_input"] + 2.0, (ours, p2p)  # measured 29.0 vs 24.7 dB


@pytest.mark.parametrize(("kind", "measured"), [("glass", 13.6), ("shadow", 19.4)])
def test_glass_discs_and_shadows_are_removed_too(run, kind, measured):
    scores = run("magicremover", held_out_cases(2, kind=kind))
    assert _gain(scores) >= 6.0, (kind, measured, scores)
    assert scores["psnr_out_vs_input"] >= 27.0, scores
