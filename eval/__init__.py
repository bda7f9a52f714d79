"""Evaluation harness: datasets, metrics, logging. Import qualified (``from eval.x import y``)."""
