"""MagicRemover on SD3's MM-DiT: an experimental port, with no published reference to compare against.

What carries over, and how (``docs/transformers.md`` says what is and is not shown):

* **Inversion**: Euler inversion of the rectified flow under the prompt, then null-text optimisation of the
  unconditional tokens and pooled embedding per step (:mod:`magicremover.inversion.flow`), so the CFG trajectory
  reconstructs the image. SD3 has real CFG; FLUX.1-dev, guidance-distilled, has no unconditional branch to fit.
* **The target's map** (the role of the cross-attention map): in every joint block, the image queries' attention to
  the target word's CLIP tokens, renormalised over the text keys so each row behaves like cross-attention; heads and
  blocks averaged. (T5's copy of the word is not read.)
* **Self-attention guidance (Eq. 10)**: the edit branch's image-token K/V in every joint block are the reconstruction
  branch's at the same step (text K/V stay its own).
* **Guidance (Eq. 7–8, 11–13)**: the same losses, regions and gates as the UNet method
  (:mod:`magicremover.method.guidance`); the ε-space step ε̂ − s·W⊙∇L becomes, through ε̂ = z + (1 − σ) v, an Euler
  step whose noise direction is guided: z' = z + (σ' − σ) v − σ'·s·W⊙∇L (:func:`~magicremover.inversion.flow.flow_step`).
  Timestep windows (``t_ratio``, ``guidance_window``, ``classifier_optimization_window``) read t = 1000 σ.

Settings that name UNet layers or DDIM-only machinery (``map_strides``, ``kv_source=inversion``,
``trajectory_correction``) are refused; the inversion is not cached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from magicremover import sd3
from magicremover.attention.install import controlled_attention
from magicremover.attention.joint import JointContext, JointController
from magicremover.errors import ConfigError
from magicremover.images import Resize, fit_mask, fit_to_model, load_image
from magicremover.inversion import InversionConfig
from magicremover.inversion.flow import FlowInversion, cfg_velocity, flow_step, invert
from magicremover.method import guidance as G
from magicremover.method.remover import checkpointing, to_image
from magicremover.method.schedule import edit_start, plan
from magicremover.method.settings import Settings
from magicremover.target_tokens import TargetTokens, find_target
from magicremover.types import RemovalResult, RemovalSample


class JointGuidance(JointController):
    """Records or injects the image tokens' K/V of every joint block, and keeps the target words' maps.

    Args:
        words: each target word's token positions among the text tokens (CLIP's, from :func:`find_target`).
    """

    def __init__(self, words: list[list[int]]):
        self.words = words
        self.mode = "off"  # "record" | "inject" | "off"
        self.read_maps = False
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.maps: dict[str, list[torch.Tensor]] = {}

    def wants_probs(self, ctx: JointContext) -> bool:
        return self.read_maps and ctx.text_len > 0

    def on_kv(self, ctx: JointContext, key: torch.Tensor, value: torch.Tensor):
        if self.mode == "record":
            self.kv[ctx.name] = (key[:, :, ctx.image].detach(), value[:, :, ctx.image].detach())
        elif self.mode == "inject":
            recorded_key, recorded_value = self.kv[ctx.name]
            text_key, text_value = key[:, :, ctx.text], value[:, :, ctx.text]
            key, value = torch.cat([recorded_key, text_key], 2), torch.cat([recorded_value, text_value], 2)
        return key, value

    def on_probs(self, ctx: JointContext, probs: torch.Tensor) -> torch.Tensor:
        # The conditional half (last in a CFG batch): image queries → text keys, renormalised over the text keys.
        text = probs[-1:, :, ctx.image, ctx.text]
        text = text / text.sum(dim=-1, keepdim=True)
        grid = (ctx.height, ctx.width)
        self.maps[ctx.name] = [text[..., word].sum(-1).mean(1).view(1, 1, *grid) for word in self.words]
        return probs

    def word_maps(self) -> list[torch.Tensor]:
        """Each word's map ``(1, 1, h, w)`` at the token grid, averaged over the blocks read."""
        per_block = list(self.maps.values())
        return [torch.stack([block[w] for block in per_block]).mean(0) for w in range(len(self.words))]


@dataclass
class _State:
    """What one sample's guidance carries from step to step (as the UNet method's)."""

    target: TargetTokens
    image_hw: tuple[int, int]
    latent_hw: tuple[int, int]
    fixed_mask: torch.Tensor | None
    user_mask: bool
    reference_max: list[torch.Tensor]


