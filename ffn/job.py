"""One Hydra job: claim the run folder, check everything, train or resume, record how it ended.

The run folder's rules (README, "Faults ffn survives"):

- one writer at a time: the folder's lock (ffn.run_record.locked) is held for the whole job;
- a new run starts only in a folder that holds no run; `trainer.resume=true` continues one,
  `trainer.resume=auto` continues one if it has a checkpoint and starts fresh otherwise;
- nothing is written before every check has passed: a refused command leaves no run behind,
  and a new run's record of how it was configured (.hydra/) is written once, by ffn, and never
  rewritten by a resume (Hydra's own copy is off: hydra.output_subdir is null);
- a resume takes the run's own config; overrides that would change it are refused, except the
  stopping rules (CONTINUABLE), which may be changed to train on, recorded as a continuation.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from ffn import interrupt, launch_env, run_record, sizes, sweep_guard
from ffn.config import check_before_torch
from ffn.errors import ConfigError
from ffn.hparams import chosen_hparams, experiment_keys

# torch comes with ffn.checkpoint, ffn.distributed and ffn.train, imported where they are first
# needed: a value refused by the checks that need no torch costs no torch import (seconds)
if TYPE_CHECKING:
    from ffn import distributed

log = logging.getLogger(__name__)

CONFIG_GROUPS = ("dataset", "model", "penalty", "optimizer", "schedule", "trainer")
# Keys a resume may change: the stopping rules, so a run can be trained on (warm start)
CONTINUABLE = (
    "trainer.max_epochs",
    "trainer.early_stopping",
    "trainer.patience",
    "trainer.grad_tol",
    "trainer.rel_tol",
)
HOW_STARTED = ("trainer.resume",)  # how a run was started is not part of its config
# A full disk, a read-only folder, no permission: the output folder cannot be written
CANNOT_WRITE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class FolderUntouched(ConfigError):
    """A refusal that concerns a run already in the folder: its records must stay as they are."""


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """What the user chose (group choices, overridden keys, an experiment's keys), for HParams."""
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    sources = [s.path.removeprefix("file://") for s in hydra_cfg.runtime.config_sources]
    config = OmegaConf.to_container(cfg, resolve=True)
    keys = experiment_keys(choices.get("experiment"), [Path(s) for s in sources if s])
    return chosen_hparams(choices, list(hydra_cfg.overrides.task), config, keys)


# ---------------------------------------------------------------------------- the folder


def holds_run(run_dir: Path) -> bool:
    """Whether a run was started in the folder: a record, a checkpoint or event files."""
    return (
        run_record.has_record(run_dir)
        or _has_checkpoint(run_dir)
        or bool(run_record.event_files(run_dir))
    )


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / run_record.CHECKPOINT).is_file() or (run_dir / run_record.PREVIOUS).is_file()


def _clear_stale(run_dir: Path) -> None:
    """trainer.resume=auto without a checkpoint: the partial run's record and curves go."""
    log.warning("%s holds no checkpoint to resume: starting afresh", run_dir)
    for path in (*run_record.event_files(run_dir), run_dir / run_record.METRICS_JSON):
        path.unlink(missing_ok=True)


def _is_fresh(run_dir: Path) -> bool:
    """Nothing in the folder but what Hydra made for this job (its log file)."""
    log_name = f"{HydraConfig.get().job.name}.log"
    return run_dir.is_dir() and all(
        p.name in (log_name, run_record.LOCK) for p in run_dir.iterdir()
    )


