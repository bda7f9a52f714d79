"""Nothing lost: one writer per manifest, unique temporary names, torn lines repaired, full disks reported in one line
with no partial file, a broken cache degraded to no cache, and kill -9 at any point resumed exactly."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from magicremover.errors import ConfigError, StorageError
from magicremover.eval.manifest import ManifestWriter
from magicremover.eval.run_guard import prepare_out_dir
from magicremover.experiments import evaluate as ev
from magicremover.inversion import InversionCache, InversionConfig, invert_cached
from magicremover.outputs import save_image

ROOT = Path(__file__).resolve().parents[2]
ENV = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=ROOT, **kwargs)


def test_a_second_writer_is_refused_naming_the_holder(config):
    cfg = config()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True)
    holder = _python(
        "import sys, time\nfrom magicremover.eval.manifest import ManifestWriter\n"
        f"with ManifestWriter(__import__('pathlib').Path({str(out / 'manifest.jsonl')!r})):\n"
        "    print('locked', flush=True)\n    time.sleep(600)\n",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"another evaluation \\(pid {holder.pid}\\) is writing .*manifest.jsonl"):
            ev.evaluate(cfg, out)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert ev.evaluate(cfg, out)["ok"] == 2  # a dead holder's lock is gone with it


def test_concurrent_writes_of_one_file_never_collide(tmp_path):
    target, errors = tmp_path / "out.png", []

    def write(colour):
        try:
            for _ in range(40):
                save_image(Image.new("RGB", (8, 8), colour), target)
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=write, args=(colour,)) for colour in ("red", "blue", "green")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and Image.open(target).size == (8, 8) and [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_orphaned_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    (tmp_path / "outputs").mkdir()
    orphan = tmp_path / "outputs" / f".tmp-{host}-{dead.stdout.strip()}-abc.png"
    alive = tmp_path / "outputs" / f".tmp-{host}-{os.getpid()}-def.png"
    for path in (orphan, alive):
        path.write_bytes(b"partial")
    prepare_out_dir(tmp_path)
    assert not orphan.exists() and alive.exists()


def test_a_torn_last_line_is_repaired_not_glued_to_the_next(config):
    cfg = config("data.size=3")
    out = Path(cfg.out_dir)
    ev.evaluate(config("data.size=1"), out)
    manifest = out / "manifest.jsonl"
    manifest.write_bytes(manifest.read_bytes() + b'{"sample_id": "torn", "sta')  # a full disk mid-line
    ev.evaluate(cfg, out)
    lines = manifest.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["status"] == "ok" for line in lines)
    assert json.loads((out / "metrics.json").read_text())["ok"] == 3


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    code = (
        "import resource\nfrom pathlib import Path\nfrom magicremover.outputs import atomic_write\n"
        "from magicremover.errors import StorageError\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        f"    atomic_write(Path({str(tmp_path / 'big.bin')!r}), b'x' * 100_000)\n"
        "except StorageError as err:\n    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.startswith(f"cannot write {tmp_path / 'big.bin'} (File too large)") and done.stdout.count("\n") == 1
    )
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_a_full_disk_mid_run_stops_with_finished_samples_kept(config, monkeypatch):
    cfg = config("data.size=3", "grid_samples=0")  # 4 files per sample: output, reconstruction, attention, mask
    real, writes = ev.save_image, []

    def filling(image, path):
        writes.append(path)
        if len(writes) > 4:  # the second sample's files no longer fit
            raise StorageError(f"cannot write {path} (No space left on device); free space or choose another folder")
        real(image, path)

    monkeypatch.setattr(ev, "save_image", filling)
    with pytest.raises(StorageError, match=r"cannot write .*/outputs/.*\.png \(No space left on device\)"):
        ev.evaluate(cfg, Path(cfg.out_dir))
    lines = (Path(cfg.out_dir) / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["ok"]
    monkeypatch.undo()
    assert ev.evaluate(cfg, Path(cfg.out_dir))["ok"] == 3  # the rerun finishes what is missing


def test_manifest_lines_are_whole_or_absent(tmp_path, monkeypatch):
    with ManifestWriter(tmp_path / "manifest.jsonl") as writer:
        writer.append({"sample_id": "a", "status": "ok"})
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
        with pytest.raises(OSError):
            writer.append({"sample_id": "b", "status": "ok"})
    assert (tmp_path / "manifest.jsonl").read_text() == '{"sample_id": "a", "status": "ok"}\n'


def test_a_broken_cache_is_skipped_with_a_warning(config, tmp_path, caplog):
    (tmp_path / "cache_file").write_text("a file where the cache folder should be")
    cfg = config(f"cache_dir={tmp_path / 'cache_file'}")
    assert ev.evaluate(cfg, Path(cfg.out_dir))["ok"] == 2
    assert "cannot be written" in caplog.text and "continuing without caching" in caplog.text


def test_a_full_cache_and_an_undeletable_entry_are_not_failures(tiny, image_tensor, tmp_path, monkeypatch):
    import magicremover.inversion.cache as cache_module

    config = InversionConfig(method="negative_prompt", num_inference_steps=4)
    full = InversionCache(tmp_path / "full")
    monkeypatch.setattr(cache_module, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    assert not invert_cached(tiny, image_tensor, "a photo of a dog", config, full).from_cache
    assert not full.writable and not list((tmp_path / "full").rglob("*.safetensors"))
    monkeypatch.undo()
    cache = InversionCache(tmp_path / "ro")
    invert_cached(tiny, image_tensor, "a photo of a dog", config, cache)
    (entry,) = (tmp_path / "ro").rglob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:-10])  # corrupt, in a cache we may not delete from
    real_unlink = Path.unlink

    def refuse(self, missing_ok=False):
        if self == entry:
            raise PermissionError(errno.EACCES, "read-only cache")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    assert not invert_cached(tiny, image_tensor, "a photo of a dog", config, InversionCache(tmp_path / "ro")).from_cache


def _evaluate_cli(out: Path, cache: Path) -> subprocess.Popen:
    args = [
        f"out_dir={out}",
        f"cache_dir={cache}",
        "data.size=3",
        "device=cpu",
        "num_inference_steps=4",
        "inversion=negative_prompt",
        f"hydra.run.dir={out.parent / 'hydra'}",
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "magicremover.experiments.evaluate", *args],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("reference")
    reference = _evaluate_cli(root / "run", root / "cache")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    return json.loads((root / "run" / "metrics.json").read_text())


@pytest.mark.parametrize(
    "kill_after", [1, pytest.param(0, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
)  # finished samples when the kill lands
def test_kill_9_at_any_point_resumes_to_the_same_metrics(tmp_path, kill_after, uninterrupted):
    out = tmp_path / "killed"
    victim = _evaluate_cli(out, tmp_path / "cache")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None:
        manifest = out / "manifest.jsonl"
        if manifest.is_file() and len(manifest.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    resumed = _evaluate_cli(out, tmp_path / "cache")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    ids = [json.loads(line)["sample_id"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 3  # every sample exactly once
    metrics = json.loads((out / "metrics.json").read_text())
    # Inversions cached before the kill are not paid twice, so the cost counts may be lower than uninterrupted.
    cost = {"inversions", "unet_calls_per_sample", "forward_equivalents_per_sample"}
    assert {k: v for k, v in metrics.items() if k not in cost} == {
        k: v for k, v in uninterrupted.items() if k not in cost
    }
    assert metrics["forward_equivalents_per_sample"] <= uninterrupted["forward_equivalents_per_sample"]
    assert not list(out.rglob(".tmp-*"))
