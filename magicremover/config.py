"""From a YAML preset to a remover: where the Hydra configs live, how they compose, and the method factory.

The repository's ``conf/`` folder is the source; a wheel carries a copy as ``magicremover/conf`` (``setup.py`` maps
it there), so every entry point and the API read the same configs whether the package was installed with
``pip install -e .`` (the checkout's ``conf/``) or ``pip install .`` (the packaged copy).

``method=NAME`` selects ``conf/method/NAME.yaml``; its ``_target_`` is the remover's class. A config with
``_partial_: true`` is a method that waits for a diffusion model: :func:`build_remover` instantiates it as a
partial and calls it with the loaded components (``cfg.model``, or components already loaded). A config without it
is a remover complete in itself (LaMa), built without loading any diffusion model.

Each knob's default lives once, in the signature of the ``_target_`` it configures (or, for a callable taking
``**settings``, in the dataclass it names as ``settings_type``: :class:`~magicremover.method.settings.Settings`).
``conf/signature/<target>.yaml`` holds those defaults, generated from the code by
``python -m magicremover.experiments.signatures`` and checked against it by the tests; a preset lists its target's
signature first in its defaults and writes only the keys it binds to a shared knob (``${seed}``) or changes, each
change with a comment saying why. So every key can be overridden from the command line, and none is written twice.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from magicremover.errors import ConfigError
from magicremover.outputs import cache_root
from magicremover.types import Remover

_PACKAGED = Path(__file__).resolve().parent / "conf"
_CHECKOUT = Path(__file__).resolve().parents[1] / "conf"
CONFIG_DIR = _PACKAGED if _PACKAGED.is_dir() else _CHECKOUT
"""The folder holding ``remove.yaml``, ``evaluate.yaml``, … (for ``@hydra.main(config_path=...)``)."""

# ``${magicremover_cache:}`` in conf/shared.yaml: the one default of the cache folder (:func:`cache_root`).
OmegaConf.register_new_resolver("magicremover_cache", lambda: str(cache_root()), replace=True)

SIGNATURE_GROUP = "signature"
"""The config group of the generated signature nodes (``conf/signature/<module>.<name>.yaml``)."""

_YAML_SCALARS = (str, int, float, bool, type(None))


def _yaml_value(value):
    """``value`` as YAML holds it (tuples as lists), or ``None`` when it is no YAML scalar or list of them."""
    if isinstance(value, (tuple, list)) and all(isinstance(item, _YAML_SCALARS) for item in value):
        return [_yaml_value(item) for item in value]
    if isinstance(value, _YAML_SCALARS):
        return float(value) if isinstance(value, float) else value
    return None


def signature_defaults(target: str) -> dict:
    """The keyword defaults of ``target`` (a ``_target_`` path) that YAML can hold, in signature order: its parameters
    with a scalar or list default, then, for a callable taking ``**settings`` with a ``settings_type`` dataclass,
    that dataclass's fields (nested dataclasses, e.g. a ``Window``, as lists)."""
    from hydra.utils import get_object

    obj = get_object(target)
    values = {}
    for name, parameter in inspect.signature(obj).parameters.items():
        value = _yaml_value(parameter.default)
        if parameter.default is not parameter.empty and (value is not None or parameter.default is None):
            values[name] = value
    settings_type = getattr(obj, "settings_type", None)
    for item in dataclasses.fields(settings_type) if settings_type else ():
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            continue  # a required field: the preset must give it
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        values[item.name] = _yaml_value(dataclasses.astuple(default) if dataclasses.is_dataclass(default) else default)
    return values


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
    from hydra.utils import get_object, instantiate

    from magicremover.inversion.cache import cap_bytes

    max_bytes = cap_bytes(cfg.get("cache_max_gb"))  # shared by every method's cache, checked before any model loads
    method = instantiate(cfg.method)
    if not waits_for_model(cfg.method):
        return method
    components = components if components is not None else instantiate(cfg.model)
    target = port_for(cfg.method._target_, components)
    check_family(target, components)
    if target != cfg.method._target_:  # the same settings, the family's implementation
        method = functools.partial(get_object(target), *method.args, **method.keywords)
    remover = method(components=components)
    if getattr(remover, "cache", None) is not None:
        remover.cache.max_bytes = max_bytes
    return remover


def port_for(target: str, components) -> str:
    """The class that runs ``target`` on the loaded model's family: its ``ports`` entry for that family (MagicRemover
    on SD3: :class:`~magicremover.method.sd3.MagicRemoverSD3`), or ``target`` itself."""
    from hydra.utils import get_object

    return getattr(get_object(target), "ports", {}).get(components.family, target)


def check_family(target: str, components) -> None:
    """Fail in one line when a method cannot run on the loaded model's family (its class's ``families``; the UNet
    families, ``sd`` and ``sdxl``, when it declares none)."""
    from hydra.utils import get_object

    families = getattr(get_object(target), "families", frozenset({"sd", "sdxl"}))
    if components.family not in families:
        name = target.rsplit(".", 1)[-1]
        methods_for = {
            "flux": ", or a FLUX method (method=kv_edit, method=flux_fill)",
            "sd3": "; on SD3, method=magicremover runs its experimental port",
        }
        fix = (
            "use a FLUX-family model (a preset such as model=flux_dev, or model=local model.path=DIR)"
            if "flux" in families
            else "use an SD or SDXL model" + methods_for.get(components.family, "")
        )
        raise ConfigError(f"{name} runs on {' or '.join(sorted(families))} models, not on {components.family}: {fix}")


def method_settings(preset: str, *overrides: str) -> dict:
    """The settings of a preset (``conf/method/<preset>.yaml``) as plain Python: the fields of its target's
    ``settings_type`` (:class:`~magicremover.method.settings.Settings` for MagicRemover), without the arguments every
    remover takes (inversion, resize, cache)."""
    from hydra.utils import get_object

    cfg = compose_config("remove", [f"method={preset}", *overrides])
    settings_type = getattr(get_object(cfg.method._target_), "settings_type", None)
    if settings_type is None:
        raise ConfigError(f"method={preset} has no settings_type: its keys are its constructor's")
    fields = {item.name for item in dataclasses.fields(settings_type)}
    return {key: value for key, value in OmegaConf.to_container(cfg.method, resolve=True).items() if key in fields}
