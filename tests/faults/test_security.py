"""Sample ids are data, not paths; secrets stay out of what is written and logged; downloads are https."""

from pathlib import Path

import pytest
import yaml

from magicremover.baselines.lama import resolve_weights
from magicremover.config import compose_config
from magicremover.errors import ConfigError, ModelLoadError
from magicremover.eval.folder import FolderDataset
from magicremover.eval.manifest import check_sample_id, check_unique
from magicremover.eval.redact import loggable_config
from magicremover.experiments import evaluate as ev
from magicremover.secrets import redact, redact_url

SECRET_URL = "https://user:hunter2@host.example/big-lama.pt?token=abc123&v=2"


@pytest.mark.parametrize("bad", ["../../escape", "/abs/x", "sub/x", ".hidden", "a b", "", "x" * 201, "é"])
def test_unsafe_ids_are_refused_naming_the_line(benchmark_folder, bad):
    root = benchmark_folder(["first", bad])
    with pytest.raises(ConfigError, match=r"prompts.jsonl line 2: sample id .* is not a safe file name"):
        FolderDataset(str(root))
    assert not (root.parent / "escape.png").exists() and not list(root.parent.parent.glob("escape*"))


def test_safe_ids_pass_and_numbers_become_names(benchmark_folder):
    root = benchmark_folder(["coco000000000139_1", "img-2.v1", 12])
    assert FolderDataset(str(root)).ids == ["coco000000000139_1", "img-2.v1", "12"]
    assert check_sample_id("a_B-3.c", "here") == "a_B-3.c"


def test_duplicate_ids_are_refused_up_front(benchmark_folder):
    with pytest.raises(ConfigError, match="sample ids must be unique, but 'same' repeat"):
        FolderDataset(str(benchmark_folder(["same", "other", "same"])))
    with pytest.raises(ConfigError, match="data=x: sample ids must be unique"):
        check_unique(["a", "b", "a"], "data=x")


def test_urls_and_secret_keys_are_redacted():
    assert redact_url(SECRET_URL) == "https://***@host.example/big-lama.pt?token=***&v=***"
    assert redact_url("/models/big-lama.pt") == "/models/big-lama.pt"
    assert redact_url("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    config = {"api_key": "k", "wandb": {"token": "t", "tokenizer": "bert"}, "paths": ["s3://a:b@bucket/x"], "n": 3}
    assert redact(config) == {
        "api_key": "***",
        "wandb": {"token": "***", "tokenizer": "bert"},
        "paths": ["s3://***@bucket/x"],
        "n": 3,
    }


def test_only_used_weights_are_logged_and_never_their_secrets(monkeypatch):
    monkeypatch.setenv("MAGICREMOVER_LAMA", SECRET_URL)
    logged = loggable_config(compose_config("evaluate", []))  # MagicRemover on toy data: no LaMa, no extractor
    assert logged["weights"] == {} and "hunter2" not in str(logged)
    lama = loggable_config(compose_config("evaluate", ["method=lama"]))
    assert lama["weights"]["lama"] == "https://***@host.example/big-lama.pt?token=***&v=***"
    assert "hunter2" not in str(lama) and "abc123" not in str(lama)


def test_config_yaml_of_a_run_holds_no_secret(config, monkeypatch):
    monkeypatch.setenv("MAGICREMOVER_LAMA", SECRET_URL)
    monkeypatch.setenv("MAGICREMOVER_CLIP", "https://me:pw@hub.example/clip?sig=xyz")
    cfg = config("data.size=1", "num_inference_steps=2")
    ev.evaluate(cfg, Path(cfg.out_dir))
    written = (Path(cfg.out_dir) / "config.yaml").read_text() + (Path(cfg.out_dir) / "run.json").read_text()
    assert "hunter2" not in written and "abc123" not in written and "pw@" not in written
    assert yaml.safe_load((Path(cfg.out_dir) / "config.yaml").read_text())["weights"] == {}


def test_downloads_must_be_https_unless_allowed(tmp_path):
    with pytest.raises(ModelLoadError, match=r"weights.lama=http://\*\*\*@host/x.pt is not https"):
        resolve_weights("http://u:p@host/x.pt", tmp_path)
    (tmp_path / "x.pt").write_bytes(b"cached")  # with the opt-in, an earlier download is used as for https
    assert resolve_weights("http://host/x.pt", tmp_path, allow_http=True) == tmp_path / "x.pt"