class MagicRemoverSD3:
    """MagicRemover's guidance on an SD3-family model (experimental; chosen by ``method=magicremover`` on SD3).

    Args:
        components: an SD3 model.
        inversion: how to invert (null-text by default; ``guidance_scale`` is the CFG scale of every branch).
        resize: how the photo is fitted to the model's square.
        cache_dir: not used (the flow inversion is not cached).
        **settings: :class:`~magicremover.method.settings.Settings`, those that apply to a transformer.
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    families: ClassVar[frozenset[str]] = frozenset({"sd3"})
    settings_type: ClassVar[type[Settings]] = Settings

    def __init__(
        self,
        components: sd3.SD3Components,
        inversion: InversionConfig,
        resize: Resize = "stretch",
        cache_dir: str | Path | None = None,
        **settings,
    ):
        self.components, self.inversion, self.resize = components, inversion, resize
        self.settings = s = Settings(**settings)
        refused = {
            "map_strides": s.map_strides is not None,
            "kv_source": s.kv_source != "reconstruction",
            "trajectory_correction": s.trajectory_correction != "none",
        }
        for key, bad in refused.items():
            if bad:
                raise ConfigError(f"method.{key}={getattr(s, key)} names UNet or DDIM machinery: SD3 has none")
        if edit_start(inversion.num_inference_steps, s.t_ratio) >= inversion.num_inference_steps:
            raise ConfigError(f"method.t_ratio={s.t_ratio} edits none of the {inversion.num_inference_steps} steps")

    @property
    def resolution(self) -> int:
        return self.components.resolution

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        c, s = self.components, self.settings
        start, before = time.perf_counter(), c.calls.totals()
        # 1. Inputs; the target is checked before any transformer call.
        target = find_target(c.tokenizer, sample.prompt, sample.target)
        source = load_image(sample.image)
        image = fit_to_model(source, self.resolution, self.resize)
        z0 = sd3.encode_image(c, image)
        latent_hw = tuple(z0.shape[-2:])
        # 2. Flow inversion with null-text optimisation.
        inversion = invert(c, z0, sample.prompt, self.inversion)
        # 3. The target's map on the clean end of the trajectory, and M₀ (or the user's mask, Eq. 13).
        controller = JointGuidance([list(word) for word in target.words])
        with controlled_attention(c.transformer, controller):
            soft = self._t1_map(inversion, controller, latent_hw)
        fixed = (soft > s.mask_threshold).float()
        user = sample.mask is not None and s.use_mask
        if user:
            hole = fit_mask(sample.mask, source.size, tuple(image.shape[-2:]), self.resize)
            fixed = F.interpolate(hole, size=latent_hw, mode="bilinear", align_corners=False).to(c.device)
        state = _State(target, tuple(image.shape[-2:]), latent_hw, fixed, user, [])
        # 4. Both branches from the top of the trajectory.
        levels = inversion.levels[:-1]
        steps = plan(
            [round(level * 1000) for level in levels],
            s.t_ratio,
            s.guidance_window,
            s.classifier_optimization_window,
            guidance_on=s.attention_guidance,
            optimization_on=s.classifier_optimization,
        )
        with controlled_attention(c.transformer, controller), checkpointing(c.transformer, s.gradient_checkpointing):
            z_rec, z_edit, region = self._denoise(inversion, steps, state, controller)
        # 5. Decode and report.
        calls, seconds = c.calls.since(before, start)
        final = region if region is not None else fixed
        return RemovalResult(
            image=sd3.decode(c, z_edit).cpu(),
            reconstruction=sd3.decode(c, z_rec).cpu(),
            attention=to_image(soft, state.image_hw),
            mask=to_image(final, state.image_hw),
            calls=calls,
            seconds=seconds,
            extras={
                "target_tokens": [list(word) for word in target.words],
                "guided_steps": sum(steps.guide),
                "dtype": str(c.dtype).removeprefix("torch."),
                "experimental": "MagicRemover on SD3 (no published reference)",
            },
        )

    @torch.no_grad()
    def _t1_map(self, inversion: FlowInversion, controller: JointGuidance, latent_hw) -> torch.Tensor:
        """The soft map behind M₀: the target's map from one conditional call at the lowest noise level on the
        trajectory latent there; each word's map min-max normalised, multiplied, resized to the latent grid."""
        c, last = self.components, len(inversion.levels) - 2
        controller.read_maps, controller.mode = True, "off"
        with c.calls.stage("attention_mask"):
            sd3.velocity(c, inversion.latent_at_step(last), inversion.levels[last], inversion.cond)
        controller.read_maps = False
        native = torch.stack([G.minmax(m.float()) for m in controller.word_maps()]).prod(0)
        return G.minmax(F.interpolate(native, size=latent_hw, mode="bilinear", align_corners=False))

    def _denoise(self, inversion: FlowInversion, steps, state: _State, controller: JointGuidance):
        """The two-branch loop; returns the final reconstruction and edit latents and the last region M."""
        c, s = self.components, self.settings
        levels, cond = inversion.levels, inversion.cond
        z_rec = z_edit = inversion.latent_at_step(0)
        region = None
        for i in range(len(levels) - 1):
            level, level_to, null = levels[i], levels[i + 1], inversion.null(i)
            # Phase A (shared): before the edit start both branches are the reconstruction.
            if not steps.edit[i]:
                controller.mode = "off"
                with c.calls.stage("replay"), torch.no_grad():
                    z_rec = z_edit = flow_step(z_rec, self._velocity(z_rec, level, null, cond), level, level_to)
                continue
            # Phase B: the reconstruction branch, recording every block's image K/V for the edit.
            controller.mode = "record" if s.self_attention_guidance else "off"
            with c.calls.stage("reconstruction"), torch.no_grad():
                z_rec_next = flow_step(z_rec, self._velocity(z_rec, level, null, cond), level, level_to)
            # Phase C: the edit branch, its image K/V the reconstruction's (Eq. 10).
            controller.mode = "inject" if s.self_attention_guidance else "off"
            if not steps.guide[i]:
                with c.calls.stage("edit"), torch.no_grad():
                    z_next = flow_step(z_edit, self._velocity(z_edit, level, null, cond), level, level_to)
            else:
                for _ in range(s.classifier_optimization_steps if steps.optimize[i] else 0):
                    with c.calls.stage("classifier_optimization"):
                        v, shift, _ = self._guided(z_edit, level, null, cond, state, controller)
                        z_edit = flow_step(z_edit, v, level, level, shift)  # Eq. 11–12: same level, guided direction
                with c.calls.stage("edit"):
                    v, shift, region = self._guided(z_edit, level, null, cond, state, controller)
                    z_next = flow_step(z_edit, v, level, level_to, shift)  # Eq. 12
            # Phase D: outside the region M, keep the reconstruction (released code).
            if s.blend and region is not None:
                z_next = region * z_next + (1 - region) * z_rec_next
            z_rec, z_edit = z_rec_next, z_next.detach()
        controller.mode = "off"
        return z_rec, z_edit, region

    def _velocity(self, z: torch.Tensor, level: float, null: sd3.SD3Text, cond: sd3.SD3Text) -> torch.Tensor:
        """The CFG flow; one batch-1 call when the unconditional input is the prompt's (negative-prompt inversion) and
        ``fold_cfg`` is on, since v_u + w (v_c − v_u) = v_c then."""
        c = self.components
        same = torch.equal(null.tokens, cond.tokens) and torch.equal(null.pooled, cond.pooled)
        if self.settings.fold_cfg and same:
            return sd3.velocity(c, z, level, cond)
        return cfg_velocity(c, z, level, null, cond, self.inversion.guidance_scale)

    def _guided(self, z, level, null, cond, state: _State, controller: JointGuidance):
        """One CFG call with gradients: the flow v, the guided shift s·W⊙∇_z L of the noise direction, the region M."""
        s = self.settings
        z = z.detach().requires_grad_(True)
        controller.read_maps = True
        with torch.enable_grad():
            v = self._velocity(z, level, null, cond)
            word_maps = [F.interpolate(m, size=state.latent_hw, mode="bilinear") for m in controller.word_maps()]
            loss, region = G.attention_loss(word_maps, state.image_hw, state.reference_max, s)
            grad = torch.autograd.grad(loss, z)[0]
        controller.read_maps = False
        controller.maps.clear()
        gate = G.gate_mask(G.latent_region(region, state.latent_hw), state.fixed_mask)
        mask = state.fixed_mask if state.user_mask else gate
        weight = G.perturbation_weight(mask, word_maps, state.user_mask, s)
        return v.detach(), s.guidance_weight * weight * grad, mask
