"""What every command-line entry point shares: output folder, quiet loaders, one-line user errors."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from magicremover.errors import UserError

log = logging.getLogger("magicremover")


def find_user_error(err: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``err`` (Hydra wraps errors raised while instantiating configs)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def run_dir(out_dir: str | None, default: str) -> str:
    """Hydra's run directory (``conf/shared.yaml``): ``out_dir`` when given and usable, so a run with ``out_dir=``
    leaves no ``outputs/<job>/<time>/`` folder behind; else ``default``. An ``out_dir`` that is a file or cannot be
    created gets ``default``, so that the job itself refuses it in one line (Hydra would fail with a traceback)."""
    if not out_dir:
        return default
    path = Path(out_dir).expanduser().absolute()
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    usable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
    return str(out_dir) if usable else default


OmegaConf.register_new_resolver("run_dir", run_dir, replace=True)


def split_path_hint(argv: list[str]) -> str | None:
    """A hint for a command line whose path was split at a space (``image=my photos/a.png`` unquoted): an argument
    that is no ``key=value`` override nor a flag, right after an override. ``None`` when the line looks fine."""
    for previous, argument in zip(argv, argv[1:]):
        if "=" in previous and not previous.startswith("-") and "=" not in argument and argument[:1] not in "-~":
            key, value = previous.split("=", 1)
            return (
                f"'{argument}' is not a key=value override: a path with spaces must be quoted, e.g. "
                f'{key}="{value} {argument}"'
            )
    return None


def check_argv(argv: list[str] = sys.argv) -> None:
    """Exit 2 with :func:`split_path_hint` before Hydra parses a command line it would reject with a lexer error."""
    hint = split_path_hint(argv[1:])
    if hint:
        print(f"error: {hint}", file=sys.stderr)
        sys.exit(2)


class OneSacctWarning(logging.Filter):
    """submitit polls ``sacct`` for job states; on a cluster without accounting every poll fails and it warns again
    (24 times in a two-shard toy run). The first warning stays, saying the rest are not shown; repeats are dropped.
    Job states then come from submitit's own files, which is how the launcher still finishes."""

    def __init__(self):
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if self.said:
            return False
        self.said = True
        record.msg, record.args = f"{record.getMessage()} (SLURM accounting off? Later sacct errors are not shown.)", ()
        return True


def quiet_sacct() -> None:
    """Install :class:`OneSacctWarning` on submitit's logger (the launcher's process; harmless without SLURM)."""
    logger = logging.getLogger("submitit")
    if not any(isinstance(f, OneSacctWarning) for f in logger.filters):
        logger.addFilter(OneSacctWarning())


def output_dir(cfg: DictConfig) -> Path:
    """``out_dir=`` when given, else the Hydra run directory."""
    return Path(cfg.out_dir) if cfg.get("out_dir") else Path(HydraConfig.get().runtime.output_dir)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_NUM_THREADS")


def cpu_threads(environ=os.environ, cores: int | None = None) -> int | None:
    """The torch thread count the entry points use when the user set none: one fewer than the cores this process may
    run on (SLURM's cpuset included), at least one. Torch's default, every core, collapses ~40× as soon as another
    process takes one of them (measured: ``python -m magicremover.experiments.benchmark --threads``). ``None`` when the user chose.
    """
    if any(environ.get(name) for name in THREAD_VARIABLES):
        return None
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, cores - 1)


def apply_thread_default() -> None:
    """Set torch's CPU threads to :func:`cpu_threads` unless the user chose a count."""
    import torch

    threads = cpu_threads()
    if threads is not None:
        torch.set_num_threads(threads)
        log.debug("torch uses %d CPU threads (set OMP_NUM_THREADS to choose)", threads)


def run_entry_point(job: Callable[[DictConfig, Path], object], cfg: DictConfig):
    """Run ``job(cfg, out_dir)`` and return what it returns; a user error becomes ``error: <one line>`` on stderr and
    exit status 2. Torch's CPU threads follow :func:`cpu_threads` unless the user set a count."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    apply_thread_default()

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        return job(cfg, output_dir(cfg))
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a user error
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
