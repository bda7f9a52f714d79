"""Which denoising steps edit, get guidance, and get classifier optimisation."""

from __future__ import annotations

from dataclasses import dataclass

from magicremover.errors import ConfigError


@dataclass(frozen=True)
class Window:
    """An open timestep interval ``low < t < high``; ``None`` leaves a side unbounded."""

    low: int | None = None
    high: int | None = None

    def __contains__(self, t: int) -> bool:
        return (self.low is None or t > self.low) and (self.high is None or t < self.high)

    @classmethod
    def parse(cls, value, name: str) -> "Window":
        if isinstance(value, Window):
            return value
        if value is None:
            return cls()
        if len(value) != 2:
            raise ConfigError(f"{name}={list(value)} must be [low, high] (either may be null)")
        low, high = value
        if low is not None and high is not None and low >= high:
            raise ConfigError(f"{name}=[{low}, {high}] is empty: low must be below high")
        return cls(low, high)


def edit_start(n_steps: int, t_ratio: float) -> int:
    """Index of the first edited step: the released code edits the last ``int(t_ratio · N)`` steps.

    t_ratio 0.85 at N = 50 → index 8 (t = 821); 0.9 → index 5 (t = 881); 1.0 → 0 (edit from z_T).
    """
    if not 0 < t_ratio <= 1:
        raise ConfigError(f"method.t_ratio={t_ratio} must be in (0, 1]")
    return n_steps - int(t_ratio * n_steps)


@dataclass(frozen=True)
class Plan:
    """Per-step roles for one run: ``edit[i]``, ``guide[i]``, ``optimize[i]`` for step i of ``timesteps``."""

    timesteps: tuple[int, ...]
    edit: tuple[bool, ...]
    guide: tuple[bool, ...]
    optimize: tuple[bool, ...]

    @property
    def first_edit(self) -> int:
        return self.edit.index(True)


def plan(
    timesteps: list[int],
    t_ratio: float,
    guidance: Window,
    optimization: Window,
    guidance_on: bool = True,
    optimization_on: bool = True,
) -> Plan:
    """Lay out the roles of every step. Optimisation happens only on guided steps, guidance only on edited ones."""
    start = edit_start(len(timesteps), t_ratio)
    edit = tuple(i >= start for i in range(len(timesteps)))
    guide = tuple(guidance_on and e and t in guidance for e, t in zip(edit, timesteps))
    optimize = tuple(g and optimization_on and t in optimization for g, t in zip(guide, timesteps))
    return Plan(tuple(timesteps), edit, guide, optimize)
