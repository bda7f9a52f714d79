"""KV-Edit's attention: the background K/V cache filled during inversion, and attention decoupling when denoising.

During inversion every FLUX block's image keys and values are kept per step. When denoising, only the masked
("foreground") image tokens are fed to the transformer; in every block their keys and values are written into the
cached ones at their own positions, so the foreground queries attend to the text, to themselves and to the whole
cached background, which itself is never recomputed (arXiv 2502.17363, Sec. 3.2; ``DoubleStreamBlock_kv`` and
``SingleStreamBlock_kv`` in its code).

Keys are cached after RoPE (KV-Edit's code caches them before and rotates all of them again with the full
positions: the same numbers, since RoPE acts on each position alone).
"""

from __future__ import annotations

from typing import Literal

import torch

from magicremover.attention.joint import JointContext, JointController


class KVCache(JointController):
    """Records image K/V per step (``mode="record"``) and decouples foreground attention (``mode="decouple"``).

    Args:
        foreground: ``(N_fg,)`` indices of the masked tokens among the image's packed tokens.
        image_len: the image's token count.
        attn_scale: added to the logits of background keys when decoupling (KV-Edit's ``attn_scale``; 0 = none).
        attn_mask: when recording, background queries see text and background only, foreground queries text and
            foreground only (KV-Edit's mask-guided inversion, ``attn_mask``).
        store_device: where the cache lives (the CPU, as KV-Edit keeps it: 2 × 57 layers × N_img × 3072 × 2 bytes per
            step on FLUX.1-dev in bf16, ≈ 0.7 GB per step at 512²).
    """

    def __init__(
        self,
        foreground: torch.Tensor,
        image_len: int,
        attn_scale: float = 0.0,
        attn_mask: bool = False,
        store_device: str | torch.device = "cpu",
    ):
        self.foreground, self.image_len = foreground, image_len
        self.attn_scale, self.attn_mask, self.store_device = attn_scale, attn_mask, torch.device(store_device)
        self.background = torch.ones(image_len, dtype=torch.bool, device="cpu")
        self.background[foreground.cpu()] = False
        self.has_background = bool(self.background.any())
        self.device, self.dtype = foreground.device, torch.float32  # the attention's, as on_kv last saw them
        self.cache: dict[float, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.mode: Literal["record", "decouple", "off"] = "off"
        self.step: float | None = None

    def at(self, mode: Literal["record", "decouple", "off"], step: float | None = None) -> None:
        """Set what the next transformer call does, and under which step key its K/V are stored or read."""
        self.mode, self.step = mode, step

    def on_kv(self, ctx: JointContext, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text, self.device, self.dtype = ctx.text_len, key.device, key.dtype
        if self.mode == "record":
            stored = (key[:, :, text:].to(self.store_device), value[:, :, text:].to(self.store_device))
            self.cache.setdefault(self.step, {})[ctx.name] = stored
            return key, value
        if self.mode == "decouple":
            cached_key, cached_value = (x.to(key.device, copy=True) for x in self.cache[self.step][ctx.name])
            cached_key[:, :, self.foreground] = key[:, :, text:]
            cached_value[:, :, self.foreground] = value[:, :, text:]
            return torch.cat([key[:, :, :text], cached_key], dim=2), torch.cat([value[:, :, :text], cached_value], 2)
        return key, value

    def attention_mask(self, ctx: JointContext) -> torch.Tensor | None:
        if not self.has_background:
            return None
        if self.mode == "record" and self.attn_mask:
            return self._separated(ctx.text_len).to(self.device)
        if self.mode == "decouple" and self.attn_scale != 0:
            bias = torch.zeros(ctx.text_len + self.image_len, device="cpu")
            bias[ctx.text_len :][self.background] = self.attn_scale
            return bias.view(1, 1, 1, -1).to(self.device, self.dtype)  # SDPA wants the queries' dtype (bf16 there)
        return None

    def _separated(self, text_len: int) -> torch.Tensor:
        """``(1, 1, S, S)`` boolean, S = text + image tokens: text rows see everything; a foreground row sees text and
        foreground; a background row sees text and background (KV-Edit's ``create_attention_mask``)."""
        kind = torch.cat([torch.zeros(text_len, dtype=torch.long, device="cpu"), torch.where(self.background, 2, 1)])
        rows, cols = kind[:, None], kind[None, :]
        return ((rows == 0) | (cols == 0) | (rows == cols))[None, None]

    def nbytes(self) -> int:
        """Bytes the cache holds."""
        return sum(k.nbytes + v.nbytes for layers in self.cache.values() for k, v in layers.values())
