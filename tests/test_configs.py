"""The configs' shared keys have one source, and every cache follows ``MAGICREMOVER_CACHE``."""

from pathlib import Path

import yaml

from magicremover.config import CONFIG_DIR, compose_config
from magicremover.outputs import cache_root

SHARED = yaml.safe_load((CONFIG_DIR / "shared.yaml").read_text())


def test_the_entry_points_share_one_source_for_their_common_keys():
    for root in ("remove", "evaluate", "app"):
        own = yaml.safe_load((CONFIG_DIR / f"{root}.yaml").read_text())
        assert own["defaults"][0] == "shared", root
        assert not set(own) & (set(SHARED) - {"hydra"}), f"{root}.yaml repeats keys of shared.yaml"
        assert "run" not in own.get("hydra", {}), f"{root}.yaml has its own hydra.run"
        cfg = compose_config(root, ["seed=3", "num_inference_steps=7"])
        assert (cfg.seed, cfg.num_inference_steps, cfg.guidance_scale, cfg.device) == (3, 7, 7.5, "auto")
        assert cfg.inversion.num_inference_steps == 7 and cfg.inversion.seed == 3  # interpolated from the shared keys


def test_every_cache_follows_magicremover_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MAGICREMOVER_CACHE", str(tmp_path))
    for root in ("remove", "evaluate", "app"):
        assert Path(compose_config(root, []).cache_dir) == tmp_path / "inversions"
    # LaMa downloads a URL into cache_root()/lama, its own default, which no preset restates.
    assert compose_config("remove", ["method=lama"]).method.cache_dir is None
    assert compose_config("remove", ["method=attn_lama"]).method.lama.cache_dir is None
    assert cache_root() == tmp_path == Path(compose_config("remove", []).cache_root)
