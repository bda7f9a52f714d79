"""Stable Diffusion's CLIP tokenizer, built offline from the vendored BPE merges file.

SD 1.x and 2.x tokenize with OpenAI CLIP's byte-level BPE (49,408 tokens). The hub copy cannot be
downloaded here, and an offline ``CLIPTokenizer.from_pretrained(hub_id)`` silently returns a 2-token
tokenizer, so the tiny model builds the real vocabulary from ``assets/bpe_simple_vocab_16e6.txt.gz``.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
# The merges file has a header line; CLIP uses the first 49152 - 256 - 2 merges after it.
_NUM_MERGES = 49152 - 256 - 2


def byte_alphabet() -> list[str]:
    """The 256 characters that stand for the 256 byte values in byte-level BPE, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; every other byte is shifted past 255 (so that no
    byte maps to whitespace or a control character) and follows in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    raw = resources.files("magicremover.assets").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(
            f"the vendored CLIP merges file gave {len(vocab)} tokens, not {VOCAB_SIZE}; reinstall magicremover"
        )
    return vocab, merges


def build_clip_tokenizer(model_max_length: int = 77, pad_token: str = EOS) -> CLIPTokenizer:
    """The CLIP ViT-L/14 tokenizer of SD 1.5 (SD 2.x differs only in padding with ``"!"``).

    Args:
        model_max_length: context length including BOS and EOS.
        pad_token: ``"<|endoftext|>"`` for SD 1.x, ``"!"`` for SD 2.x.

    Returns:
        A tokenizer with ``len(tok) == 49408``; ``"a photo of a cat"`` encodes to
        ``[49406, 320, 1125, 539, 320, 2368, 49407]``.
    """
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=pad_token,
        model_max_length=model_max_length,
    )
