"""Packaging that pyproject.toml cannot express: the repository's top-level ``conf/`` ships inside the wheel as
``magicremover/conf`` (where ``magicremover.config`` looks first), so ``pip install .`` runs without a checkout."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["magicremover*", "baselines*", "eval*", "experiments*"]), "magicremover.conf"],
    package_dir={"magicremover.conf": "conf"},
    package_data={"magicremover": ["assets/*", "assets/**/*"], "magicremover.conf": ["*.yaml", "**/*.yaml"]},
)
