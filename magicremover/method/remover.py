"""MagicRemover: null-text inversion, then a reconstruction branch and an attention-guided edit branch."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from magicremover.attention import (
    ComposedController,
    CrossAttentionStore,
    SelfAttentionKV,
    attention_level,
    controlled_attention,
    select_strides,
    token_maps,
)
from magicremover.diffusion import cfg_eps, ddim_step, decode_latents, encode_image, encode_text, unet_eps
from magicremover.errors import ConfigError
from magicremover.images import Resize, fit_mask
from magicremover.inversion import Inversion, InversionConfig
from magicremover.method import guidance as G
from magicremover.method.loop import Step, denoise_two_branches
from magicremover.method.schedule import Plan, edit_start, plan
from magicremover.method.settings import Settings
from magicremover.models import SDComponents
from magicremover.remover_base import InvertingRemover
from magicremover.target_tokens import TargetTokens, find_target
from magicremover.types import RemovalResult, RemovalSample


@dataclass
class _State:
    """What one sample's guidance carries from step to step."""

    target: TargetTokens
    latent_hw: tuple[int, int]
    image_hw: tuple[int, int]
    fixed_mask: torch.Tensor | None  # M₀ (latent res), or the user mask in mask mode
    user_mask: bool
    reference_max: list[torch.Tensor] = field(default_factory=list)  # max₀ per map, from the first guided step


@dataclass
class _Guided:
    """One guided UNet call: ε̂, ε̂_guid (Eq. 12's direction), and the region M it found (latent res, binary or the
    user's mask) — what blending keeps the edit to, whatever weight W the gradient was given."""

    eps: torch.Tensor
    eps_guided: torch.Tensor
    region: torch.Tensor


