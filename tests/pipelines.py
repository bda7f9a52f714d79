"""A full-size pipeline on an already loaded model, for the tests of the photo path."""

from magicremover import Pipeline
from magicremover.config import build_remover, compose_config


def pipeline(components, *overrides: str, method: str = "magicremover_fast") -> Pipeline:
    """``method`` on ``components`` (no inversion cache, CPU) with ``overrides`` of ``conf/remove.yaml``."""
    cfg = compose_config("remove", [f"method={method}", "cache_dir=null", "device=cpu", *overrides])
    return Pipeline(cfg, build_remover(cfg, components=components))
