"""MagicRemover's settings: every knob a preset, an ablation or a sweep sets (``method.<key>=``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from magicremover.errors import ConfigError
from magicremover.method.schedule import Window


@dataclass(frozen=True)
class Settings:
    """Knobs of :class:`~magicremover.method.MagicRemover`. Defaults are the released code (``method=magicremover``).

    Attributes:
        t_ratio: fraction of the DDIM steps that are edited (0.85 → t ≤ 821 at 50 steps); earlier steps replay the
            null-text reconstruction, shared by both branches. 1.0 edits from z_T (the paper preset).
        guidance_window: ``[low, high]``: attention guidance at ``low < t < high`` (null = unbounded).
        classifier_optimization_window: ``[low, high]`` of the extra same-t step.
        classifier_optimization_steps: extra steps per guided timestep (N_opt).
        loss: ``top_quantile_mse`` (released code) or ``relaxed_l1`` (paper Eq. 7).
        lambda_: λ — the quantile of the top region (code) or the relaxation level (paper); 0.8.
        map_scale: Â = A / max₀ · map_scale (15 in the released code).
        mask_threshold: M₀ = normalised t = 1 attention > threshold (0.25; 0.3 in the COCO script).
        map_strides: the cross-attention layers M_t and M₀ read, by their grid's stride below the latent grid
            (SD 1.5 at 512²: 1, 2, 4, 8 = 64² … 8²; SDXL at 1024²: 2, 4 = 64², 32²); ``None``: every layer (the
            released code; on the toy model the coarse grid alone removes worse, the fine one alone no better:
            ``docs/method.md``).
        reweight: ``mask`` (binary gate M = top region ∪ M₀, released code) or ``attention`` (Eq. 8/9).
        multiword: ``product_map`` (one loss on Π_n A_n, released code) or ``sum_of_losses`` (Eq. 9: ∇ Σ_n g_n).
        blend: after each edited step keep the reconstruction latent outside M (released code; not in the paper).
        guidance_weight: s in ε̂ − s·W⊙∇L (1 in the released code).
        attention_guidance: master switch of the attention loss (off: the edit branch only denoises).
        relax_constraints: ablation "w/o Re" when False: λ = 0, every pixel is pulled to the minimum.
        reweight_perturbation: ablation "w/o Rp" when False: the gradient acts everywhere (W = 1).
        self_attention_guidance: ablation "w/o Sg" when False: no K/V injection from the reconstruction (Eq. 10).
        classifier_optimization: ablation "w/o Co" when False: no extra same-t step.
        use_mask: mask mode (App. A.4, Eq. 13): a sample's mask, when it has one, replaces M₀. Off by default, so the
            masks an evaluation dataset carries for mask-based baselines do not turn the text-only method into a
            masked one; ``magicremover.experiments.remove mask=PATH`` turns it on.
        gradient_checkpointing: recompute UNet activations during the guided backward pass instead of storing them:
            identical results, far less memory (see the README's Performance section), some extra compute.
        fold_cfg: when the unconditional and conditional embeddings are equal (negative-prompt inversion: the null
            embedding is the prompt's), run one batch-1 UNet call instead of the CFG batch of two identical halves,
            since ε_u + w (ε_c − ε_u) = ε_c: the same output to float noise for half the UNet work. No effect when they
            differ (null-text inversion).
        trajectory_correction: Direct Inversion (Ju et al., 2024), no optimisation: ``reconstruction`` puts the
            reconstruction branch back on the inversion trajectory after every step (exact reconstruction, and the
            replay before the edit start needs no UNet call); ``both`` also adds that step's correction to the edit
            branch. ``none``: the released code (null-text inversion makes the reconstruction close instead).
        kv_source: where Eq. 10's K/V come from. ``reconstruction``: the reconstruction branch's UNet call at the
            same step (released code). ``inversion``: the DDIM-inversion call at the same timestep t (conditional,
            on the inversion latent one step below z_t), recorded while inverting, so the reconstruction branch runs
            no UNet call; needs ``trajectory_correction=reconstruction`` (the trajectory is the reconstruction) and
            inverts afresh (K/V are too large to cache: about 90 MB per edited step at SD-1.5 size and 512² in fp32,
            3.9 GB held for the 42 edited steps of 50, on the model's device).
    """

    t_ratio: float = 0.85
    guidance_window: Window = Window(11, None)
    classifier_optimization_window: Window = Window(500, None)
    classifier_optimization_steps: int = 1
    loss: Literal["top_quantile_mse", "relaxed_l1"] = "top_quantile_mse"
    lambda_: float = 0.8
    map_scale: float = 15.0
    mask_threshold: float = 0.25
    map_strides: tuple[int, ...] | None = None
    reweight: Literal["mask", "attention"] = "mask"
    multiword: Literal["product_map", "sum_of_losses"] = "product_map"
    blend: bool = True
    guidance_weight: float = 1.0
    attention_guidance: bool = True
    relax_constraints: bool = True
    reweight_perturbation: bool = True
    self_attention_guidance: bool = True
    classifier_optimization: bool = True
    use_mask: bool = False
    gradient_checkpointing: bool = True
    fold_cfg: bool = True
    trajectory_correction: Literal["none", "reconstruction", "both"] = "none"
    kv_source: Literal["reconstruction", "inversion"] = "reconstruction"

    def __post_init__(self) -> None:
        object.__setattr__(self, "guidance_window", Window.parse(self.guidance_window, "method.guidance_window"))
        window = Window.parse(self.classifier_optimization_window, "method.classifier_optimization_window")
        object.__setattr__(self, "classifier_optimization_window", window)
        choices = {
            "loss": ("top_quantile_mse", "relaxed_l1"),
            "reweight": ("mask", "attention"),
            "multiword": ("product_map", "sum_of_losses"),
            "trajectory_correction": ("none", "reconstruction", "both"),
            "kv_source": ("reconstruction", "inversion"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"method.{key}={getattr(self, key)} is not one of {', '.join(allowed)}")
        for key in ("t_ratio", "lambda_", "map_scale", "mask_threshold", "guidance_weight"):
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"method.{key}={getattr(self, key)} must be a finite number")
        if self.kv_source == "inversion" and self.trajectory_correction != "reconstruction":
            raise ConfigError(
                "method.kv_source=inversion runs no reconstruction branch: "
                "set method.trajectory_correction=reconstruction (the inversion trajectory stands in for it)"
            )
        if not 0 <= self.lambda_ < 1:
            raise ConfigError(f"method.lambda_={self.lambda_} must be in [0, 1)")
        if self.map_strides is not None:
            strides = tuple(self.map_strides)
            if not strides or any(not isinstance(k, int) or k < 1 for k in strides):
                raise ConfigError(
                    f"method.map_strides={list(strides)} must be positive integers, or null for every layer"
                )
            object.__setattr__(self, "map_strides", strides)
        if not 0 <= self.mask_threshold < 1:
            raise ConfigError(f"method.mask_threshold={self.mask_threshold} must be in [0, 1)")
        if self.classifier_optimization_steps < 0 or self.map_scale <= 0:
            raise ConfigError("method.classifier_optimization_steps must be ≥ 0 and method.map_scale > 0")

    @property
    def effective_lambda(self) -> float:
        return self.lambda_ if self.relax_constraints else 0.0
