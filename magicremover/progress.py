"""Progress that shows wherever the job runs: a tqdm bar on a terminal, and plain log lines (done/total, rate, ETA,
failures) in logs without a terminal — SLURM output, Hydra's log file — where a bar is invisible or garbage."""

from __future__ import annotations

import logging
import time

from tqdm.auto import tqdm


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """Progress over ``total`` items of which ``done`` were finished by an earlier run.

    Args:
        total: items of the whole job.
        desc: what the items are (``"samples"``, ``"images"``).
        logger: where the plain lines go (Hydra also copies them into the run's log file).
        every: seconds between log lines; 0 logs every item. The last item is always logged.
        done: items already finished (resumed runs): counted in ``done/total``, not in the rate.
        clock: the time source (tests pass a fake one).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        logger: logging.Logger,
        every: float = 60.0,
        done: int = 0,
        clock=time.monotonic,
    ):
        self.total, self.desc, self.logger, self.every, self.clock = total, desc, logger, every, clock
        self.done, self.failed, self.new = done, 0, 0
        self.start = self.last_log = clock()
        self.bar = tqdm(total=total, initial=done, desc=desc, disable=None, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def eta(self) -> float | None:
        """Seconds left at the rate of this run's finished items; ``None`` before the first."""
        if self.new == 0:
            return None
        return (self.clock() - self.start) / self.new * (self.total - self.done)

    def line(self, note: str = "") -> str:
        """``images 3/5 (60%) · 1.2 /h · ETA 1h40m · 1 failed · <note>``."""
        elapsed = max(self.clock() - self.start, 1e-9)
        parts = [f"{self.desc} {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%)"]
        if self.new:
            rate = self.new / elapsed * 3600
            parts.append(f"{rate:.1f} /h" if rate < 100 else f"{rate:.0f} /h")
            parts.append("ETA " + _duration(self.eta()) if self.done < self.total else "done in " + _duration(elapsed))
        if self.failed:
            parts.append(f"{self.failed} failed")
        return " · ".join(parts + ([note] if note else []))

    def update(self, ok: bool = True, note: str = "") -> None:
        """One more item finished (``ok=False``: it failed and was recorded as such)."""
        self.done, self.new, self.failed = self.done + 1, self.new + 1, self.failed + (not ok)
        self.bar.update(1)
        now = self.clock()
        if self.done >= self.total or now - self.last_log >= self.every:
            self.last_log = now
            self.logger.info(self.line(note))