def _remove_if_fresh(run_dir: Path, fresh: bool) -> None:
    """A refused or interrupted new run leaves no folder behind: remove what this job made."""
    if not fresh:
        return
    log_name = f"{HydraConfig.get().job.name}.log"
    for name in (log_name, run_record.LOCK):
        (run_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only if empty: anything another process put there stays


def write_hydra_record(run_dir: Path, cfg: DictConfig, may_wait: bool = False) -> None:
    """.hydra/config.yaml, hydra.yaml, overrides.yaml as Hydra writes them, once per run.
    `may_wait`: as run_record.write_atomic's."""
    hydra_cfg = HydraConfig.get()
    folder = run_dir / run_record.HYDRA_RECORD
    folder.mkdir(exist_ok=True)
    task_overrides = list(hydra_cfg.overrides.task)
    for name, text in (
        ("config.yaml", OmegaConf.to_yaml(cfg)),
        # OmegaConf.to_yaml of the hydra node in a config of its own, without building that
        # config (a third of the record's cost): the same container, dumped the same way
        ("hydra.yaml", _yaml({"hydra": OmegaConf.to_container(hydra_cfg, enum_to_str=True)})),
        ("overrides.yaml", _yaml(task_overrides)),
    ):
        run_record.write_bytes(folder / name, text.encode(), may_wait)


def _yaml(container: Any) -> str:
    """A plain container as OmegaConf.to_yaml writes the config made from it."""
    import yaml
    from omegaconf._utils import get_omega_conf_dumper

    return yaml.dump(
        container,
        default_flow_style=False,
        allow_unicode=True,
        sort_keys=False,
        Dumper=get_omega_conf_dumper(),
    )


# ---------------------------------------------------------------------------- resuming


def _override_key(override: str) -> str:
    key = override.partition("=")[0].lstrip("+~")
    return key.partition("@")[0]


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default="<absent>")
    return OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def refused_overrides(
    cfg: DictConfig, recorded: DictConfig, recorded_overrides: list[str]
) -> list[str]:
    """The command line's overrides that would change the run's config (stopping rules aside)."""
    refused = []
    for override in HydraConfig.get().overrides.task:
        key = _override_key(override)
        if key in HOW_STARTED or key in CONTINUABLE or override in recorded_overrides:
            continue
        new, old = _select(cfg, key), _select(recorded, key)
        if new == "<absent>" or new != old:  # a group or key not in the config: as typed
            refused.append(override)
    return refused


def config_differences(checkpointed: DictConfig, recorded: DictConfig) -> list[str]:
    """Keys where the checkpoint's config is not the run's record (interpolations skipped)."""
    saved = _leaves(OmegaConf.to_container(checkpointed, resolve=False))
    record = _leaves(OmegaConf.to_container(recorded, resolve=False))
    skip = set(CONTINUABLE) | set(HOW_STARTED)
    differ = []
    for key in sorted(set(saved) | set(record)):
        old = record.get(key, "<absent>")
        if key in skip or (isinstance(old, str) and "${" in old):
            continue  # resolved once, at the run's start: the checkpoint holds that value
        if saved.get(key, "<absent>") != old:
            differ.append(key)
    return differ


def resumed_config(run_dir: Path, cfg: DictConfig) -> tuple[DictConfig, dict[str, Any], dict]:
    """The run's own config, its checkpoint and the stopping rules the command line changes.

    Everything is checked against the run's record (.hydra/) before any of it is used: the
    checkpoint is data, and its config is not trusted to name what may be imported.
    """
    from ffn import checkpoint

    payload = checkpoint.load(run_dir)  # data only: weights_only, nothing imported
    path = str(run_dir / run_record.CHECKPOINT)
    hydra_dir = run_dir / run_record.HYDRA_RECORD
    try:
        recorded = OmegaConf.load(hydra_dir / "config.yaml")
        recorded_overrides = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
    except Exception:
        where = str(hydra_dir / "config.yaml")
        raise FolderUntouched(
            "trainer.resume", where, "a run folder holding ffn's record of its config"
        ) from None
    refused = refused_overrides(cfg, recorded, recorded_overrides)
    if refused:
        keys = ", ".join(sorted({_override_key(o) for o in refused}))
        raise FolderUntouched(
            "trainer.resume",
            cfg.trainer.resume,
            f"no overrides that change the run's config ({' '.join(refused)}); only "
            f"{', '.join(CONTINUABLE)} may change on resume (changed: {keys})",
        )
    try:
        saved = OmegaConf.create(payload["config"])
        assert isinstance(saved, DictConfig)
    except Exception:
        raise FolderUntouched(
            "trainer.resume", path, "a checkpoint holding an ffn config"
        ) from None
    differ = config_differences(saved, recorded)
    if differ:
        raise FolderUntouched(
            "trainer.resume",
            path,
            f"a checkpoint whose config is the run's .hydra/config.yaml (it differs at "
            f"{', '.join(differ[:5])})",
        )
    changed = {}
    for key in CONTINUABLE:
        new, old = OmegaConf.select(cfg, key), OmegaConf.select(saved, key)
        given = any(_override_key(o) == key for o in HydraConfig.get().overrides.task)
        if given and new != old:
            changed[key] = [old, new]
            OmegaConf.update(saved, key, new)
    with open_dict(saved):
        saved.trainer.resume = cfg.trainer.resume
    done = payload["loop"]["epoch"]
    if saved.trainer.max_epochs < done:
        raise FolderUntouched(
            "trainer.max_epochs",
            saved.trainer.max_epochs,
            f"at least the {done} epochs the run has trained, to resume it",
        )
    return saved, payload, changed


