"""The official Inst-Inpaint checkpoint (a Lightning ``state_dict`` of LDM's ``LatentDiffusion``) → our modules.

Official prefixes and where they go:
- ``model_ema.diffusion_model<name without dots>`` → the UNet (EMA weights: what the authors sample with);
  ``model.diffusion_model.<name>`` → the UNet when ``use_ema=False``, else ignored;
- ``cond_stage_instruction_embedder.transformer.*`` (x-transformers ``TransformerWrapper``) → diffusers ``LDMBertModel``;
- ``first_stage_model.*`` (taming ``VQModel``) → diffusers ``VQModel``; ``cond_stage_model.*`` is the same module
  registered a second time (``__is_first_stage__``) and is ignored;
- the schedule buffers are checked against ours (``alphas_cumprod``) or ignored; EMA bookkeeping is ignored.
Every key is consumed or ignored by a rule; anything else is an error, as is any module weight left unfilled.
The one-off conversion of a pickled checkpoint is the command ``python -m magicremover.baselines.inst_inpaint.convert``.
"""

from __future__ import annotations

import re

import torch

from magicremover.errors import ModelLoadError

EMA_PREFIX, LIVE_PREFIX = "model_ema.diffusion_model", "model.diffusion_model."
TEXT_PREFIX, VQ_PREFIX = "cond_stage_instruction_embedder.transformer.", "first_stage_model."
IGNORED = re.compile(
    r"^(cond_stage_model\..*|model_ema\.(decay|num_updates)|betas|alphas_cumprod(_prev)?|sqrt_alphas_cumprod|"
    r"sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip(m1)?_alphas_cumprod|posterior_.*|logvar|"
    r"scale_factor|first_stage_model\.loss\..*)$"
)


def ema_name(name: str) -> str:
    """LDM's EMA buffer for UNet parameter ``name`` (LitEma drops the dots)."""
    return EMA_PREFIX + name.replace(".", "")


def text_key(official: str) -> str | None:
    """x-transformers encoder key (prefix removed) → ``LDMBertModel`` key. Layers alternate attention (even) and
    feed-forward (odd), each ``[pre-norm, block, residual]``."""
    fixed = {
        "token_emb.weight": "model.embed_tokens.weight",
        "pos_emb.emb.weight": "model.embed_positions.weight",
        "norm.weight": "model.layer_norm.weight",
        "norm.bias": "model.layer_norm.bias",
        "to_logits.weight": "to_logits.weight",
        "to_logits.bias": "to_logits.bias",
    }
    if official in fixed:
        return fixed[official]
    match = re.fullmatch(r"attn_layers\.layers\.(\d+)\.(.+)", official)
    if not match:
        return None
    index, rest = int(match[1]), match[2]
    layer, attention = index // 2, index % 2 == 0
    parts = (
        {
            "0.weight": "self_attn_layer_norm.weight",
            "0.bias": "self_attn_layer_norm.bias",
            "1.to_q.weight": "self_attn.q_proj.weight",
            "1.to_k.weight": "self_attn.k_proj.weight",
            "1.to_v.weight": "self_attn.v_proj.weight",
            "1.to_out.weight": "self_attn.out_proj.weight",
            "1.to_out.bias": "self_attn.out_proj.bias",
        }
        if attention
        else {
            "0.weight": "final_layer_norm.weight",
            "0.bias": "final_layer_norm.bias",
            "1.net.0.0.weight": "fc1.weight",
            "1.net.0.0.bias": "fc1.bias",
            "1.net.2.weight": "fc2.weight",
            "1.net.2.bias": "fc2.bias",
        }
    )
    return f"model.layers.{layer}.{parts[rest]}" if rest in parts else None


