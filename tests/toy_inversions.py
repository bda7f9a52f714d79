"""The committed inversion cache of the toy-behaviour tests (``tests/data/toy_inversions``).

Null-text inversion is most of a default toy removal's cost (582 of its 742 UNet calls, each with a backward pass), and
the behaviour tests remove from the same nine held-out scenes every run. Their inversions are computed once, here,
and committed (~2 MB); the tests copy them into a temporary cache. ``test_toy_behaviour`` checks in the default suite
that every scene's entry exists under the key today's code computes (a changed key fails, naming this command), and
under ``-m slow`` that today's code recomputes each committed entry exactly. Rebuild after changing the inversion:

    python tests/toy_inversions.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

COMMITTED = Path(__file__).resolve().parent / "data" / "toy_inversions"
OVERRIDES = ["method=magicremover", "device=cpu", "num_inference_steps=50"]  # the default preset's inversion


def behaviour_cases() -> dict[str, list]:
    """The scenes the toy-behaviour tests remove from, by what they check."""
    from magicremover.toy.quality import held_out_cases

    return {
        "default": held_out_cases(3),
        "glass": held_out_cases(3, kind="glass"),
        "shadow": held_out_cases(3, kind="shadow"),
    }


def remover(toy, cache_dir: Path | None):
    """The default preset on the toy model, inverting into ``cache_dir``."""
    from magicremover.config import build_remover, compose_config

    cache = f"cache_dir={cache_dir}" if cache_dir is not None else "cache_dir=null"
    return build_remover(compose_config("remove", [*OVERRIDES, cache]), toy)


def entry_key(method, case) -> str:
    """The cache key today's code gives a case's inversion."""
    from magicremover.inversion.cache import cache_key

    _, image = method.fit(case.sample)
    return cache_key(method.components.identity, image, case.sample.prompt, method.inversion)


def build(out: Path = COMMITTED) -> None:
    from magicremover.toy import load_toy

    toy = load_toy("cpu")
    shutil.rmtree(out, ignore_errors=True)
    method = remover(toy, out)
    for kind, cases in behaviour_cases().items():
        for case in cases:
            method.invert(case.sample, method.fit(case.sample)[1])
            print(kind, case.scene.seed, entry_key(method, case)[:12], flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    build()
