"""KV-Edit on FLUX: the background K/V cache and attention decoupling (:mod:`.attention`) and the remover
(:mod:`.remover`)."""

from magicremover.baselines.kv_edit.remover import KVEdit

__all__ = ["KVEdit"]
