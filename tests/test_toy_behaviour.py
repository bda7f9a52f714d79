"""Removal on the trained toy model against ground truth, on a few held-out scenes at the model card's 50 DDIM steps.

Each check is on the median over three scenes (the first three held-out cases of each kind), so one failed scene
cannot carry a figure either way. The first held-out scene is such a failure: its shadowed blue circle (beside a
yellow circle) gains only 2.9 dB inside (the model card's 50-scene means include it).

Measured for the model card (1 thread, these scenes, medians): the default preset gains +13.4 dB inside the object's
mask (with its shadow) against the ground truth and keeps 30.9 dB outside against the input; P2P reweight reaches
14.9 dB inside (ours 25.0) and 25.1 dB outside. Glass discs +13.4 dB (30.9 dB outside), shadowed objects +14.5 dB
(31.7 dB outside). The fast preset (negative-prompt inversion without classifier optimisation, 143 UNet calls instead
of 742): +15.8 dB inside, 30.8 dB outside.
"""

import shutil

import numpy as np
import pytest
import toy_inversions

from magicremover.config import build_remover, compose_config
from magicremover.toy.quality import held_out_cases, removal_metrics, to_uint8


@pytest.fixture(scope="module")
def run(toy, tmp_path_factory):
    # The scenes' null-text inversions come from the committed cache (tests/toy_inversions.py), copied so runs can add.
    cache = tmp_path_factory.mktemp("toy") / "inversions"
    shutil.copytree(toy_inversions.COMMITTED, cache)
    done = {}  # (preset, scenes) → medians: a preset is run once per set of scenes in this module

    def scores(preset, cases):
        """Median per metric over ``cases``; ``gain`` = PSNR inside the mask vs the ground truth, output − input."""
        key = (preset, tuple(case.scene.seed for case in cases))
        if key not in done:
            cfg = compose_config(
                "remove", [f"method={preset}", f"cache_dir={cache}", "device=cpu", "num_inference_steps=50"]
            )
            remover = build_remover(cfg, toy)
            rows = [removal_metrics(case, to_uint8(remover(case.sample).image)) for case in cases]
            for row in rows:
                row["gain"] = row["psnr_in_vs_gt"] - row["psnr_in_input_vs_gt"]
            done[key] = {name: float(np.median([row[name] for row in rows])) for name in rows[0]}
        return done[key]

    return scores


def test_removal_restores_the_background_and_keeps_the_rest(run):
    scores = run("magicremover", held_out_cases(3))
    assert scores["gain"] >= 6.0, scores  # the model card's gate
    assert scores["psnr_out_vs_input"] >= 27.0, scores


def test_magicremover_beats_p2p_reweight_on_the_same_scenes(run):
    cases = held_out_cases(3)
    ours, p2p = run("magicremover", cases), run("p2p_reweight", cases)
    assert ours["psnr_in_vs_gt"] > p2p["psnr_in_vs_gt"] + 2.0, (ours, p2p)
    assert ours["psnr_out_vs_input"] > p2p["psnr_out_vs_input"] + 2.0, (ours, p2p)


@pytest.mark.parametrize(
    "kind", [pytest.param("glass", marks=pytest.mark.slow), pytest.param("shadow", marks=pytest.mark.slow)]
)  # 50–70 s each; the opaque objects run by default
def test_glass_discs_and_shadows_are_removed_too(run, kind):
    scores = run("magicremover", held_out_cases(3, kind=kind))
    assert scores["gain"] >= 6.0, (kind, scores)
    assert scores["psnr_out_vs_input"] >= 27.0, (kind, scores)


@pytest.mark.slow  # 30 s; test_costs.py checks the fast preset's output by default
def test_the_fast_preset_removes_nearly_as_well_as_the_default(run):
    cases = held_out_cases(3)
    fast, default = run("magicremover_fast", cases), run("magicremover", cases)
    # Measured on these scenes (medians): fast +15.8 dB inside, 30.8 dB outside; default +13.4 dB, 30.9 dB. On the
    # 50 scenes of the model card the fast preset is 0.2 dB behind inside (mean) and 0.6 dB closer to the VAE outside.
    assert fast["gain"] >= 6.0 and fast["psnr_out_vs_input"] >= 27.0, fast
    assert fast["gain"] >= default["gain"] - 3.0 and fast["psnr_out_vs_input"] >= default["psnr_out_vs_input"] - 1.0


def test_the_committed_inversions_are_keyed_as_todays_code_keys_them(toy):
    """A stale key would only make the tests slow again; it fails here instead, naming the rebuild command."""
    method = toy_inversions.remover(toy, toy_inversions.COMMITTED)
    for kind, cases in toy_inversions.behaviour_cases().items():
        for case in cases:
            key = toy_inversions.entry_key(method, case)
            assert method.cache.path(key).is_file(), f"no committed inversion for {kind} scene {case.scene.seed}: " + (
                "run python tests/toy_inversions.py"
            )


@pytest.mark.slow
def test_the_committed_inversions_are_what_todays_code_computes(toy, tmp_path):
    # A fresh cache, so both sides are the stored (compacted) form the tests read.
    cached, fresh = toy_inversions.remover(toy, toy_inversions.COMMITTED), toy_inversions.remover(toy, tmp_path)
    seen = set()
    for case in sum(toy_inversions.behaviour_cases().values(), []):
        if case.scene.seed in seen:
            continue
        seen.add(case.scene.seed)
        image = cached.fit(case.sample)[1]
        stored, computed = cached.invert(case.sample, image), fresh.invert(case.sample, image)
        assert stored.from_cache and not computed.from_cache
        # Bitwise on the machine that built them; another CPU's kernels differ at float noise (the text encoder by
        # 5e-7), which 50 chaotic null-text optimisations amplify to 4e-3–2.4e-2 in embeddings of magnitude ~4 (seen
        # on a second machine). The deterministic parts are held tight: a code change that makes the committed
        # files stale moves them by far more.
        limits = {"timesteps": 0, "cond_embedding": 1e-5, "null_embeddings": 0.1, "z_T": 1e-3}
        for name, limit in limits.items():
            difference = (getattr(stored, name).float() - getattr(computed, name).float()).abs().max().item()
            assert difference <= limit, (case.scene.seed, name, difference)
        assert (stored.trajectory[1] - computed.trajectory[1]).abs().max() <= 1e-4
