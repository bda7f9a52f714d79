"""Tiny FLUX-family folders for the tests, and the bridge to KV-Edit's own model (BFL's ``Flux``).

No T5 tokenizer can be downloaded here, so a small one is built from a Unigram vocabulary (``tokenizers``) wrapped
by ``T5TokenizerFast`` — in the tests only, never in the library. Every folder is a standard diffusers
``FluxPipeline`` / ``FluxFillPipeline`` folder written by ``save_pretrained`` and read back through ``model.path=``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxFillPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.loaders import single_file_utils
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

from magicremover.clip_tokenizer import build_clip_tokenizer
from magicremover.models import text_config_for
from magicremover.tiny import tiny_flow_vae

WORDS = "a an the of on in and photo red green blue circle square dog cat stripes sofa remove".split()
HIDDEN, HEADS, AXES = 64, 2, (8, 12, 12)  # head_dim 32 = sum of the RoPE axes
LATENT_CHANNELS = 16  # FLUX's; KV-Edit's mask code assumes it


def tiny_t5_tokenizer() -> T5TokenizerFast:
    """A T5 tokenizer over a few dozen words (Unigram, SentencePiece-style ``▁`` word starts, ``</s>`` appended)."""
    letters = sorted(set("".join(WORDS)))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(f"▁{word}", -1.0) for word in WORDS] + [(ch, -5.0) for ch in letters]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )


def tiny_flux_transformer(seed: int = 0, fill: bool = False) -> FluxTransformer2DModel:
    """FLUX.1-dev's transformer at toy size: 2 double- and 2 single-stream blocks, 64 wide, guidance-distilled."""
    torch.manual_seed(seed)
    packed = 4 * LATENT_CHANNELS
    return FluxTransformer2DModel(
        in_channels=packed * 2 + 4 * 2**2 if fill else packed,  # Fill: + masked image + the mask per token (f = 2)
        out_channels=packed,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=HIDDEN // HEADS,
        num_attention_heads=HEADS,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=AXES,
    )


def tiny_flux_pipeline(seed: int = 0, fill: bool = False) -> FluxPipeline:
    """A random-weight ``FluxPipeline`` (``FluxFillPipeline`` with ``fill``): the library's tiny f2 VAE with 16 latent
    channels (64 px images ↔ 32² latents ↔ 16² tokens), CLIP and T5 encoders 32 wide, FLUX.1-dev's scheduler."""
    transformer = tiny_flux_transformer(seed, fill)
    vae = tiny_flow_vae(seed)
    tokenizer = build_clip_tokenizer()
    size = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    text_encoder = CLIPTextModel(text_config_for(tokenizer, **size))
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder_2 = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    parts = dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
    parts |= dict(text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    return (FluxFillPipeline if fill else FluxPipeline)(**parts)


def save_flux_folder(directory: Path, seed: int = 0, fill: bool = False) -> Path:
    """Write a standard diffusers FLUX folder (``model_index.json`` and one folder per component)."""
    tiny_flux_pipeline(seed, fill).save_pretrained(directory)
    return directory


def bfl_flux_from_diffusers(transformer: FluxTransformer2DModel):
    """KV-Edit's ``Flux_kv`` (BFL's model with the K/V hooks) holding ``transformer``'s weights.

    Built with random weights, converted to diffusers' layout by diffusers' own converter (which hard-codes FLUX.1's
    ``inner_dim = 3072``: run here with the tiny width), and checked to load back key for key; the converted weights
    are then compared with ``transformer``'s, so the two models hold one set of numbers.
    """
    from oracles.kv_edit import Flux_kv, FluxParams

    config = transformer.config
    params = FluxParams(
        in_channels=config.in_channels,
        vec_in_dim=config.pooled_projection_dim,
        context_in_dim=config.joint_attention_dim,
        hidden_size=HIDDEN,
        mlp_ratio=4.0,
        num_heads=HEADS,
        depth=config.num_layers,
        depth_single_blocks=config.num_single_layers,
        axes_dim=list(AXES),
        theta=10_000,
        qkv_bias=True,
        guidance_embed=config.guidance_embeds,
    )
    bfl = Flux_kv(params).float().eval()
    converted = _tiny_converter()(bfl.state_dict())
    mine = transformer.state_dict()
    missing = set(mine) ^ set(converted)
    assert not missing, f"converter and diffusers disagree on keys: {sorted(missing)[:5]}"
    transformer.load_state_dict(converted)  # the diffusers model now holds BFL's random weights
    return bfl


def _tiny_converter():
    """``convert_flux_transformer_checkpoint_to_diffusers`` with ``inner_dim`` set to the tiny width."""
    source = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in source, "diffusers' FLUX converter changed: update the tiny-width patch"
    namespace = dict(vars(single_file_utils))
    exec(source.replace("inner_dim = 3072", f"inner_dim = {HIDDEN}"), namespace)  # noqa: S102 - tests only
    return namespace["convert_flux_transformer_checkpoint_to_diffusers"]
