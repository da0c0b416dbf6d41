"""The datasets scikit-learn ships inside its wheel: read from disk, never downloaded."""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from ffn.data.arrays import Arrays
from ffn.data.config import DatasetConfig

# name -> (sklearn.datasets loader, its keyword arguments, task); diabetes unscaled, since our
# split does the scaling
_SHIPPED: dict[str, tuple[str, dict[str, object], str]] = {
    "digits": ("load_digits", {}, "classification"),  # 8x8 images, 64 features, 10 classes
    "iris": ("load_iris", {}, "classification"),
    "wine": ("load_wine", {}, "classification"),
    "breast_cancer": ("load_breast_cancer", {}, "classification"),
    "diabetes": ("load_diabetes", {"scaled": False}, "regression"),
}


def load_shipped(name: str, cfg: DatasetConfig, seed: int) -> Arrays:
    """One of the sets above, whole; cfg and seed are unused since the data is fixed."""
    loader, kwargs, task = _SHIPPED[name]
    data = _digits_file() if name == "digits" else None
    if data is None:
        from sklearn import datasets  # ~1 s of imports, paid only for these sets

        bunch = getattr(datasets, loader)(**kwargs)
        data = (bunch.data, bunch.target)
    x = np.asarray(data[0], dtype=np.float64)
    y = np.asarray(data[1])
    if task == "regression":
        y = y.astype(np.float64).reshape(-1, 1)
    return Arrays(x=x, y=y, task=task, size_key=None)


def _digits_file() -> tuple[np.ndarray, np.ndarray] | None:
    """digits read straight from sklearn's data file, as its load_digits reads it (np.loadtxt of
    the gzip'd csv, the label in the last column), without importing scikit-learn: x (1797, 64),
    y (1797,). None if the file is not where sklearn keeps it; load_digits then reads it."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        return None
    text = gzip.decompress(path.read_bytes())
    data = small_integer_csv(text)
    if data is None:  # not the file of small integers it has been: numpy's reader, as sklearn's
        data = np.loadtxt(text.decode("utf-8").splitlines(), delimiter=",")
    return data[:, :-1], data[:, -1].astype(int)


def small_integer_csv(text: bytes) -> np.ndarray | None:
    """Rows of 1- or 2-digit integers, comma-separated, each row ended by a newline, read as
    np.loadtxt(delimiter=",") reads them (float64), at once: 1 ms where loadtxt takes 17-19
    for digits' 1797 x 65 (1% of the time to a default run's first step); None for any other
    text.  -> (rows, columns)."""
    a = np.frombuffer(text, np.uint8)
    newline, comma = a == ord("\n"), a == ord(",")
    ends = np.flatnonzero(newline | comma)  # where each field ends
    rows = int(newline.sum())
    if not rows or not len(a) or a[-1] != ord("\n") or len(ends) % rows:
        return None
    starts = np.concatenate([[0], ends[:-1] + 1])
    width = ends - starts
    columns = len(ends) // rows
    digits = a.astype(np.int64) - ord("0")
    if (
        width.min() < 1
        or width.max() > 2
        or not np.array_equal(
            np.flatnonzero(newline[ends]), np.arange(columns - 1, len(ends), columns)
        )
        or ((digits < 0) | (digits > 9))[~(newline | comma)].any()
    ):
        return None
    two = width == 2
    values = digits[starts]
    values[two] = values[two] * 10 + digits[starts[two] + 1]
    return values.reshape(rows, columns).astype(np.float64)


SHIPPED: dict[str, Callable[[DatasetConfig, int], Arrays]] = {
    name: partial(load_shipped, name) for name in _SHIPPED
}
