"""Evaluation harness: datasets, metrics, logging. Import qualified (``from magicremover.eval.x import y``)."""
