"""Token alignment for Prompt-to-Prompt refinement: which source token each target token takes its attention from."""

from __future__ import annotations

from typing import Sequence

import torch

_GAP, _MATCH, _MISMATCH = 0, 1, -1


def refinement_mapper(source: Sequence[int], target: Sequence[int], length: int) -> torch.Tensor:
    """P2P's refinement mapping between two tokenised prompts (start and end tokens included, no padding).

    A global alignment scoring matches 1, mismatches −1 and gaps 0. Ties go first to a gap in the source (the target
    token keeps its own attention), then to a gap in the target, then to the diagonal: the order of P2P's
    ``seq_aligner``, which decides the mapping when a prompt repeats a word. Slots past the target's tokens (padding,
    which carries much of SD's cross-attention mass) map to the same slot of the source.

    Args:
        source: token ids of the source prompt, e.g. ``tokenizer(prompt).input_ids``.
        target: token ids of the edited prompt.
        length: the text encoder's context length (77 for SD).

    Returns:
        ``(length,)`` int64: for each target position, the source position it takes, or −1 where it has none.
    """
    rows, cols = len(source), len(target)
    if max(rows, cols) > length:
        raise ValueError(f"prompts of {rows} and {cols} tokens do not fit a context of {length}")
    score = [[_GAP * (i + j) for j in range(cols + 1)] for i in range(rows + 1)]
    move = [["up"] * (cols + 1) for _ in range(rows + 1)]
    move[0] = ["left"] * (cols + 1)
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            left, up = score[i][j - 1] + _GAP, score[i - 1][j] + _GAP
            diag = score[i - 1][j - 1] + (_MATCH if source[i - 1] == target[j - 1] else _MISMATCH)
            score[i][j] = max(left, up, diag)
            move[i][j] = "left" if score[i][j] == left else "up" if score[i][j] == up else "diag"
    mapping = list(range(length))
    i, j = rows, cols
    while i > 0 or j > 0:
        step = move[i][j]
        if step == "diag":
            i, j = i - 1, j - 1
            mapping[j] = i
        elif step == "left":
            j -= 1
            mapping[j] = -1
        else:
            i -= 1
    return torch.tensor(mapping, dtype=torch.int64)
