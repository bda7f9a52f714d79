"""MagicRemover: tuning-free text-guided object removal with Stable Diffusion."""

__version__ = "0.1.0"
