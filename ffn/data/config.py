"""The `dataset` config group's schema: which data, how it is split, and its checks."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ffn.constants import MAX_SEED, TASKS
from ffn.errors import ConfigError


@dataclass
class DatasetConfig:
    """Hydra structured-config schema for `dataset`; only primitive fields so OmegaConf can type it.

    Fractions are of the whole data; what a source ignores (n_samples for the shipped sets,
    n_features for moons/spirals) is left as it is.
    """

    name: str = "digits"  # one of DATASETS
    val_fraction: float = 0.15  # 0: no val part (no early stopping, no val/ metrics)
    test_fraction: float = 0.2
    # null: the split's seed derives from the run's seed. Set: the test part is exactly
    # sklearn's train_test_split(test_size=test_fraction, random_state=split_seed, stratify=...)
    # (its ceil-rounded test size included); a val part is then split off the rest with it too.
    split_seed: int | None = None
    stratify: bool = True  # classification: every part keeps the class proportions
    standardize: bool = True  # x, and regression y, by mean/std of the train part only
    n_samples: int = 1000  # synthetic sets and mnist1d
    noise: float = 0.1  # std of the Gaussian noise the synthetic sets add
    function: str = "sin"  # f* of `regression`, a key of synthetic.FUNCTIONS
    n_features: int = 1  # input dim of `regression` and `blobs`
    n_classes: int = 3  # `blobs` and `spirals`
    path: str | None = None  # name="file": a .csv with a header row, or an .npz
    target: str | None = None  # csv: the target column; npz: the y array's key (default "y")
    task: str | None = None  # name="file": None infers it from the target
    # name="file": a given split. test_path's rows are the test part, exactly; path's rows are
    # the train part (less a val part of val_fraction, unless val_path gives it); test_fraction
    # is then unused, and the standardisation comes from the train part as always.
    test_path: str | None = None
    val_path: str | None = None


_KINDS: dict[type, str] = {int: "an integer", float: "a number", str: "a string", bool: "a bool"}


def as_config(cfg: DatasetConfig | Mapping[str, Any]) -> DatasetConfig:
    """A checked DatasetConfig from itself, a dict or an OmegaConf DictConfig."""
    if not isinstance(cfg, DatasetConfig):
        if not isinstance(cfg, Mapping):
            raise ConfigError("dataset", cfg, "a DatasetConfig or a mapping of its keys")
        names = [f.name for f in dataclasses.fields(DatasetConfig)]
        for key in cfg:
            if key not in names:
                raise ConfigError(f"dataset.{key}", cfg[key], "a key of: " + ", ".join(names))
        cfg = DatasetConfig(**{key: cfg[key] for key in cfg})
    _check_types(cfg)
    _check_fractions(cfg)
    if cfg.val_path is not None and cfg.test_path is None:
        raise ConfigError("dataset.val_path", cfg.val_path, "null unless dataset.test_path is set")
    if cfg.split_seed is not None and not 0 <= cfg.split_seed <= MAX_SEED:
        raise ConfigError(
            "dataset.split_seed", cfg.split_seed, f"null or an integer in [0, {MAX_SEED}]"
        )
    if cfg.task is not None and cfg.task not in TASKS:
        raise ConfigError("dataset.task", cfg.task, "null (infer) or one of: " + ", ".join(TASKS))
    return cfg


def _check_types(cfg: DatasetConfig) -> None:
    """Catch a mistyped field here, not as a TypeError deep inside numpy."""
    hints = typing.get_type_hints(DatasetConfig)
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        args = typing.get_args(hint)
        optional = type(None) in args
        kind = next(a for a in args if a is not type(None)) if optional else hint
        if optional and value is None:
            continue
        # bool is an int subclass, and a YAML `1` is a fine float
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        ok = ok or (kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            wanted = _KINDS[kind] + (" or null" if optional else "")
            raise ConfigError(f"dataset.{f.name}", value, wanted)


def _check_fractions(cfg: DatasetConfig) -> None:
    """A non-empty test part, a val part that may be empty, and some data left to train on."""
    if not 0.0 < cfg.test_fraction < 1.0:  # also refuses NaN
        raise ConfigError(
            "dataset.test_fraction", cfg.test_fraction, "a fraction strictly between 0 and 1"
        )
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigError(
            "dataset.val_fraction", cfg.val_fraction, "a fraction in [0, 1) (0: no val part)"
        )
    if cfg.val_fraction + cfg.test_fraction >= 1.0:
        raise ConfigError(
            "dataset.val_fraction",
            cfg.val_fraction,
            f"val_fraction + test_fraction < 1 (test_fraction is {cfg.test_fraction})",
        )
