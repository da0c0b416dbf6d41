"""A run without a val part (dataset.val_fraction=0): no val/ anywhere; what needs one refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing import event_accumulator

from ffn.config import Config, validate
from ffn.errors import ConfigError
from ffn.run_record import METRICS_EVENTS
from ffn.train import train


def no_val_config(**overrides: object):
    """The default config on iris without a val part, quick and quiet."""
    cfg = OmegaConf.structured(Config)
    cfg.dataset.merge_with({"name": "iris", "val_fraction": 0})
    cfg.trainer.merge_with(
        {"max_epochs": 2, "histogram_every": 0, "figures": False, "progress": False}
    )
    cfg.optimized_metric = "test/loss"
    return OmegaConf.merge(cfg, overrides)


@pytest.mark.slow
def test_a_run_without_val_part_logs_and_reports_no_val(tmp_path: Path) -> None:
    cfg = no_val_config()
    validate(cfg)
    result = train(cfg, tmp_path)
    assert result.status == "completed" and result.epochs == 2
    assert not [k for k in result.metrics if k.startswith("val/")]
    assert {"train/loss", "test/loss", "test/accuracy"} <= set(result.metrics)
    folder = str(tmp_path / METRICS_EVENTS)
    acc = event_accumulator.EventAccumulator(folder, size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and not [t for t in tags if t.startswith("val/")]


@pytest.mark.parametrize(
    ("key", "overrides"),
    [
        ("optimized_metric", {"optimized_metric": "val/loss"}),  # the default
        ("optimized_metric", {"optimized_metric": "val/accuracy"}),
        ("trainer.early_stopping", {"trainer": {"early_stopping": 5}}),
    ],
)
def test_what_needs_a_val_part_is_refused_without_one(
    key: str, overrides: dict, tmp_path: Path
) -> None:
    cfg = no_val_config(**overrides)
    for check in (validate, lambda c: train(c, tmp_path)):  # the CLI's check and the runner's
        with pytest.raises(ConfigError) as info:
            check(cfg)
        assert info.value.key == key and "dataset.val_fraction > 0" in str(info.value)
    if key == "optimized_metric":
        assert "optimized_metric=test/accuracy" in str(info.value)


def test_a_val_part_allows_them() -> None:
    validate(no_val_config(dataset={"val_fraction": 0.2}, optimized_metric="val/loss"))
