"""Each default is written once: in the code (a ``_target_``'s signature, or its ``settings_type``), mirrored into
``conf/signature/`` by a generator this file checks. A preset lists its target's signature first, binds keys to shared
knobs (``${seed}``) and changes others only with a comment saying why; a key restating its default, or changing it
silently, fails here with the file and line."""

from pathlib import Path

import pytest
import yaml

from magicremover.config import SIGNATURE_GROUP, compose_config, signature_defaults
from magicremover.experiments.signatures import expected_files

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
HARNESS_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def preset_files() -> list[Path]:
    return sorted(p for p in CONF.rglob("*.yaml") if SIGNATURE_GROUP not in p.relative_to(CONF).parts)


def target_nodes(node, found=None):
    """Every mapping node of a composed YAML tree whose ``_target_`` is ours, top-level first."""
    found = [] if found is None else found
    if isinstance(node, yaml.MappingNode):
        keys = {key.value: value for key, value in node.value}
        target = keys.get("_target_")
        if isinstance(target, yaml.ScalarNode) and target.value.startswith("magicremover."):
            found.append(node)
        for _, value in node.value:
            target_nodes(value, found)
    elif isinstance(node, yaml.SequenceNode):
        for value in node.value:
            target_nodes(value, found)
    return found


def problems_in(path: Path) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    problems = []
    for node in target_nodes(yaml.compose(text)):
        target = next(value.value for key, value in node.value if key.value == "_target_")
        defaults = signature_defaults(target)
        for key, value in node.value:
            if (
                key.value in HARNESS_KEYS
                or key.value not in defaults
                or not isinstance(value, yaml.ScalarNode | yaml.SequenceNode)
            ):
                continue
            loaded = yaml.safe_load(yaml.serialize(value))
            if isinstance(loaded, str) and "${" in loaded:
                continue  # bound to a shared knob: the preset's own business
            where = f"{path.relative_to(ROOT)}:{key.start_mark.line + 1} {key.value}"
            if loaded == defaults[key.value]:
                problems.append(f"{where} restates {target}'s default {loaded!r}: delete it")
            elif "#" not in lines[value.end_mark.line][value.end_mark.column :]:
                problems.append(
                    f"{where}: {loaded!r} differs from {target}'s {defaults[key.value]!r} without a comment"
                )
    return problems


def test_the_signature_files_are_generated_from_the_code():
    expected = expected_files(CONF)
    actual = set((CONF / SIGNATURE_GROUP).glob("*.yaml"))
    stale = sorted(
        str(p.relative_to(ROOT))
        for p in actual ^ set(expected) | {p for p in actual & set(expected) if p.read_text() != expected[p]}
    )
    assert not stale, f"{stale} out of date: run python -m magicremover.experiments.signatures"


def test_no_preset_restates_a_default_or_changes_one_silently():
    problems = [problem for path in preset_files() for problem in problems_in(path)]
    assert not problems, "\n".join(problems)


def test_every_group_preset_starts_from_its_targets_signature():
    missing = []
    for path in preset_files():
        tree = yaml.safe_load(path.read_text()) or {}
        target = tree.get("_target_", "")
        if target.startswith("magicremover.") and "@package _global_" not in path.read_text():
            if f"/{SIGNATURE_GROUP}/{target}@_here_" not in (tree.get("defaults") or []):
                missing.append(f"{path.relative_to(ROOT)}: defaults lacks /{SIGNATURE_GROUP}/{target}@_here_")
    assert not missing, "\n".join(missing)


def test_the_checker_finds_a_restated_and_a_silent_default(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "_target_: magicremover.baselines.sd_inpaint.SDInpaint\n"
        "strength: 1.0\n"  # the signature's own
        "mask_dilation: 7\n"  # changed, no reason given
        "guidance_scale: 5.0   # a reason\n"
        "seed: ${seed}\n"
    )
    found = problems_in(preset)
    assert len(found) == 2 and "strength restates" in found[0] and "mask_dilation: 7 differs" in found[1], found


@pytest.mark.parametrize("key", ["method.strength=0.5", "method.mask_blur=0", "data.mask_dilation=10"])
def test_a_default_that_no_preset_writes_can_still_be_overridden(key):
    method = "attentive_eraser" if "strength" in key or "blur" in key else "magicremover"
    cfg = compose_config("evaluate", [f"method={method}", "data=coco", key])
    group, name = key.split("=")[0].split(".")
    assert str(cfg[group][name]) == key.split("=")[1]
