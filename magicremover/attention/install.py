"""Installing a controller on a UNet, a FLUX or an SD3 transformer for the duration of a ``with`` block."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from diffusers import FluxTransformer2DModel

from magicremover.attention.controller import AttentionController
from magicremover.attention.joint import ControlledFluxAttnProcessor, ControlledSD3AttnProcessor, JointController
from magicremover.attention.processor import ControlledAttnProcessor


@contextmanager
def controlled_attention(
    model: torch.nn.Module, controller: AttentionController | JointController
) -> Iterator[AttentionController | JointController]:
    """Route every attention layer of ``model`` through ``controller``; restore the original processors after.

    ``model`` is a UNet (``controller``: an :class:`AttentionController`), or a ``FluxTransformer2DModel`` or
    ``SD3Transformer2DModel`` (a :class:`~magicremover.attention.joint.JointController`). The originals come back
    however the block ends (normal exit, exception, KeyboardInterrupt).

    Example::

        store = CrossAttentionStore(keep_graph=True)
        with controlled_attention(unet, store):
            unet(z, t, emb)
        store.maps  # {layer name: (B, heads, h*w, 77)}
    """
    original = dict(model.attn_processors)
    state: dict = {}
    joint, flux = isinstance(controller, JointController), isinstance(model, FluxTransformer2DModel)

    def remember_sizes(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        if not joint:
            state["latent_hw"] = tuple(sample.shape[-2:])
        elif flux:
            state["text_len"] = kwargs["encoder_hidden_states"].shape[1]
            ids = kwargs["img_ids"].reshape(-1, 3)  # (tokens, 3): (0, row, column) per packed image token
            state["grid"] = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        else:  # SD3: a latent (B, C, h, w), patchified by the transformer
            state["grid"] = tuple(side // module.config.patch_size for side in sample.shape[-2:])

    processor = (
        (ControlledFluxAttnProcessor if flux else ControlledSD3AttnProcessor) if joint else ControlledAttnProcessor
    )
    hook = model.register_forward_pre_hook(remember_sizes, with_kwargs=True)
    try:
        model.set_attn_processor(
            {key: processor(key.removesuffix(".processor"), controller, state) for key in original}
        )
        yield controller
    finally:
        hook.remove()
        model.set_attn_processor(original)
