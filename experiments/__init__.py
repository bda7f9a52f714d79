"""Command-line entry points (Hydra apps): single-image removal, evaluation, benchmarks."""
