"""The datasets scikit-learn ships inside its wheel: read from disk, never downloaded."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
from sklearn import datasets

from ffn.data.arrays import Arrays
from ffn.data.config import DatasetConfig

# name -> (sklearn loader, task); diabetes unscaled, since our split does the scaling
_SHIPPED: dict[str, tuple[Callable[[], object], str]] = {
    "digits": (datasets.load_digits, "classification"),  # 8x8 images, 64 features, 10 classes
    "iris": (datasets.load_iris, "classification"),
    "wine": (datasets.load_wine, "classification"),
    "breast_cancer": (datasets.load_breast_cancer, "classification"),
    "diabetes": (partial(datasets.load_diabetes, scaled=False), "regression"),
}


def load_shipped(name: str, cfg: DatasetConfig, seed: int) -> Arrays:
    """One of the sets above, whole; cfg and seed are unused since the data is fixed."""
    loader, task = _SHIPPED[name]
    bunch = loader()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    if task == "regression":
        y = y.astype(np.float64).reshape(-1, 1)
    return Arrays(x=x, y=y, task=task)


SHIPPED: dict[str, Callable[[DatasetConfig, int], Arrays]] = {
    name: partial(load_shipped, name) for name in _SHIPPED
}
