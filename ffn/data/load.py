"""The dataset table and `load_dataset`: source -> split -> standardise -> tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ffn.constants import MAX_SEED
from ffn.data import synthetic
from ffn.data.arrays import Arrays, encode_labels
from ffn.data.config import DatasetConfig, as_config
from ffn.data.dataset import Dataset
from ffn.data.files import load_file, load_given_split
from ffn.data.mnist1d_source import load_mnist1d
from ffn.data.scale import Scale
from ffn.data.shipped import SHIPPED
from ffn.data.split import split_indices, split_off_val
from ffn.errors import ConfigError

Loader = Callable[[DatasetConfig, int], Arrays]  # (cfg, seed) -> the whole dataset

DATASETS: dict[str, Loader] = {
    **SHIPPED,  # digits, iris, wine, breast_cancer, diabetes
    "mnist1d": load_mnist1d,
    "regression": synthetic.regression,
    "moons": synthetic.moons,
    "spirals": synthetic.spirals,
    "blobs": synthetic.blobs,
    "file": load_file,
}


def load_dataset(
    cfg: DatasetConfig | Mapping[str, Any],
    *,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """The named dataset split into train/val/test, same seed -> bitwise the same tensors."""
    cfg = check_config(cfg)
    _check_call(seed, dtype)
    device = _device(device)
    # Independent streams, so the split does not replay the generator's draws
    make_seed, split_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    if cfg.split_seed is not None:  # the same split whatever the run's seed
        split_seed = cfg.split_seed
    if cfg.test_path is not None:  # the files' own split: no row moves between them
        arrays, given = load_given_split(cfg)
        labels = arrays.y if arrays.task == "classification" else None
        parts = split_off_val(labels, given, cfg, split_seed)
    else:
        arrays = DATASETS[cfg.name](cfg, make_seed)
        if cfg.name != "file" and cfg.task not in (None, arrays.task):
            raise ConfigError("dataset.task", cfg.task, f"null or {arrays.task!r} for {cfg.name}")
        labels = arrays.y if arrays.task == "classification" else None
        parts = split_indices(labels, len(arrays.x), cfg, arrays.size_key, split_seed)
    classification = arrays.task == "classification"
    x, y = arrays.x, arrays.y
    n_classes = None
    if classification:
        y, n_classes = encode_labels(y)
    y_scale = None
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below, in one line
        if cfg.standardize:
            x_scale = Scale.fit(x[parts.train])
            _check_representable(cfg, np.stack([x_scale.mean, x_scale.std]), "features", dtype)
            x = x_scale.apply(x)
            if not classification:
                y_scale = Scale.fit(y[parts.train])
                _check_representable(cfg, np.stack([y_scale.mean, y_scale.std]), "targets", dtype)
                y = y_scale.apply(y)
    _check_representable(cfg, x, "features", dtype)
    if not classification:
        _check_representable(cfg, y, "targets", dtype)

    def put(a: np.ndarray, labels: bool = False) -> torch.Tensor:
        """One array on the requested device: labels int64, everything else `dtype`."""
        return torch.as_tensor(a, dtype=torch.int64 if labels else dtype, device=device)

    return Dataset(
        name=cfg.name,
        task=arrays.task,
        x_train=put(x[parts.train]),
        y_train=put(y[parts.train], classification),
        x_val=put(x[parts.val]),
        y_val=put(y[parts.val], classification),
        x_test=put(x[parts.test]),
        y_test=put(y[parts.test], classification),
        n_classes=n_classes,
        y_mean=None if y_scale is None else put(y_scale.mean),
        y_std=None if y_scale is None else put(y_scale.std),
    )


def _check_representable(cfg: DatasetConfig, a: np.ndarray, what: str, dtype: torch.dtype) -> None:
    """Values that overflow the standardisation or the training dtype: training would be NaN."""
    limit = torch.finfo(dtype).max
    bad = ~np.isfinite(a) | (np.abs(a) > limit)
    if bad.any():
        col = int(np.argwhere(bad.reshape(len(a), -1))[0][1]) if a.ndim == 2 else 0
        key, value = ("dataset.path", cfg.path) if cfg.name == "file" else ("dataset", cfg.name)
        raise ConfigError(
            key,
            value,
            f"{what} whose values and spread fit {str(dtype).removeprefix('torch.')}; column "
            f"{col} overflows it (|value| or standard deviation above {limit:.3g})",
        )


def check_config(cfg: DatasetConfig | Mapping[str, Any]) -> DatasetConfig:
    """The dataset group's own checks: everything that can be refused before touching data."""
    cfg = as_config(cfg)
    if cfg.name not in DATASETS:
        raise ConfigError("dataset.name", cfg.name, "one of: " + ", ".join(sorted(DATASETS)))
    if cfg.name != "file":  # likely a forgotten dataset.name=file: do not ignore the path
        for key in ("path", "target", "test_path", "val_path"):
            if getattr(cfg, key) is not None:
                raise ConfigError(f"dataset.{key}", getattr(cfg, key), "null unless name is file")
    return cfg


def _check_call(seed: int, dtype: torch.dtype) -> None:
    """load_dataset's own arguments."""
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int | np.integer)
        or not 0 <= seed <= MAX_SEED
    ):
        raise ConfigError("seed", seed, f"an integer in [0, {MAX_SEED}]")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError("dtype", dtype, "a floating torch dtype such as torch.float32")


def _device(device: torch.device | str) -> torch.device:
    """A torch.device, or a ConfigError for a string torch cannot parse."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", device, "a torch device such as 'cpu' or 'cuda'") from None
