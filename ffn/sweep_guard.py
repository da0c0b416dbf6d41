"""A sweep's folder and its interruption: one sweep per folder, and a signal that ends it cleanly.

- The sweep folder is locked while its sweep runs: a second sweep into it gets one line, exit 2;
  a folder that holds an earlier sweep is refused unless `trainer.resume=auto` continues it
  (finished jobs are kept, interrupted ones resume, the rest start).
- SIGINT/SIGTERM to the sweep (Ctrl-C to its process group, or a scheduler's SIGTERM to the
  parent alone): the running jobs checkpoint and end `interrupted`, jobs not yet started are not
  run (a marker file tells the joblib workers), the summary is written for what finished and
  names the jobs that did not run, and the sweep exits 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ffn import interrupt, run_record

MARKER = ".ffn-interrupted"  # in the sweep folder: the signal that stopped the sweep
HOW_STARTED = ("trainer.resume",)


class SweepFolder:
    """The claim on a sweep folder for the life of the sweep (in the sweep's parent process)."""

    def __init__(self, config: DictConfig) -> None:
        self.dir = Path(config.hydra.sweep.dir)
        self._stack = contextlib.ExitStack()
        interrupt.catch_early()
        try:
            self._stack.enter_context(run_record.locked(self.dir))
        except run_record.FolderBusy as busy:
            _refuse(
                "hydra.sweep.dir",
                self.dir,
                f"a folder no other sweep is writing ({busy.holder} is)",
            )
        resume = OmegaConf.select(config, "trainer.resume", default=False)
        if resume is False and holds_sweep(self.dir):
            _refuse(
                "hydra.sweep.dir",
                self.dir,
                "a folder that holds no sweep yet (it holds one: continue it with the same "
                "command and trainer.resume=auto, or choose another hydra.sweep.dir)",
            )
        (self.dir / MARKER).unlink(missing_ok=True)
        if "joblib" in str(OmegaConf.select(config, "hydra.launcher._target_", default="")).lower():
            interrupt.forward_signals(self._stop_workers)

    def _stop_workers(self, signum: int) -> None:
        """Tell joblib's workers: the running jobs checkpoint, the others are not run."""
        with contextlib.suppress(OSError):
            run_record.write_bytes(self.dir / MARKER, f"{signum}\n".encode())
        for pid in _loky_workers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def stopped_by(self) -> int | None:
        """The signal that stopped the sweep, if one did (here or in a worker)."""
        if interrupt.PENDING:
            return interrupt.PENDING.signum
        try:
            return int((self.dir / MARKER).read_text().strip() or signal.SIGTERM)
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        (self.dir / MARKER).unlink(missing_ok=True)
        self._stack.close()


def holds_sweep(folder: Path) -> bool:
    """Whether an earlier sweep wrote into `folder` (its multirun.yaml, or a job's record)."""
    if (folder / "multirun.yaml").exists():
        return True
    return any(run_record.has_record(p) for p in folder.iterdir() if p.is_dir())


def sweep_overrides(params: Any, task_overrides: Any) -> dict[str, Any]:
    """key -> its parsed override, from hydra.sweeper.params and the command line's overrides.

    A later override of a key replaces an earlier one, as the sweeper's own split_arguments does;
    `.is_sweep_override()` says which keys are swept. Raises on a syntax Hydra's parser refuses.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{k}={v}" for k, v in (params or {}).items()] + list(task_overrides)
    return {o.key_or_group: o for o in OverridesParser.create().parse_overrides(arguments)}


def basic_sweep_grid(params: Any, task_overrides: Any) -> list[list[str]]:
    """The basic sweeper's jobs, each as its overrides, in the order it runs them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    overrides = list(sweep_overrides(params, task_overrides).values())
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides under the basic sweeper; None for sweepers that choose as they go."""
    if "BasicSweeper" not in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")):
        return None
    try:
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        return basic_sweep_grid(params, config.hydra.overrides.task)
    except Exception:  # a sweep syntax this cannot expand (glob): the count is unknown
        return None


def jobs_not_run(config: DictConfig, sweep_dir: Path) -> list[str] | None:
    """The planned jobs whose folder holds no record: each as its overrides, space-separated."""
    planned = planned_jobs(config)
    if planned is None:
        return None
    ran = []
    for folder in sweep_dir.iterdir():
        overrides = folder / run_record.HYDRA_RECORD / "overrides.yaml"
        if folder.is_dir() and run_record.has_record(folder) and overrides.exists():
            ran.append(_key(list(OmegaConf.load(overrides))))
    swept = [i for i in range(len(planned[0])) if len({job[i] for job in planned}) > 1]
    missing = []
    for job in planned:
        if _key(job) in ran:
            ran.remove(_key(job))
        else:  # named by the overrides that differ between jobs, as the summary's columns
            missing.append(" ".join(job[i] for i in swept) or " ".join(job))
    return missing


def interrupted_report(signum: int, runs: list[Any], not_run: list[str] | None) -> str:
    """`ffn: sweep interrupted by SIGTERM: ...` and one line a job that did not finish."""
    name = signal.Signals(signum).name
    stopped = [run for run in runs if run.status == "interrupted"]
    lines = [
        f"ffn: sweep interrupted by {name}: {len(runs) - len(stopped)} jobs ended, "
        f"{len(stopped)} interrupted, "
        + (f"{len(not_run)} not run" if not_run is not None else "the jobs not started not run")
        + "; the same command with trainer.resume=auto continues it"
    ]
    lines += [f"  interrupted: {run.path}" for run in stopped]
    lines += [f"  not run: {job}" for job in not_run or []]
    return "\n".join(lines)


def _key(overrides: list[str]) -> tuple[str, ...]:
    return tuple(sorted(o for o in overrides if not _is_how_started(o)))


def _is_how_started(override: str) -> bool:
    return override.partition("=")[0].lstrip("+~") in HOW_STARTED


def _loky_workers() -> list[int]:
    """Pids of this process's loky worker children (not loky's resource tracker)."""
    me, pids = os.getpid(), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and b"loky" in cmdline and b"resource_tracker" not in cmdline:
            pids.append(int(entry.name))
    return pids


def _refuse(key: str, folder: Path, allowed: str) -> None:
    from ffn.errors import ConfigError

    print(f"ffn: error: {ConfigError(key, str(folder), allowed)}", file=sys.stderr, flush=True)
    sys.exit(2)
