"""Mapping target words to token positions, with the tokenizer that will encode the prompt.

The authors' code assumed the object sits at token 5 (``"a photo of a X"``), which is wrong for words the BPE
splits ("fire hydrant" → fire, hydr, ant; "surfboard" → surf, board). Here positions come from the tokenizer's
character offsets, so every sub-token of every target word is found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from magicremover.errors import PromptError


@dataclass(frozen=True)
class TargetTokens:
    """The token positions of one target phrase in a prompt.

    Attributes:
        phrase: the target as given, e.g. ``"fire hydrant"``.
        words: one entry per word of the phrase, each the positions of that word's sub-tokens in the
            encoded prompt (position 0 is the start token). ``"fire hydrant"`` in ``"a photo of a fire hydrant"``
            → ``((5,), (6, 7))``. When the phrase occurs several times, each word lists every occurrence.
    """

    phrase: str
    words: tuple[tuple[int, ...], ...]

    @property
    def flat(self) -> tuple[int, ...]:
        """All positions of the phrase, in order."""
        return tuple(i for word in self.words for i in word)


def check_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> None:
    """Raise :class:`PromptError` for an empty prompt or one longer than the text encoder's context."""
    if not prompt or not prompt.strip():
        raise PromptError('the prompt is empty; describe the image, e.g. prompt="a photo of a dog"')
    n_tokens = len(tokenizer(prompt, truncation=False).input_ids)
    if n_tokens > tokenizer.model_max_length:
        raise PromptError(
            f"the prompt has {n_tokens} tokens with start/end; the text encoder takes {tokenizer.model_max_length}: shorten it"
        )


def find_target(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> TargetTokens:
    """Token positions of ``target`` (a word or phrase, case-insensitive, whole words) in ``prompt``.

    Raises:
        PromptError: empty or too long prompt, empty target, or a target that is not in the prompt.
    """
    check_prompt(tokenizer, prompt)
    words = target.split()
    if not words:
        raise PromptError("the target is empty; name the object to remove, e.g. target=dog")
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    matches = list(re.finditer(pattern, prompt, flags=re.IGNORECASE))
    if not matches:
        raise PromptError(f"target {target!r} is not in the prompt {prompt!r}; pass a target word that appears in it")
    offsets = tokenizer(prompt, return_offsets_mapping=True).offset_mapping
    per_word: list[list[int]] = [[] for _ in words]
    for match in matches:
        for k, span in enumerate(_word_spans(match)):
            per_word[k] += [i for i, (a, b) in enumerate(offsets) if b > a and a < span[1] and b > span[0]]
    return TargetTokens(target, tuple(tuple(sorted(set(p))) for p in per_word))


def _word_spans(match: re.Match) -> list[tuple[int, int]]:
    return [(m.start() + match.start(), m.end() + match.start()) for m in re.finditer(r"\S+", match.group(0))]