def vq_key(official: str, levels: int) -> str | None:
    """taming ``Encoder``/``Decoder`` key (prefix removed) → diffusers ``VQModel`` key; decoder levels are reversed."""
    renames = [
        (r"\.nin_shortcut\.", ".conv_shortcut."),
        (r"(\.attentions\.\d+)\.norm\.", r"\1.group_norm."),
        (r"\.q\.", ".to_q."),
        (r"\.k\.", ".to_k."),
        (r"\.v\.", ".to_v."),
        (r"\.proj_out\.", ".to_out.0."),
        (r"\.norm_out\.", ".conv_norm_out."),
    ]
    key = "." + official
    key = re.sub(r"^\.encoder\.down\.(\d+)\.block\.", r".encoder.down_blocks.\1.resnets.", key)
    key = re.sub(r"^\.encoder\.down\.(\d+)\.attn\.", r".encoder.down_blocks.\1.attentions.", key)
    key = re.sub(r"^\.encoder\.down\.(\d+)\.downsample\.", r".encoder.down_blocks.\1.downsamplers.0.", key)
    up = re.match(r"^\.decoder\.up\.(\d+)\.(block|attn|upsample)\.(.*)$", key)
    if up:
        kind = {"block": "resnets.", "attn": "attentions.", "upsample": "upsamplers.0."}[up[2]]
        key = f".decoder.up_blocks.{levels - 1 - int(up[1])}.{kind}{up[3]}"
    key = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}.", key)
    key = re.sub(r"\.mid\.attn_1\.", ".mid_block.attentions.0.", key)
    for pattern, replacement in renames:
        key = re.sub(pattern, replacement, key)
    return key[1:]


def convert(
    state: dict[str, torch.Tensor],
    unet: torch.nn.Module,
    text: torch.nn.Module,
    vq: torch.nn.Module,
    use_ema: bool = True,
    alphas_cumprod: torch.Tensor | None = None,
) -> dict[str, list[str]]:
    """Load an official ``state_dict`` into ``unet``, ``text`` (LDMBertModel) and ``vq`` (diffusers VQModel).

    Returns ``{"consumed": [...], "ignored": [...]}`` official keys. Raises :class:`ModelLoadError` on an unknown key,
    a missing weight, a shape mismatch or a schedule that is not ours.
    """
    targets = {"unet": unet.state_dict(), "text": text.state_dict(), "vq": vq.state_dict()}
    filled: dict[str, dict[str, torch.Tensor]] = {name: {} for name in targets}
    consumed, ignored, unknown = [], [], []
    ema_map = {ema_name(name): name for name in targets["unet"]}
    levels = len(vq.config.block_out_channels)
    for key, value in state.items():
        if key in ema_map and use_ema:
            route = ("unet", ema_map[key])
        elif key.startswith(LIVE_PREFIX) and not use_ema:
            route = ("unet", key[len(LIVE_PREFIX) :])
        elif key.startswith(TEXT_PREFIX):
            route = ("text", text_key(key[len(TEXT_PREFIX) :]))
        elif key.startswith(VQ_PREFIX) and not key.startswith(VQ_PREFIX + "loss."):
            route = ("vq", vq_key(key[len(VQ_PREFIX) :], levels))
        elif key in ema_map or key.startswith(LIVE_PREFIX) or IGNORED.match(key):
            if (
                key == "alphas_cumprod"
                and alphas_cumprod is not None
                and not torch.allclose(value.double(), alphas_cumprod.double(), atol=1e-4)
            ):
                raise ModelLoadError(
                    "the checkpoint's noise schedule is not Inst-Inpaint's (linear 0.0015-0.0195, 1000 steps)"
                )
            ignored.append(key)
            continue
        else:
            unknown.append(key)
            continue
        module, name = route
        if name is None or name not in targets[module]:
            unknown.append(key)
            continue
        expected = targets[module][name]
        if value.dim() == 4 and expected.dim() == 2:  # taming's 1x1-conv attention projections → linear layers
            value = value[:, :, 0, 0]
        if value.shape != expected.shape:
            raise ModelLoadError(
                f"{key} has shape {tuple(value.shape)}, our {module} expects {tuple(expected.shape)} for {name}"
            )
        filled[module][name] = value
        consumed.append(key)
    if unknown:
        raise ModelLoadError(
            f"{len(unknown)} checkpoint keys are not Inst-Inpaint's, e.g. {unknown[0]}: is this the official model.ckpt?"
        )
    for module, target in targets.items():
        missing = sorted(set(target) - set(filled[module]))
        if missing:
            raise ModelLoadError(f"the checkpoint lacks {len(missing)} {module} weights, e.g. {missing[0]}")
    for module, name in ((unet, "unet"), (text, "text"), (vq, "vq")):
        module.load_state_dict(filled[name])
    return {"consumed": consumed, "ignored": ignored}
