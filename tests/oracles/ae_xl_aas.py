# Copyright 2025 The HuggingFace Team. Licensed under the Apache License, Version 2.0: see LICENSE-diffusers beside
# this file. From huggingface/diffusers, examples/community/pipeline_stable_diffusion_xl_attentive_eraser.py:
# AttentionBase and AAS_XL unchanged, and StableDiffusionXL_AE_Pipeline.regiter_attention_editor_diffusers, a method
# there, as a function here (its `self` was unused); only the imports they use are gathered here.
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat


class AttentionBase:
    def __init__(self):
        self.cur_step = 0
        self.num_att_layers = -1
        self.cur_att_layer = 0

    def after_step(self):
        pass

    def __call__(self, q, k, v, sim, attn, is_cross, place_in_unet, num_heads, **kwargs):
        out = self.forward(q, k, v, sim, attn, is_cross, place_in_unet, num_heads, **kwargs)
        self.cur_att_layer += 1
        if self.cur_att_layer == self.num_att_layers:
            self.cur_att_layer = 0
            self.cur_step += 1
            # after step
            self.after_step()
        return out

    def forward(self, q, k, v, sim, attn, is_cross, place_in_unet, num_heads, **kwargs):
        out = torch.einsum("b i j, b j d -> b i d", attn, v)
        out = rearrange(out, "(b h) n d -> b n (h d)", h=num_heads)
        return out

    def reset(self):
        self.cur_step = 0
        self.cur_att_layer = 0


