"""The MagicRemover method: settings, schedule, guidance functions and the remover."""

from magicremover.method.remover import MagicRemover
from magicremover.method.settings import Settings

__all__ = ["MagicRemover", "Settings"]
