"""From a YAML preset to a remover: where the Hydra configs live, how they compose, and the method factory.

The repository's ``conf/`` folder is the source; a wheel carries a copy as ``magicremover/conf`` (``setup.py`` maps
it there), so every entry point and the API read the same configs whether the package was installed with
``pip install -e .`` (the checkout's ``conf/``) or ``pip install .`` (the packaged copy).

``method=NAME`` selects ``conf/method/NAME.yaml``; its ``_target_`` is the remover's class. A config with
``_partial_: true`` is a method that waits for a diffusion model: :func:`build_remover` instantiates it as a
partial and calls it with the loaded components (``cfg.model``, or components already loaded). A config without it
is a remover complete in itself (LaMa), built without loading any diffusion model.

Each knob's default lives once, in its dataclass (:class:`~magicremover.method.settings.Settings`,
:class:`~magicremover.inversion.InversionConfig`): importing this module registers them as the Hydra configs
``method/magicremover_settings`` and ``inversion/inversion_settings``, which ``conf/method/magicremover.yaml`` and
``conf/inversion/null_text.yaml`` list first in their defaults; presets and ablations override single keys.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from magicremover.errors import ConfigError
from magicremover.types import Remover

_PACKAGED = Path(__file__).resolve().parent / "conf"
_CHECKOUT = Path(__file__).resolve().parents[1] / "conf"
CONFIG_DIR = _PACKAGED if _PACKAGED.is_dir() else _CHECKOUT
"""The folder holding ``remove.yaml``, ``evaluate.yaml``, … (for ``@hydra.main(config_path=...)``)."""

# Keys every method config carries for the harness rather than as method settings.
_SHARED_METHOD_KEYS = ("_target_", "_partial_", "inversion", "resize", "cache_dir")


def dataclass_defaults(cls) -> dict:
    """A dataclass's field defaults as a plain config node (nested dataclasses, e.g. a ``Window``, as lists)."""
    values = {}
    for item in dataclasses.fields(cls):
        value = item.default
        values[item.name] = list(dataclasses.astuple(value)) if dataclasses.is_dataclass(value) else value
    return values


def _register_defaults() -> None:
    from hydra.core.config_store import ConfigStore

    from magicremover.inversion.core import InversionConfig
    from magicremover.method.settings import Settings

    store = ConfigStore.instance()
    store.store(group="method", name="magicremover_settings", node=dataclass_defaults(Settings))
    store.store(group="inversion", name="inversion_settings", node=dataclass_defaults(InversionConfig))


_register_defaults()


def config_dir() -> Path:
    """:data:`CONFIG_DIR`, checked.

    Raises:
        ConfigError: neither a packaged nor a checkout ``conf/`` exists (a broken install; one line naming the fix).
    """
    if not (CONFIG_DIR / "remove.yaml").is_file():
        raise ConfigError(
            f"no Hydra configs at {_PACKAGED} or {_CHECKOUT}; reinstall magicremover (pip install . or pip install -e .)"
        )
    return CONFIG_DIR


def compose_config(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed root config ``config_name`` (``remove``, ``evaluate``, ``app``, ``report``, ``train_toy``) with
    Hydra overrides, outside ``@hydra.main``. Inside an entry point (Hydra already initialised on the same
    configs), composes there."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides=list(overrides))
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name, overrides=list(overrides))


def waits_for_model(method_cfg: DictConfig) -> bool:
    """Whether a method config is a partial that needs the diffusion model's components to become a remover."""
    return bool(method_cfg.get("_partial_", False))


def build_remover(cfg: DictConfig, components=None) -> Remover:
    """The remover ``cfg.method`` describes. A method that waits for a diffusion model (see :func:`waits_for_model`)
    gets ``components``, or ``cfg.model`` loaded now; one that needs none (LaMa) loads none. Its inversion cache,
    if any, is capped at ``cfg.cache_max_gb``."""
    from hydra.utils import instantiate

    from magicremover.inversion.cache import cap_bytes

    max_bytes = cap_bytes(cfg.get("cache_max_gb"))  # shared by every method's cache, checked before any model loads
    method = instantiate(cfg.method)
    if not waits_for_model(cfg.method):
        return method
    remover = method(components=components if components is not None else instantiate(cfg.model))
    if getattr(remover, "cache", None) is not None:
        remover.cache.max_bytes = max_bytes
    return remover


def method_settings(preset: str, *overrides: str) -> dict:
    """The method keys of a preset (``conf/method/<preset>.yaml``), without the shared ones, as plain Python."""
    cfg = compose_config("remove", [f"method={preset}", *overrides])
    settings = OmegaConf.to_container(cfg.method, resolve=True)
    for shared in _SHARED_METHOD_KEYS:
        settings.pop(shared, None)
    return settings