# ---------------------------------------------------------------------------- the job


def run_job(cfg: DictConfig) -> float:
    """Train one configuration; returns `optimized_metric` (NaN unless the run completed)."""
    interrupt.catch_early()  # a signal from here on ends the job in one line, not a traceback
    if launch_env.place().size == 1:
        return _run_job(cfg)
    # under torchrun every rank trains: everything imported before the world forms, as each
    # rank's timing (and torchrun's signals at the end) has been tested with
    from ffn import checkpoint, distributed, train  # noqa: F401

    world = distributed.world()
    world.begin_job()  # under torchrun: rank 0 runs the job, the others follow its decisions
    if not world.writes:
        return _follow(cfg, world)
    return world.lead(lambda: _run_job(cfg))


def _follow(cfg: DictConfig, world: distributed.World) -> float:
    """A rank other than 0: train what rank 0 decided, write nothing, end as rank 0 ends."""
    from ffn import distributed
    from ffn.train import train

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    root = logging.getLogger()
    root.setLevel(logging.WARNING)  # rank 0 reports; the others only warn
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)  # Hydra's run.log is rank 0's (submitit starts us so)
        handler.close()
    try:
        end = world.wait("decision")
        if end["kind"] == "train":
            saved = OmegaConf.create(end["config"])
            with contextlib.suppress(ConfigError):  # rank 0 says it, in one line
                train(saved, run_dir, resume_from=end["payload"])
            end = world.wait("end", interruptible=False)
        else:
            distributed.remove_if_empty(run_dir)  # rank 0 refused and left no folder
    except interrupt.Interrupted as stopped:  # before training: rank 0 went, or a signal came
        end = {"code": stopped.flag.exit_code, "value": math.nan}
    world.leave()
    if end["code"] and not multirun:
        distributed.ignore_late_sigterm()  # rank 0 has ended: the agent now SIGTERMs the rest
        sys.exit(end["code"])
    return end["value"]  # rank 0's, so that a sweeper on every rank sees the same results


