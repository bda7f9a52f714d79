"""Packaging that pyproject.toml cannot express: the repository's top-level folders ship inside one import name.

``conf/`` becomes ``magicremover/conf`` (where ``magicremover.config`` looks first), and the harness folders
``baselines/``, ``eval/`` and ``experiments/`` become ``magicremover.baselines``, ``magicremover.eval`` and
``magicremover.experiments``: an installed wheel adds exactly one top-level name, so it cannot shadow a research
project's own ``experiments`` or ``eval`` package. An editable install maps the same names onto the checkout's folders.
"""

from setuptools import find_packages, setup

HARNESS = ("baselines", "eval", "experiments")

setup(
    packages=[
        *find_packages(include=["magicremover", "magicremover.*"]),
        *(f"magicremover.{name}" for name in find_packages(include=[f"{h}*" for h in HARNESS])),
        "magicremover.conf",
    ],
    package_dir={"magicremover.conf": "conf", **{f"magicremover.{h}": h for h in HARNESS}},
    package_data={"magicremover": ["assets/*", "assets/**/*"], "magicremover.conf": ["*.yaml", "**/*.yaml"]},
)
