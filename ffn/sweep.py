"""The sweep callback: every job runs, every failure is recorded, and a summary ends the sweep.

Registered in conf/config.yaml under `hydra.callbacks`. Hydra's own handling of a failed job
does not fit a sweep whose jobs may raise or diverge:

- the basic sweeper re-raises the first job's exception after its batch, so later batches and
  `on_multirun_end` never run. Here a job that raised is handed back to the sweeper as a
  finished job returning NaN; the sweep goes on and exits with status 1 at the end, naming the
  jobs that failed;
- the Optuna sweeper crashes on a NaN objective (hydra-optuna-sweeper 1.2/1.3 tells the study
  the value twice). Under it, a NaN (a diverged job) is handed back as a failed job instead:
  Optuna records a failed trial, and `max_failure_rate` decides whether the study stops.

A failed job also gets its traceback in its own log, `status: failed` in its metrics.json and an
HParams session ending in failure, so it shows in TensorBoard like any other run.
On joblib's launcher each job's torch threads are set so that n_jobs x threads fits the cores.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ffn import interrupt, launch_env, run_record
from ffn.report import Summary, to_markdown, write_report, written_files
from ffn.sweep_guard import (
    SweepFolder,
    basic_sweep_grid,
    interrupted_report,
    jobs_not_run,
    sweep_overrides,
)

log = logging.getLogger(__name__)


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

# The sweep in progress in this process (callback, config), for a sweeper that raises at the end
ACTIVE: tuple[SummaryCallback, DictConfig] | None = None


class JobDiverged(RuntimeError):
    """What the Optuna sweeper is handed for a diverged job, so that it fails the trial."""


class SummaryCallback(Callback):
    """Hydra callback: per-job failure handling, and summary.csv/.md/.png at the end of a sweep."""

    def __init__(self, plot: bool = True, exit_on_failure: bool = True) -> None:
        self.plot = plot
        self.exit_on_failure = exit_on_failure
        self._job_started = time.time()
        self._folder: SweepFolder | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Sent to joblib's workers without the sweep folder's lock, which stays here."""
        return {**self.__dict__, "_folder": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global ACTIVE
        world = launch_env.place().size > 1
        if world:  # under torchrun rank 0 owns the sweep folder; it claims it first
            from ffn import distributed  # torch: imported only in a world of several

        if not launch_env.is_writer():  # (Hydra writes the same multirun.yaml on every rank)
            try:
                distributed.world().wait("sweep_claimed")
            except interrupt.Interrupted as stopped:  # rank 0 refused the folder and ended
                sys.exit(stopped.flag.exit_code)
            return
        self._folder = SweepFolder(config)  # one sweep per folder; signals end it cleanly
        if world:
            distributed.world().post("sweep_claimed", {})
        ACTIVE = (self, config)
        loader = _hydra_config_loader()
        # the basic sweeper validates each batch before launching it (Optuna's does not)
        if loader is not None and str(config.hydra.sweeper._target_) == BASIC_SWEEPER:
            from ffn.ensemble.compose import compose_by_template

            # a job that differs from a composed one in values only (optimizer.lr=0.01) is
            # derived from it, as the ensemble launcher's members are: 5 ms, not a composition
            compose_by_template(loader)
            compose_each_job_once(loader)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._job_started = time.time()
        numbered = config.hydra.mode == RunMode.MULTIRUN and config.hydra.job.get("num") is not None
        if numbered and launch_env.is_writer():
            # stderr, not the log: the job's own log file is not attached yet
            print(progress_line(config), file=sys.stderr, flush=True)
        if "JoblibLauncher" in str(config.hydra.launcher.get("_target_", "")):
            set_threads_for_parallel_jobs(config)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED and launch_env.is_writer():
            try:
                record_failure(run_dir, job_return, time.time() - self._job_started)
            except Exception as error:  # a record that cannot be written must not stop the sweep
                log.warning("could not record the failure in %s: %r", run_dir, error)
        if config.hydra.mode == RunMode.MULTIRUN:
            hand_back(job_return, optuna="optuna" in str(config.hydra.sweeper._target_).lower())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global ACTIVE
        ACTIVE = None
        if not launch_env.is_writer():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        summaries = write_report(sweep_dir, plot=self.plot)  # ranked as ffn-report ranks
        # print, not log: the last job's log file is still attached to the root logger here
        print(to_markdown(summaries), end="", flush=True)
        written = written_files(summaries, self.plot)
        print(f"written to {sweep_dir}: {', '.join(written)}", flush=True)
        signum = self._folder.stopped_by() if self._folder is not None else None
        if self._folder is not None:
            self._folder.release()
        if signum is not None:
            runs = [run for summary in summaries for run in summary.runs]
            report = interrupted_report(signum, runs, jobs_not_run(config, sweep_dir))
            with open(sweep_dir / "summary.md", "a") as f:
                f.write("\n" + report.removeprefix("ffn: ") + "\n")
            print(report, file=sys.stderr, flush=True)
            sys.exit(128 + signum)
        if any(summary.failed for summary in summaries):
            print(failure_report(summaries), file=sys.stderr, flush=True)
            if self.exit_on_failure:
                sys.exit(1)


def end_after_sweeper_error(error: BaseException) -> None:
    """A sweeper that raised after its jobs (Optuna with no completed trial): summary, exit 1."""
    global ACTIVE
    if ACTIVE is None:
        return
    callback, config = ACTIVE
    callback.on_multirun_end(config)  # the summary of what ran; exits if jobs failed
    first = (str(error).splitlines() or [type(error).__name__])[0]
    sweep_dir = config.hydra.sweep.dir
    print(f"ffn: error: the sweep in {sweep_dir} ended without a result: {first}", file=sys.stderr)
    sys.exit(1)


def _hydra_config_loader() -> Any:
    """The config loader of the Hydra app running in this process (the sweeper's), or None."""
    from hydra.core.global_hydra import GlobalHydra

    hydra_app = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    return getattr(hydra_app, "config_loader", None)


def compose_each_job_once(loader: Any) -> None:
    """One composition a job where Hydra's basic sweeper makes two (`load_sweep_config`'s callers).

    The sweeper composes every job of a batch to refuse a bad one before any runs
    (`validate_batch_is_legal`), then its launcher composes each again to run it: 0.3-0.8 s a
    job on a 2-core machine. Here the first call gets a copy (the validation drops it) and the
    config itself is kept for the next call with the same overrides, the launcher's, once
    (popped: the launcher sets hydra.job.id/num on it, and no one else holds it). A copy
    (ffn.compose.config_copy: 1.6 ms) costs a two-hundredth of a composition, and
    whoever calls first, each caller gets a config of its own.
    """
    if getattr(loader.load_sweep_config, "composes_once", False):
        return
    from ffn.compose import config_copy

    compose = loader.load_sweep_config
    composed: dict[tuple[int, tuple[str, ...]], DictConfig] = {}

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        if key in composed:
            return composed.pop(key)
        config = compose(master_config=master_config, sweep_overrides=sweep_overrides)
        composed[key] = config
        return config_copy(config)  # with the resolver cache: ${now:} resolves the same

    load_sweep_config.composes_once = True  # type: ignore[attr-defined]
    # compose_by_template's mark, so that the launcher's own call does not wrap it again
    load_sweep_config.derives_values = getattr(compose, "derives_values", False)  # type: ignore[attr-defined]
    loader.load_sweep_config = load_sweep_config


def progress_line(config: DictConfig) -> str:
    """`ffn: job 4 of 36 (model=tanh optimizer.lr=0.1); 3 done in 12s, about 2m24s left`.

    Read from the sweep folder, so it holds under parallel launchers too: the sweep started when
    Hydra wrote multirun.yaml, and a job is done once its metrics.json no longer says running.
    """
    sweep_dir = Path(config.hydra.sweep.dir)
    total, swept = sweep_plan(sweep_dir / "multirun.yaml")
    number = int(config.hydra.job.num) + 1
    mine = [o for o in config.hydra.overrides.task if o.split("=", 1)[0] in swept]
    overrides = " ".join(mine or config.hydra.overrides.task)
    line = f"ffn: job {number}{f' of {total}' if total else ''} ({overrides})"
    try:
        elapsed = time.time() - (sweep_dir / "multirun.yaml").stat().st_mtime
    except OSError:
        return line
    done = sum(
        1
        for path in sweep_dir.glob(f"*/{run_record.METRICS_JSON}")
        if run_record.read_record(path.parent)["status"] != run_record.UNRECORDED
    )
    if done:
        line += f"; {done} done in {_duration(elapsed)}"
        if total and total > done:
            line += f", about {_duration(elapsed / done * (total - done))} left"
    return line


# multirun.yaml's plan, by (path, mtime, size): read and expanded once a sweep, not once a job
_PLANS: dict[tuple[str, int, int], tuple[int | None, set[str]]] = {}


def sweep_plan(multirun_yaml: Path) -> tuple[int | None, set[str]]:
    """How many jobs the sweep has (its grid, or Optuna's n_trials) and the keys it sweeps."""
    try:
        stat = multirun_yaml.stat()
    except OSError:
        return None, set()
    key = (str(multirun_yaml), stat.st_mtime_ns, stat.st_size)
    if key not in _PLANS:
        _PLANS.clear()
        _PLANS[key] = _read_plan(multirun_yaml)
    total, swept = _PLANS[key]
    return total, set(swept)


def _read_plan(multirun_yaml: Path) -> tuple[int | None, set[str]]:
    from omegaconf import OmegaConf

    try:
        sweep = OmegaConf.load(multirun_yaml)
        sweeper = sweep.hydra.sweeper
        params, task = sweeper.get("params"), sweep.hydra.overrides.task
        parsed = sweep_overrides(params, task)
        swept = {key for key, o in parsed.items() if o.is_sweep_override()}
        if "n_trials" in sweeper:
            return int(sweeper.n_trials), swept
        return len(basic_sweep_grid(params, task)), swept
    except Exception:  # a progress line is not worth failing a job for
        return None, set()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def hand_back(job_return: JobReturn, optuna: bool) -> None:
    """Make the job's return something the sweeper carries on from (see the module docstring)."""
    if optuna:
        value = job_return._return_value
        if job_return.status == JobStatus.COMPLETED and _is_nan(value):
            job_return.status = JobStatus.FAILED
            job_return.return_value = JobDiverged(f"diverged: {' '.join(job_return.overrides)}")
    elif job_return.status == JobStatus.FAILED:
        job_return.status = JobStatus.COMPLETED
        job_return.return_value = math.nan


def record_failure(run_dir: Path, job_return: JobReturn, wall_time_s: float) -> None:
    """Traceback into the job's log, `failed` into metrics.json and TensorBoard's HParams."""
    from ffn.job import FolderUntouched, hyperparameters
    from ffn.run_logger import RunLogger

    error = job_return._return_value
    if isinstance(error, FolderUntouched):  # refused for a run already there: leave it be
        log.error("job refused: %s", error)
        return
    log.error(
        "job failed: %s",
        " ".join(job_return.overrides or []),
        exc_info=(type(error), error, error.__traceback__),
    )
    record = run_record.read_record(run_dir)
    if record["status"] != "failed":
        first_line = str(error).splitlines()[0] if str(error) else ""
        record.update(
            error=f"{type(error).__name__}: {first_line}", wall_time_s=round(wall_time_s, 3)
        )
        kept = {k: v for k, v in record.items() if k in run_record.FIELDS and k != "status"}
        run_record.write_record(run_dir, "failed", **kept)
    # A run that failed before training has no event file yet: give it its hyperparameters.
    started = bool(run_record.event_files(run_dir))
    logger = RunLogger(run_dir)
    try:
        if not started and job_return.cfg is not None:
            logger.hparams_start(hyperparameters(job_return.cfg))
        logger.hparams_end("failed")
    finally:
        logger.close()


def set_threads_for_parallel_jobs(config: DictConfig) -> None:
    """torch threads = cores // n_jobs when `trainer.num_threads` is null; warn if it overbooks."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    n_jobs = int(config.hydra.launcher.get("n_jobs") or 1)
    if n_jobs < 0:  # joblib: -1 is every core, -2 all but one, ...
        n_jobs = max(cores + 1 + n_jobs, 1)
    fair = max(cores // n_jobs, 1)
    asked = config.get("trainer", {}).get("num_threads")
    if asked is None:
        torch.set_num_threads(fair)
        log.info("torch threads: %d (%d cores, %d parallel jobs)", fair, cores, n_jobs)
    elif asked * n_jobs > cores:
        log.warning(
            "trainer.num_threads=%d x %d parallel jobs > %d cores: set trainer.num_threads=%d",
            asked,
            n_jobs,
            cores,
            fair,
        )


def failure_report(summaries: Sequence[Summary]) -> str:
    """`ffn: 2 of 9 jobs failed:` and one line each: folder, overrides, error."""
    failed = [run for summary in summaries for run in summary.failed]
    total = sum(len(summary.runs) for summary in summaries)
    lines = [f"ffn: {len(failed)} of {total} jobs failed:"]
    for run in failed:
        overrides = " ".join(f"{k}={v}" for k, v in run.overrides.items())
        reason = run.error or "no record of how it ended (killed?)"
        lines.append(f"  {run.path}: {overrides}: {reason}")
    return "\n".join(lines)


def _is_nan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False
