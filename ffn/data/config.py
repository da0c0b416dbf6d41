"""The `dataset` config group's schema: which data, how it is split, and its checks."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ffn.errors import ConfigError

TASKS = ("classification", "regression")


@dataclass
class DatasetConfig:
    """Hydra structured-config schema for `dataset`; only primitive fields so OmegaConf can type it.

    Fractions are of the whole data; what a source ignores (n_samples for the shipped sets,
    n_features for moons/spirals) is left as it is.
    """

    name: str = "digits"  # one of DATASETS
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    standardize: bool = True  # x, and regression y, by mean/std of the train part only
    n_samples: int = 1000  # synthetic sets and mnist1d
    noise: float = 0.1  # std of the Gaussian noise the synthetic sets add
    function: str = "sin"  # f* of `regression`, a key of synthetic.FUNCTIONS
    n_features: int = 1  # input dim of `regression` and `blobs`
    n_classes: int = 3  # `blobs` and `spirals`
    path: str | None = None  # name="file": a .csv with a header row, or an .npz
    target: str | None = None  # csv: the target column; npz: the y array's key (default "y")
    task: str | None = None  # name="file": None infers it from the target


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
    if cfg.task is not None and cfg.task not in TASKS:
        raise ConfigError("dataset.task", cfg.task, "null (infer) or one of: " + ", ".join(TASKS))
    return cfg


def _check_types(cfg: DatasetConfig) -> None:
    """Catch a mistyped field here, not as a TypeError deep inside numpy."""
    hints = typing.get_type_hints(DatasetConfig)
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        optional = type(None) in typing.get_args(hint)
        kind = str if optional else hint
        if optional and value is None:
            continue
        # bool is an int subclass, and a YAML `1` is a fine float
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        ok = ok or (kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            wanted = _KINDS[kind] + (" or null" if optional else "")
            raise ConfigError(f"dataset.{f.name}", value, wanted)


def _check_fractions(cfg: DatasetConfig) -> None:
    """Both parts non-empty fractions that leave some data to train on."""
    for key in ("val_fraction", "test_fraction"):
        value = getattr(cfg, key)
        if not 0.0 < value < 1.0:  # also refuses NaN
            raise ConfigError(f"dataset.{key}", value, "a fraction strictly between 0 and 1")
    if cfg.val_fraction + cfg.test_fraction >= 1.0:
        raise ConfigError(
            "dataset.val_fraction",
            cfg.val_fraction,
            f"val_fraction + test_fraction < 1 (test_fraction is {cfg.test_fraction})",
        )
