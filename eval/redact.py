"""What of a run's config may be written or logged: only the weights the run uses, and no secrets.

A weights setting can be a URL with credentials (``https://user:pass@host/x?token=...``) taken from the environment;
``config.yaml``, ``result.json`` and W&B would otherwise keep it verbatim, even for runs that never read it.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

from magicremover.secrets import redact

_WEIGHTS_REFERENCE = re.compile(r"\$\{weights\.(\w+)\}")


def loggable_config(cfg: DictConfig) -> dict:
    """The resolved config as plain Python, keeping only the ``weights`` entries some other part of the config
    refers to (``${weights.X}``) and that are set (a null entry means the default location), secrets redacted."""
    used = set(_WEIGHTS_REFERENCE.findall(OmegaConf.to_yaml(cfg, resolve=False)))
    container = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(container.get("weights"), dict):
        container["weights"] = {
            key: value for key, value in container["weights"].items() if key in used and value is not None
        }
    return redact(container)