class AAS_XL(AttentionBase):
    MODEL_TYPE = {"SD": 16, "SDXL": 70}

    def __init__(
        self,
        start_step=4,
        end_step=50,
        start_layer=10,
        end_layer=16,
        layer_idx=None,
        step_idx=None,
        total_steps=50,
        mask=None,
        model_type="SD",
        ss_steps=9,
        ss_scale=1.0,
    ):
        """
        Args:
            start_step: the step to start AAS
            start_layer: the layer to start AAS
            layer_idx: list of the layers to apply AAS
            step_idx: list the steps to apply AAS
            total_steps: the total number of steps
            mask: source mask with shape (h, w)
            model_type: the model type, SD or SDXL
        """
        super().__init__()
        self.total_steps = total_steps
        self.total_layers = self.MODEL_TYPE.get(model_type, 16)
        self.start_step = start_step
        self.end_step = end_step
        self.start_layer = start_layer
        self.end_layer = end_layer
        self.layer_idx = layer_idx if layer_idx is not None else list(range(start_layer, end_layer))
        self.step_idx = step_idx if step_idx is not None else list(range(start_step, end_step))
        self.mask = mask  # mask with shape (1, 1 ,h, w)
        self.ss_steps = ss_steps
        self.ss_scale = ss_scale
        self.mask_16 = F.max_pool2d(mask, (1024 // 16, 1024 // 16)).round().squeeze().squeeze()
        self.mask_32 = F.max_pool2d(mask, (1024 // 32, 1024 // 32)).round().squeeze().squeeze()
        self.mask_64 = F.max_pool2d(mask, (1024 // 64, 1024 // 64)).round().squeeze().squeeze()
        self.mask_128 = F.max_pool2d(mask, (1024 // 128, 1024 // 128)).round().squeeze().squeeze()

    def attn_batch(self, q, k, v, sim, attn, is_cross, place_in_unet, num_heads, is_mask_attn, mask, **kwargs):
        B = q.shape[0] // num_heads
        if is_mask_attn:
            mask_flatten = mask.flatten(0)
            if self.cur_step <= self.ss_steps:
                # background
                sim_bg = sim + mask_flatten.masked_fill(mask_flatten == 1, torch.finfo(sim.dtype).min)

                # object
                sim_fg = self.ss_scale * sim
                sim_fg += mask_flatten.masked_fill(mask_flatten == 1, torch.finfo(sim.dtype).min)
                sim = torch.cat([sim_fg, sim_bg], dim=0)
            else:
                sim += mask_flatten.masked_fill(mask_flatten == 1, torch.finfo(sim.dtype).min)

        attn = sim.softmax(-1)
        if len(attn) == 2 * len(v):
            v = torch.cat([v] * 2)
        out = torch.einsum("h i j, h j d -> h i d", attn, v)
        out = rearrange(out, "(h1 h) (b n) d -> (h1 b) n (h d)", b=B, h=num_heads)
        return out

    def forward(self, q, k, v, sim, attn, is_cross, place_in_unet, num_heads, **kwargs):
        """
        Attention forward function
        """
        if is_cross or self.cur_step not in self.step_idx or self.cur_att_layer // 2 not in self.layer_idx:
            return super().forward(q, k, v, sim, attn, is_cross, place_in_unet, num_heads, **kwargs)
        H = int(np.sqrt(q.shape[1]))
        if H == 16:
            mask = self.mask_16.to(sim.device)
        elif H == 32:
            mask = self.mask_32.to(sim.device)
        elif H == 64:
            mask = self.mask_64.to(sim.device)
        else:
            mask = self.mask_128.to(sim.device)

        q_wo, q_w = q.chunk(2)
        k_wo, k_w = k.chunk(2)
        v_wo, v_w = v.chunk(2)
        sim_wo, sim_w = sim.chunk(2)
        attn_wo, attn_w = attn.chunk(2)

        out_source = self.attn_batch(
            q_wo,
            k_wo,
            v_wo,
            sim_wo,
            attn_wo,
            is_cross,
            place_in_unet,
            num_heads,
            is_mask_attn=False,
            mask=None,
            **kwargs,
        )
        out_target = self.attn_batch(
            q_w, k_w, v_w, sim_w, attn_w, is_cross, place_in_unet, num_heads, is_mask_attn=True, mask=mask, **kwargs
        )

        if self.mask is not None:
            if out_target.shape[0] == 2:
                out_target_fg, out_target_bg = out_target.chunk(2, 0)
                mask = mask.reshape(-1, 1)  # (hw, 1)
                out_target = out_target_fg * mask + out_target_bg * (1 - mask)
            else:
                out_target = out_target

        out = torch.cat([out_source, out_target], dim=0)
        return out



def regiter_attention_editor_diffusers(unet, editor: AttentionBase):
    """
    Register a attention editor to Diffuser Pipeline, refer from [Prompt-to-Prompt]
    """

    def ca_forward(self, place_in_unet):
        def forward(x, encoder_hidden_states=None, attention_mask=None, context=None, mask=None):
            """
            The attention is similar to the original implementation of LDM CrossAttention class
            except adding some modifications on the attention
            """
            if encoder_hidden_states is not None:
                context = encoder_hidden_states
            if attention_mask is not None:
                mask = attention_mask

            to_out = self.to_out
            if isinstance(to_out, nn.modules.container.ModuleList):
                to_out = self.to_out[0]
            else:
                to_out = self.to_out

            h = self.heads
            q = self.to_q(x)
            is_cross = context is not None
            context = context if is_cross else x
            k = self.to_k(context)
            v = self.to_v(context)
            # q, k, v = map(lambda t: rearrange(t, 'b n (h d) -> (b h) n d', h=h), (q, k, v))
            q, k, v = (rearrange(t, "b n (h d) -> (b h) n d", h=h) for t in (q, k, v))

            sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale

            if mask is not None:
                mask = rearrange(mask, "b ... -> b (...)")
                max_neg_value = -torch.finfo(sim.dtype).max
                mask = repeat(mask, "b j -> (b h) () j", h=h)
                mask = mask[:, None, :].repeat(h, 1, 1)
                sim.masked_fill_(~mask, max_neg_value)

            attn = sim.softmax(dim=-1)
            # the only difference
            out = editor(q, k, v, sim, attn, is_cross, place_in_unet, self.heads, scale=self.scale)

            return to_out(out)

        return forward

    def register_editor(net, count, place_in_unet):
        for name, subnet in net.named_children():
            if net.__class__.__name__ == "Attention":  # spatial Transformer layer
                net.forward = ca_forward(net, place_in_unet)
                return count + 1
            elif hasattr(net, "children"):
                count = register_editor(subnet, count, place_in_unet)
        return count

    cross_att_count = 0
    for net_name, net in unet.named_children():
        if "down" in net_name:
            cross_att_count += register_editor(net, 0, "down")
        elif "mid" in net_name:
            cross_att_count += register_editor(net, 0, "mid")
        elif "up" in net_name:
            cross_att_count += register_editor(net, 0, "up")
    editor.num_att_layers = cross_att_count
