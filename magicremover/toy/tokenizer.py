"""A word-level CLIP tokenizer for the toy world: every caption word is exactly one token.

It is a real byte-level BPE ``CLIPTokenizer`` (same class, same pre-tokenisation, same special tokens as SD's), with
a vocabulary of the 512 byte symbols plus, for each toy word, the merge chain that builds it. Merges of one word
can fire inside another ("or" of "orange" inside "horizontal"), so the construction encodes every word, and wherever
a word does not come out as one token it appends the merge the word still needs, until all do.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

from magicremover.clip_tokenizer import BOS, EOS, byte_alphabet
from magicremover.toy.scenes import VOCABULARY


def build_toy_tokenizer(model_max_length: int = 32) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` over :data:`~magicremover.toy.scenes.VOCABULARY`; captions need ≤ 20 tokens."""
    alphabet = byte_alphabet()
    vocab = {token: i for i, token in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges: list[tuple[str, str]] = []

    def add(pair: tuple[str, str]) -> None:
        merges.append(pair)
        vocab.setdefault("".join(pair), len(vocab))

    for word in VOCABULARY:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            add((pieces[0], pieces[1]))
            pieces = ["".join(pieces[:2])] + pieces[2:]
    for _ in range(100):
        tokenizer = _make(vocab, merges, model_max_length)
        broken = [(w, tokenizer.convert_ids_to_tokens(tokenizer(w).input_ids[1:-1])) for w in VOCABULARY]
        broken = [(w, pieces) for w, pieces in broken if len(pieces) > 1]
        if not broken:
            return tokenizer
        for _, pieces in broken:
            add((pieces[0], pieces[1]))
    raise RuntimeError(f"toy vocabulary words still split: {broken}")


def _make(vocab: dict[str, int], merges: list[tuple[str, str]], model_max_length: int) -> CLIPTokenizer:
    full = dict(vocab) | {BOS: len(vocab), EOS: len(vocab) + 1}
    return CLIPTokenizer(
        vocab=full,
        merges=list(merges),
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=model_max_length,
    )
