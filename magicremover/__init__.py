"""MagicRemover: tuning-free text-guided object removal with Stable Diffusion."""

__version__ = "0.1.0"

_API = {"remove", "Pipeline", "Removal"}


def __getattr__(name: str):
    # The one-call API sits above the library: loaded on first use, so importing a library module never imports it.
    if name in _API:
        from magicremover import api

        return getattr(api, name)
    raise AttributeError(f"module 'magicremover' has no attribute {name!r}")
