"""Write ``conf/signature/<target>.yaml``: the defaults of every ``_target_`` the configs name, read from the code.

A preset lists its target's signature node first in its defaults, so each default is written once (in the code) and
every key stays overridable from the command line. The tests fail when a signature file is stale; rerun this after
changing a default::

    python -m magicremover.experiments.signatures
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from magicremover.config import CONFIG_DIR, SIGNATURE_GROUP, signature_defaults

TARGET = re.compile(r"^\s*_target_:\s*(magicremover\.[\w.]+)\s*$", re.MULTILINE)
LISTED = re.compile(rf"^\s*-\s*/{SIGNATURE_GROUP}/(magicremover\.[\w.]+)@", re.MULTILINE)  # a defaults entry


def named_targets(conf: Path) -> list[str]:
    """Every ``magicremover.*`` ``_target_`` in the YAML files under ``conf``, and every callable whose signature a
    defaults list names (a node without ``_target_`` built by the code, e.g. ``paste``)."""
    files = [p for p in conf.rglob("*.yaml") if SIGNATURE_GROUP not in p.relative_to(conf).parts]
    texts = [path.read_text() for path in files]
    return sorted({target for text in texts for pattern in (TARGET, LISTED) for target in pattern.findall(text)})


def _flow(value) -> str:
    """One value as a YAML line holds it: a scalar, or a list in flow style."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def signature_yaml(target: str) -> str:
    """The signature node of ``target`` as YAML text, with a header naming where it comes from."""
    defaults = signature_defaults(target)
    body = "".join(f"{key}: {_flow(value)}\n" for key, value in defaults.items())
    header = (
        f"# Generated from the signature of {target} by python -m magicremover.experiments.signatures; do not edit.\n"
        "# The defaults live in the code: change them there and rerun the command.\n"
    )
    return header + (body or "{}\n")


def expected_files(conf: Path) -> dict[Path, str]:
    return {conf / SIGNATURE_GROUP / f"{target}.yaml": signature_yaml(target) for target in named_targets(conf)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", type=Path, default=CONFIG_DIR, help="the conf/ folder to write into")
    conf = parser.parse_args(argv).conf
    expected = expected_files(conf)
    for stale in set((conf / SIGNATURE_GROUP).glob("*.yaml")) - set(expected):
        stale.unlink()
    for path, text in expected.items():
        path.parent.mkdir(exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print("wrote", path)


if __name__ == "__main__":
    main()
