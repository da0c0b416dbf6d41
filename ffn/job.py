"""One Hydra job: validate, train, and leave a complete run folder whatever happens."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ffn.config import validate
from ffn.errors import ConfigError
from ffn.hparams import flatten
from ffn.train import train

log = logging.getLogger(__name__)

CONFIG_GROUPS = ("dataset", "model", "penalty", "optimizer", "schedule", "trainer")


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The group choices (model=relu, ...) and every config value, flattened for HParams."""
    choices = HydraConfig.get().runtime.choices
    flat = {group: str(choices.get(group)) for group in CONFIG_GROUPS if choices.get(group)}
    flat.update(flatten(OmegaConf.to_container(cfg, resolve=True)))
    return flat


def run_job(cfg: DictConfig) -> float:
    """Train one configuration; returns `optimized_metric` (NaN when the run diverged)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics_path = run_dir / "metrics.json"
    started = time.time()
    # Marked running first: a folder whose job died never looks like a finished run.
    write_json_atomic(metrics_path, {"status": "running"})
    try:
        validate(cfg)
        result = train(cfg, run_dir, hyperparameters(cfg))
    except ConfigError as error:
        write_json_atomic(
            metrics_path,
            {"status": "failed", "error": str(error), "wall_time_s": time.time() - started},
        )
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job and the sweep carries on
        print(f"ffn: error: {error}", file=sys.stderr)
        sys.exit(2)
    payload = {
        "status": result.status,
        "stop_reason": result.stop_reason,
        "epochs": result.epochs,
        "steps": result.steps,
        "wall_time_s": round(time.time() - started, 3),
        "metrics": {k: _finite_or_none(v) for k, v in sorted(result.metrics.items())},
    }
    write_json_atomic(metrics_path, payload)
    log.info("run folder: %s", run_dir)
    return result.metrics.get(cfg.optimized_metric, math.nan)