def _run_job(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    fresh = _is_fresh(run_dir)
    if multirun and sweep_interrupted(hydra_cfg):
        _remove_if_fresh(run_dir, fresh)
        log.info("not run: the sweep was interrupted")
        return math.nan
    started = time.time()
    try:
        interrupt.check()  # a signal during the imports: stop before anything is written
        with run_record.locked(run_dir):
            return _run_locked(cfg, run_dir, multirun, fresh, started)
    except run_record.FolderBusy as busy:
        error = FolderUntouched(
            "hydra.run.dir",
            str(run_dir),
            f"a folder no other ffn process is writing ({busy.holder} is)",
        )
        _refuse(error, run_dir, multirun, fresh=False)
    except interrupt.Interrupted as stopped:  # before training began: nothing was started
        _remove_if_fresh(run_dir, fresh)
        print(
            f"ffn: interrupted by {stopped.flag.name} before training started; {run_dir} "
            "holds no run from it",
            file=sys.stderr,
        )
        if multirun:
            return math.nan  # the sweep ends at its next job and writes its summary
        sys.exit(stopped.flag.exit_code)


def _run_locked(
    cfg: DictConfig, run_dir: Path, multirun: bool, fresh: bool, started: float
) -> float:
    payload, changed, previous = None, {}, run_record.read_record(run_dir)
    begun: dict[str, Any] = {}  # set once the folder holds this run (mark_started)
    try:
        interrupt.check()
        resume = cfg.trainer.resume
        if resume not in (False, True, "auto"):
            raise ConfigError("trainer.resume", resume, "false, true or auto")
        if resume is False and holds_run(run_dir):
            raise FolderUntouched(
                "hydra.run.dir",
                str(run_dir),
                "a folder that holds no run yet (it holds one: continue it with "
                "trainer.resume=true or auto, or choose another hydra.run.dir)",
            )
        if resume is True or (resume == "auto" and _has_checkpoint(run_dir)):
            cfg, payload, changed = resumed_config(run_dir, cfg)
            if previous["status"] in run_record.ENDED and not changed:
                log.info("%s already ended (%s); nothing to resume", run_dir, previous["status"])
                value = (previous.get("metrics") or {}).get(cfg.optimized_metric)
                return math.nan if value is None else value
            if previous["status"] == "diverged":
                raise FolderUntouched(
                    "trainer.resume", resume, "a run that did not diverge: nothing to continue"
                )
            log.info("resuming %s from epoch %d", run_dir, payload["loop"]["epoch"])
        elif resume == "auto" and previous["status"] in run_record.ENDED:
            log.info("%s already ended (%s)", run_dir, previous["status"])
            value = (previous.get("metrics") or {}).get(cfg.optimized_metric)
            return math.nan if value is None else value
        stale = payload is None and holds_run(run_dir)  # auto, and nothing to resume
        # train() validates the config in one pass before it loads or builds anything; what
        # needs no torch is refused here, before torch is imported
        check_before_torch(cfg)
        sizes.check_data_size(cfg.dataset)
        from ffn import distributed
        from ffn.train import train

        hparams = hyperparameters(cfg)

        def mark_started(run: Any) -> None:
            """Everything is built and checked: now, and only now, the folder gets a run."""
            interrupt.check()
            if stale:
                _clear_stale(run_dir)
            # may wait: fsynced by run_record.syncs_behind's thread while the run trains, or
            # (an ensemble's members, run_record.fsyncs_together) with the group's round
            if payload is None:
                write_hydra_record(run_dir, cfg, may_wait=True)
            continuations = list(previous.get("continuations") or []) if payload else []
            if changed:
                continuations.append({"epoch": payload["loop"]["epoch"], "changed": changed})
            begun["continuations"] = continuations or None
            run_record.write_record(
                run_dir, "running", may_wait=True, continuations=continuations or None
            )

        distributed.world().announce(cfg, payload)  # under torchrun: every rank trains this
        # its records and checkpoints land on disk in a thread of their own while it trains;
        # all of them before its end is recorded (run_record.syncs_behind)
        with run_record.syncs_behind():
            result = train(cfg, run_dir, hparams, resume_from=payload, on_ready=mark_started)
    except ConfigError as error:
        new_run = payload is None and not isinstance(error, FolderUntouched)
        if begun or (multirun and new_run):  # the summary lists the job, with its config
            if not begun:
                write_hydra_record(run_dir, cfg)
            run_record.write_record(
                run_dir, "failed", error=str(error), wall_time_s=round(time.time() - started, 3)
            )
        _refuse(error, run_dir, multirun, fresh=fresh and new_run and not begun)
    except OSError as error:
        if error.errno not in CANNOT_WRITE:
            raise
        _cannot_write(error, run_dir, started)
    run_record.write_record(
        run_dir,
        result.status,
        stop_reason=result.stop_reason,
        epochs=result.epochs,
        steps=result.steps,
        wall_time_s=round(result.wall_time_s, 3),
        timing={k: round(v, 3) for k, v in result.timing.items()},
        metrics=result.metrics,
        undefined=result.undefined or None,
        continuations=begun.get("continuations"),
    )
    log.info("run folder: %s", run_dir)
    if result.exit_code:
        if multirun:
            return math.nan  # the sweep stops after this job and writes its summary
        sys.exit(result.exit_code)  # 130 for SIGINT, 143 for SIGTERM
    if result.status != "completed":
        return math.nan
    return result.metrics.get(cfg.optimized_metric, math.nan)


def _refuse(error: ConfigError, run_dir: Path, multirun: bool, fresh: bool) -> NoReturn:
    """One line and exit 2; in a sweep, raised for the sweep callback to record."""
    if multirun:
        raise error  # Hydra records the failed job and the sweep carries on
    _remove_if_fresh(run_dir, fresh)  # Hydra made the folder for this job: leave no trace
    print(f"ffn: error: {error}", file=sys.stderr)
    sys.exit(2)


def _cannot_write(error: OSError, run_dir: Path, started: float) -> NoReturn:
    """A full or read-only output folder: one line, the last good checkpoint untouched."""
    kept = run_dir / run_record.CHECKPOINT
    note = f"{kept} is kept" if kept.is_file() else "no checkpoint was written"
    try:  # a small file may still fit where a checkpoint did not
        elapsed = round(time.time() - started, 3)
        run_record.write_record(run_dir, "failed", error=str(error), wall_time_s=elapsed)
    except OSError:
        pass
    reason = error.strerror or type(error).__name__
    target = error.filename or run_dir
    print(f"ffn: error: cannot write {target}: {reason} ({note})", file=sys.stderr)
    sys.exit(1)


def sweep_interrupted(hydra_cfg: Any) -> bool:
    """Whether a signal stopped this job's sweep (in this process, or its marker file)."""
    return bool(interrupt.PENDING) or (Path(hydra_cfg.sweep.dir) / sweep_guard.MARKER).exists()