class MagicRemover(InvertingRemover):
    """Text-guided object removal without tuning (Yang et al.), in its released-code and paper variants.

    Args:
        components: the diffusion model.
        inversion: how to invert the image (null-text by default).
        resize: how to fit the image to the model resolution.
        cache_dir: inversion cache folder (``None``: no cache).
        **settings: the knobs of :class:`~magicremover.method.settings.Settings`.
    """

    settings_type: ClassVar[type[Settings]] = Settings  # what **settings become; their defaults live there
    ports: ClassVar[dict[str, str]] = {"sd3": "magicremover.method.sd3.MagicRemoverSD3"}  # experimental, by family

    def __init__(
        self,
        components: SDComponents,
        inversion: InversionConfig,
        resize: Resize = "stretch",
        cache_dir: str | Path | None = None,
        **settings,
    ):
        super().__init__(components, inversion, resize, cache_dir)
        self.settings = Settings(**settings)
        self.needs_full_trajectory = self.settings.trajectory_correction != "none"
        n_steps, strides = inversion.num_inference_steps, self.settings.map_strides
        if strides is not None and not set(strides) <= components.cross_attention_strides:
            raise ConfigError(
                f"method.map_strides={list(strides)}: this model has cross-attention at strides "
                f"{sorted(components.cross_attention_strides)} only"
            )
        if edit_start(n_steps, self.settings.t_ratio) >= n_steps:  # found now, not after the inversion has run
            raise ConfigError(
                f"method.t_ratio={self.settings.t_ratio} edits none of num_inference_steps={n_steps} steps; "
                "use more steps or a larger t_ratio"
            )

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        c, s = self.components, self.settings
        start, before = time.perf_counter(), c.calls.totals()
        # 1. Inputs at the model resolution; the target is checked before any UNet call.
        target = find_target(c.tokenizer, sample.prompt, sample.target)
        source, image = self.fit(sample)
        user_mask = (
            fit_mask(sample.mask, source.size, tuple(image.shape[-2:]), self.resize)
            if sample.mask and s.use_mask
            else None
        )
        # 2. Inversion (Eq. 6), shared through the cache by every method and ablation.
        inversion, inversion_kv = self._invert(sample, image)
        latent_hw = tuple(inversion.trajectory.shape[-2:])
        # 3. The t = 1 attention of the target: the soft map, and M₀ (or the user's mask, Eq. 13).
        soft, fixed = t1_attention(c, inversion, target, latent_hw, s.mask_threshold, s.map_strides)
        if user_mask is not None:
            fixed = F.interpolate(user_mask, size=latent_hw, mode="bilinear", align_corners=False).to(c.device)
        state = _State(target, latent_hw, tuple(image.shape[-2:]), fixed, user_mask is not None)
        # 4. Two branches from the edit start on.
        steps = plan(
            inversion.timesteps.tolist(),
            s.t_ratio,
            s.guidance_window,
            s.classifier_optimization_window,
            guidance_on=s.attention_guidance,
            optimization_on=s.classifier_optimization,
        )
        z_rec, z_edit, region = self._denoise(inversion, steps, state, inversion_kv)
        # 5. Decode and report.
        calls, seconds = c.calls.since(before, start)
        final_mask = region if region is not None else fixed
        return RemovalResult(
            image=decode_latents(c, z_edit).cpu(),
            reconstruction=decode_latents(c, z_rec).cpu(),
            attention=to_image(soft, state.image_hw),
            mask=to_image(final_mask, state.image_hw) if final_mask is not None else None,
            calls=calls,
            seconds=seconds,
            extras={
                "target_tokens": [list(word) for word in target.words],
                "edit_start_t": steps.timesteps[steps.first_edit],
                "guided_steps": sum(steps.guide),
                "optimization_steps": sum(steps.optimize) * s.classifier_optimization_steps,
                **self.provenance(inversion),
            },
        )

    @torch.no_grad()
    def locate(self, sample: RemovalSample) -> torch.Tensor:
        """How strongly each place of the image attends to the target, before any inversion: ``(1, 1, H, W)`` at the
        image's resolution, in probability units comparable across images (:func:`~magicremover.attention.
        attention_level`, over the layers of ``map_strides``), from one conditional UNet call on the clean latent at
        DDIM's last timestep (where M₀ is read). The locate passes of ``paste.strategy=crop|auto``."""
        c = self.components
        target = find_target(c.tokenizer, sample.prompt, sample.target)
        _, image = self.fit(sample)
        latent = encode_image(c, image)
        t = int(c.scheduler.config.get("steps_offset", 0))  # DDIM's last timestep
        text, latent_hw = encode_text(c, [sample.prompt]), tuple(latent.shape[-2:])
        maps, shapes = cross_attention(c, latent, t, text, latent_hw, "locate", self.settings.map_strides)
        return to_image(attention_level(maps, shapes, target.words, latent_hw), tuple(image.shape[-2:]))

    def _invert(self, sample: RemovalSample, image: torch.Tensor) -> tuple[Inversion, dict | None]:
        """The inversion, and with ``kv_source=inversion`` every self-attention layer's K/V of its DDIM call at each
        edited timestep: ``{t: {layer: (K, V)}}``, each ``(1, heads, L, head_dim)``."""
        if self.settings.kv_source != "inversion":
            return self.invert(sample, image), None
        # Only the edited steps' K/V are kept: the lowest timesteps, the ones inversion visits first.
        n_steps = self.inversion.num_inference_steps
        edited = n_steps - edit_start(n_steps, self.settings.t_ratio)
        recorder, by_timestep = SelfAttentionKV(), {}
        recorder.mode = "record"

        def keep(t: int) -> None:
            if len(by_timestep) < edited:
                by_timestep[t] = dict(recorder.kv)

        with controlled_attention(self.components.unet, recorder):
            inversion = self.invert(sample, image, after_call=keep)
        return inversion, by_timestep

    def _denoise(
        self, inversion: Inversion, steps: Plan, state: _State, inversion_kv: dict | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The denoising loop. Returns the final reconstruction and edit latents ``(1, C, h, w)`` and the region M of
        the last guided step ``(1, 1, h, w)`` (``None`` when no step was guided)."""
        s = self.settings
        kv = SelfAttentionKV(broadcast=inversion_kv is not None)  # the inversion recorded its conditional call only
        # The conditional half: the last entry of a CFG batch, the only one of a folded call (cfg_eps).
        store = CrossAttentionStore(keep_graph=True, batch_index=slice(-1, None), enabled=False)
        branches = _Branches(self, inversion.cond_embedding, steps, state, kv, store, inversion_kv)
        hooks = []
        if s.trajectory_correction != "none":
            hooks.append(branches.correct_trajectory)
        if s.blend:
            hooks.append(branches.blend)
        with (
            controlled_attention(self.components.unet, ComposedController([kv, store])),
            checkpointing(self.components.unet, s.gradient_checkpointing),
        ):
            z_rec, z_edit = denoise_two_branches(
                self.components,
                inversion,
                branches.reconstruct,
                branches.edit,
                hooks,
                shared=lambda index: not steps.edit[index],
            )
        return z_rec, z_edit, branches.region

    def _guided_noise(self, z, t, null, cond, state: _State, store: CrossAttentionStore) -> _Guided:
        """One CFG UNet call with gradients: ε̂, ε̂_guid = ε̂ − s·W⊙∇_z L (Eq. 8/9/13), and the region M."""
        c, s = self.components, self.settings
        z = z.detach().requires_grad_(True)
        store.reset()
        store.enabled = True  # stays on through the backward pass: checkpointed blocks recompute with the same path
        with torch.enable_grad():
            eps = cfg_eps(c, z, t, null, cond, self.inversion.guidance_scale, fold=self.settings.fold_cfg)
            # Each word's map at the latent grid: every chosen layer resized to it, heads and layers summed.
            maps = select_strides(store.maps, store.shapes, state.latent_hw, s.map_strides)
            word_maps = [
                token_maps(maps, store.shapes, word, state.latent_hw).sum(1, keepdim=True)
                for word in state.target.words
            ]
            loss, region = self._loss(word_maps, state)
            grad = torch.autograd.grad(loss, z)[0]
        store.enabled = False
        store.reset()
        mask = (
            state.fixed_mask
            if state.user_mask
            else G.gate_mask(G.latent_region(region, state.latent_hw), state.fixed_mask)
        )
        weight = self._weight(mask, word_maps, state)
        return _Guided(eps.detach(), G.guided_noise(eps.detach(), grad, weight, s.guidance_weight), mask)

    def _loss(self, word_maps: list[torch.Tensor], state: _State) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention loss (Eq. 7 / released code) and its binary region at image resolution; ``word_maps`` are
        at the latent grid."""
        return G.attention_loss(word_maps, state.image_hw, state.reference_max, self.settings)

    def _weight(self, mask: torch.Tensor, word_maps: list[torch.Tensor], state: _State) -> torch.Tensor:
        """W in ε̂ − s·W⊙∇L, at latent resolution (:func:`~magicremover.method.guidance.perturbation_weight`)."""
        return G.perturbation_weight(mask, word_maps, state.user_mask, self.settings)


class _Branches:
    """MagicRemover's two branches and its step hooks for :func:`~magicremover.method.loop.denoise_two_branches`."""

    def __init__(
        self,
        remover: MagicRemover,
        cond,
        steps: Plan,
        state: _State,
        kv: SelfAttentionKV,
        store,
        inversion_kv: dict | None = None,
    ):
        self.remover, self.cond, self.steps, self.state, self.kv, self.store = remover, cond, steps, state, kv, store
        self.inversion_kv = inversion_kv  # {t: {layer: (K, V)}} with kv_source=inversion
        self.c, self.s, self.w = remover.components, remover.settings, remover.inversion.guidance_scale
        self.region = None  # M of the latest guided call; unguided edit steps blend with it, as the released main.py

    def reconstruct(self, step: Step) -> torch.Tensor:
        # Phase A (shared): before the edit start both branches share the reconstruction; with Direct Inversion it is
        # the trajectory itself, no UNet call. Phase B: the reconstruction branch, recording every self-attention
        # layer's K/V for the edit — unless the inversion recorded them (then it is the trajectory too).
        if (step.shared and self.s.trajectory_correction != "none") or self.inversion_kv is not None:
            return step.on_trajectory
        stage, self.kv.mode = ("replay", "off") if step.shared else ("reconstruction", "record")
        with self.c.calls.stage(stage), torch.no_grad():
            return ddim_step(step.z_rec, self._eps(step.z_rec, step), step.alpha_t, step.alpha_prev)

    def edit(self, step: Step) -> torch.Tensor:
        # Phase C: the edit branch; its self-attention uses the reconstruction's K/V (Eq. 10).
        c, s, z = self.c, self.s, step.z_edit
        self.kv.mode = "inject" if s.self_attention_guidance else "off"
        if self.inversion_kv is not None:
            self.kv.kv = self.inversion_kv[step.t]
        if not self.steps.guide[step.index]:
            with c.calls.stage("edit"), torch.no_grad():
                return ddim_step(z, self._eps(z, step), step.alpha_t, step.alpha_prev)
        for _ in range(s.classifier_optimization_steps if self.steps.optimize[step.index] else 0):
            with c.calls.stage("classifier_optimization"):
                guided = self.remover._guided_noise(z, step.t, step.null, self.cond, self.state, self.store)
                z = ddim_step(z, guided.eps, step.alpha_t, step.alpha_t, eps_direction=guided.eps_guided)  # Eq. 11–12
        with c.calls.stage("edit"):
            guided = self.remover._guided_noise(z, step.t, step.null, self.cond, self.state, self.store)
            z_next = ddim_step(z, guided.eps, step.alpha_t, step.alpha_prev, eps_direction=guided.eps_guided)  # Eq. 12
        self.region = guided.region
        return z_next

    def correct_trajectory(self, step: Step) -> None:
        """Direct Inversion: the reconstruction put back on the inversion trajectory; with ``both``, the edit moved
        by the same correction."""
        if step.shared:
            return
        correction = step.on_trajectory - step.z_rec_next
        step.z_rec_next = step.on_trajectory
        if self.s.trajectory_correction == "both":
            step.z_edit_next = step.z_edit_next + correction

    def blend(self, step: Step) -> None:
        """Phase D: outside the region M, keep the reconstruction (released code; not in the paper)."""
        if not step.shared and self.region is not None:
            step.z_edit_next = self.region * step.z_edit_next + (1 - self.region) * step.z_rec_next

    def _eps(self, z: torch.Tensor, step: Step) -> torch.Tensor:
        return cfg_eps(self.c, z, step.t, step.null, self.cond, self.w, fold=self.s.fold_cfg)


@torch.no_grad()
def t1_attention(
    c: SDComponents,
    inversion: Inversion,
    target: TargetTokens,
    latent_hw: tuple[int, int],
    threshold: float,
    strides: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's attention on the inversion latent at the last timestep (t = 1), as the released code builds M₀.

    One conditional UNet call; the map is :func:`~magicremover.method.guidance.fixed_mask_map` over the layers of
    ``strides`` (``Settings.map_strides``).

    Returns:
        ``(soft, fixed)``: the soft map in [0, 1] and M₀ = soft > ``threshold``, both ``(1, 1, h, w)``.
    """
    latent, t = inversion.trajectory[1:2], int(inversion.timesteps[-1])
    maps, shapes = cross_attention(c, latent, t, inversion.cond_embedding, latent_hw, "attention_mask", strides)
    soft = G.fixed_mask_map(maps, shapes, target.words, latent_hw)
    return soft, (soft > threshold).float()


@torch.no_grad()
def cross_attention(
    c: SDComponents,
    latent,
    t: int,
    cond: torch.Tensor,
    latent_hw: tuple[int, int],
    stage: str,
    strides: tuple[int, ...] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """One conditional UNet call on ``latent``: its cross-attention probabilities ``(1, heads, h*w, T)`` and query
    grids ``(h, w)`` per layer, over the layers of ``strides`` (``None``: every layer)."""
    store = CrossAttentionStore()
    with controlled_attention(c.unet, store), c.calls.stage(stage):
        unet_eps(c, latent, t, cond)
    return select_strides(store.maps, store.shapes, latent_hw, strides), store.shapes


@contextmanager
def checkpointing(model, enabled: bool):
    """Recompute the UNet's (or a transformer's) activations in backward instead of keeping them (same results, ~1/3 of
    the guided-step memory on the UNet)."""
    before = model.is_gradient_checkpointing
    if enabled:
        model.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if enabled and not before:
            model.disable_gradient_checkpointing()


def to_image(mask: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """A latent-grid map ``(1, 1, h, w)`` at the image's size, in [0, 1], on the CPU."""
    return F.interpolate(mask.float(), size=image_hw, mode="bilinear", align_corners=False).clamp(0, 1).cpu()
