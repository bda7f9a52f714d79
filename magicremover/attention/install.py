"""Installing a controller on a UNet for the duration of a ``with`` block."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from diffusers import UNet2DConditionModel

from magicremover.attention.controller import AttentionController
from magicremover.attention.processor import ControlledAttnProcessor


@contextmanager
def controlled_attention(unet: UNet2DConditionModel, controller: AttentionController) -> Iterator[AttentionController]:
    """Route every attention layer of ``unet`` through ``controller``; restore the original processors after.

    The originals come back however the block ends (normal exit, exception, KeyboardInterrupt).

    Example::

        store = CrossAttentionStore(keep_graph=True)
        with controlled_attention(unet, store):
            unet(z, t, emb)
        store.maps  # {layer name: (B, heads, h*w, 77)}
    """
    original = dict(unet.attn_processors)
    state: dict = {}

    def remember_latent_size(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        state["latent_hw"] = tuple(sample.shape[-2:])

    hook = unet.register_forward_pre_hook(remember_latent_size, with_kwargs=True)
    try:
        unet.set_attn_processor(
            {key: ControlledAttnProcessor(key.removesuffix(".processor"), controller, state) for key in original}
        )
        yield controller
    finally:
        hook.remove()
        unet.set_attn_processor(original)
