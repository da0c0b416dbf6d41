"""Seeded train/val/test split (stratified for classification unless told not), sizes checked."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ffn.data.config import DatasetConfig
from ffn.data.shuffle_split import train_test_split
from ffn.errors import ConfigError

# Stratifying twice (test off the whole, val off the rest) needs each class >= 2 in each call
MIN_PER_CLASS = 3


@dataclass(frozen=True)
class Parts:
    """Row indices of each part.  train, val, test: (n_part,) int64, disjoint, covering 0..n-1."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_indices(
    labels: np.ndarray | None, n: int, cfg: DatasetConfig, size_key: str | None, seed: int
) -> Parts:
    """Split n rows; labels: (n,) class labels, stratified by unless cfg.stratify, or None.

    Test off the whole, then val (none when val_fraction is 0) off the rest, both with `seed`.
    """
    labels = labels if cfg.stratify else None
    n_test, n_val = _part_sizes(labels, n, cfg, size_key)
    rows = np.arange(n)
    try:
        rest, test = train_test_split(rows, n_test, seed, stratify=labels)
        train, val = rest, rest[:0]
        if n_val:
            strat = None if labels is None else labels[rest]
            train, val = train_test_split(rest, n_val, seed, stratify=strat)
    except ValueError as exc:  # a rare imbalanced case the size checks let through
        key, value = _blame(size_key, cfg)
        raise ConfigError(key, value, f"enough samples per class to stratify ({exc})") from None
    return Parts(train=np.sort(train), val=np.sort(val), test=np.sort(test))


def _part_sizes(
    labels: np.ndarray | None, n: int, cfg: DatasetConfig, size_key: str | None
) -> tuple[int, int]:
    """(n_test, n_val), after checking every part can hold one sample of every class."""
    key, value = _blame(size_key, cfg)
    need = 1  # per part: one sample for regression, one per class when stratified
    if labels is not None:
        classes, counts = np.unique(labels, return_counts=True)
        need = len(classes)
        if counts.min() < MIN_PER_CLASS:
            rarest = classes[counts.argmin()].item()
            raise ConfigError(
                key,
                value,
                f"at least {MIN_PER_CLASS} samples of every class to stratify; "
                f"class {rarest!r} has {counts.min()}",
            )
    if n < MIN_PER_CLASS * need:
        raise ConfigError(key, value, f"at least {MIN_PER_CLASS * need} samples to split; got {n}")
    n_test = max(1, round(cfg.test_fraction * n))
    if cfg.split_seed is not None:  # as train_test_split(test_size=test_fraction): it rounds up
        n_test = math.ceil(cfg.test_fraction * n)
    n_val = max(1, round(cfg.val_fraction * n)) if cfg.val_fraction else 0  # 0: no val part
    for part, size, frac in (("test", n_test, "test_fraction"), ("val", n_val, "val_fraction")):
        if 0 < size < need:
            raise ConfigError(
                f"dataset.{frac}",
                getattr(cfg, frac),
                f"at least {need / n:.3g} so the {part} part holds one sample of each of "
                f"{need} classes ({n} samples in all)",
            )
    if n - n_test - n_val < need:
        raise ConfigError(
            "dataset.val_fraction",
            cfg.val_fraction,
            f"val_fraction + test_fraction small enough to leave {need} of {n} samples to train on",
        )
    return n_test, n_val


def _blame(size_key: str | None, cfg: DatasetConfig) -> tuple[str, object]:
    """The key (and its value) that sets the sample count; the name when the dataset fixes it."""
    key = size_key or "dataset.name"
    return key, getattr(cfg, key.removeprefix("dataset."))


def split_off_val(
    labels: np.ndarray | None, given: dict[str, np.ndarray], cfg: DatasetConfig, seed: int
) -> Parts:
    """The files' own parts; without a val file, val_fraction of the train file's rows go to val.

    labels: (n,) class labels of every row (stacked as `given` says), or None for regression.
    """
    train, val, test = given["train"], given["val"], given["test"]
    if cfg.val_path is None and cfg.val_fraction:
        n_val = max(1, round(cfg.val_fraction * len(train)))
        strat = None if labels is None or not cfg.stratify else labels[train]
        try:
            train, val = train_test_split(train, n_val, seed, stratify=strat)
        except ValueError as exc:
            allowed = f"a val_fraction the train file can give ({exc})"
            raise ConfigError("dataset.val_fraction", cfg.val_fraction, allowed) from None
    return Parts(train=np.sort(train), val=np.sort(val), test=np.sort(test))
