"""Image inversion (DDIM, null-text, negative-prompt) and its on-disk cache."""

from magicremover.inversion.cache import InversionCache, cache_key, invert_cached
from magicremover.inversion.core import Inversion, InversionConfig, invert, reconstruct, set_timesteps

__all__ = [
    "Inversion",
    "InversionCache",
    "InversionConfig",
    "cache_key",
    "invert",
    "invert_cached",
    "reconstruct",
    "set_timesteps",
]
