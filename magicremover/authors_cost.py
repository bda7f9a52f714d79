"""UNet call counts of the authors' released code, derived from its schedule (its main.py), for side-by-side reports.

A "call" is one UNet invocation (a CFG pass with batch 2 counts once), as :class:`~magicremover.unet_calls.UNetCalls`
counts ours.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AuthorsCost:
    """Calls and backward passes of one run of the authors' code on one image."""

    null_text_calls: int
    null_text_backward: int
    edit_calls: int
    edit_backward: int

    @property
    def calls(self) -> int:
        return self.null_text_calls + self.edit_calls


def authors_cost(
    n_steps: int = 50,
    t_ratio: float = 0.85,
    inner_steps: int = 10,
    guidance_min_t: int = 11,
    optimization_min_t: int = 500,
    coco_script: bool = False,
) -> AuthorsCost:
    """Worst-case (no early stop) UNet calls of ``main.py`` (or the COCO script) for one image.

    Null-text stage: N DDIM-inversion calls, then per step 1 conditional call, ``inner_steps`` calls with backward and
    1 CFG call to advance: N (3 + k). Edit stage: replay above t_idx, one M₀ pass, per edited step one reconstruction
    call, one guided call with backward while t > 11 (a plain call otherwise), one extra call with backward while
    t > 500; the COCO script also re-runs the N-call DDIM inversion. Defaults give 650 + 110 (and 650 + 166 for
    ``coco_script=True, t_ratio=0.9``), the figures in docs/performance.md.
    """
    step = 1000 // n_steps
    timesteps = [1 + step * k for k in range(n_steps)][::-1]
    start = n_steps - int(t_ratio * n_steps)
    edited = timesteps[start:]
    guided = [t for t in edited if t > guidance_min_t]
    optimized = [t for t in guided if t > optimization_min_t]
    edit_calls = start + 1 + len(edited) + len(edited) + len(optimized) + (n_steps if coco_script else 0)
    return AuthorsCost(
        null_text_calls=n_steps * (3 + inner_steps),
        null_text_backward=n_steps * inner_steps,
        edit_calls=edit_calls,
        edit_backward=len(guided) + len(optimized),
    )
