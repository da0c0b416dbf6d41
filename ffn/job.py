"""One Hydra job: train (or resume) a validated config, and leave a complete run folder."""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from ffn import checkpoint, run_record
from ffn.errors import ConfigError
from ffn.hparams import chosen_hparams, experiment_keys
from ffn.train import train

log = logging.getLogger(__name__)

CONFIG_GROUPS = ("dataset", "model", "penalty", "optimizer", "schedule", "trainer")


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """What the user chose (group choices, overridden keys, an experiment's keys), for HParams."""
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    sources = [s.path.removeprefix("file://") for s in hydra_cfg.runtime.config_sources]
    config = OmegaConf.to_container(cfg, resolve=True)
    keys = experiment_keys(choices.get("experiment"), [Path(s) for s in sources if s])
    return chosen_hparams(choices, list(hydra_cfg.overrides.task), config, keys)


def resumed_config(run_dir: Path) -> tuple[DictConfig, dict[str, Any]]:
    """The run's own config and its last checkpoint; the command line's other keys are ignored."""
    payload = checkpoint.load(run_dir)
    try:
        cfg = OmegaConf.create(payload["config"])
        with open_dict(cfg):
            cfg.trainer.resume = True
    except Exception:
        path = str(run_dir / checkpoint.CHECKPOINT)
        raise ConfigError("trainer.resume", path, "a checkpoint holding an ffn config") from None
    # Hydra has just rewritten .hydra/config.yaml from this command line: put the run's back.
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return cfg, payload


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """metrics.json of a run that completed or diverged, else None."""
    record = run_record.read_record(run_dir)
    return record if record["status"] in run_record.ENDED else None


def run_job(cfg: DictConfig) -> float:
    """Train one configuration; returns `optimized_metric` (NaN unless the run completed)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / run_record.METRICS_JSON
    started = time.time()
    try:
        payload = None
        if cfg.trainer.resume:
            finished = _finished(run_dir)
            if finished is not None:  # nothing to continue: leave the run as it is
                log.info("%s already ended (%s); nothing to resume", run_dir, finished["status"])
                value = finished.get("metrics", {}).get(cfg.optimized_metric)
                return math.nan if value is None else value
            cfg, payload = resumed_config(run_dir)
            log.info("resuming %s from epoch %d", run_dir, payload["loop"]["epoch"])
        # Marked running first: a folder whose job died never looks like a finished run.
        # train() validates the config before it loads or builds anything.
        run_record.write_record(run_dir, "running")
        result = train(cfg, run_dir, hyperparameters(cfg), resume_from=payload)
    except ConfigError as error:
        if not cfg.trainer.resume or metrics_path.exists():
            run_record.write_record(
                run_dir, "failed", error=str(error), wall_time_s=round(time.time() - started, 3)
            )
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job and the sweep carries on
        print(f"ffn: error: {error}", file=sys.stderr)
        sys.exit(2)
    run_record.write_record(
        run_dir,
        result.status,
        stop_reason=result.stop_reason,
        epochs=result.epochs,
        steps=result.steps,
        wall_time_s=round(result.wall_time_s, 3),
        timing={k: round(v, 3) for k, v in result.timing.items()},
        metrics=result.metrics,
    )
    log.info("run folder: %s", run_dir)
    if result.exit_code:
        sys.exit(result.exit_code)  # 130 for SIGINT, 143 for SIGTERM
    if result.status != "completed":
        return math.nan
    return result.metrics.get(cfg.optimized_metric, math.nan)
