"""A whole dataset as numpy arrays, as a source hands it over before splitting."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Arrays:
    """x: (n, d) float64; y: (n,) raw class labels (any values) or (n, M) float64 targets.

    `size_key` is the config key that sets how many samples there are, the one to blame when
    they are too few to split (None: fixed by the dataset itself).
    """

    x: np.ndarray
    y: np.ndarray
    task: str  # "classification" | "regression"
    size_key: str | None = None


def encode_labels(y: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels re-numbered 0..C-1 in sorted order of their values, and C.  y: (n,) -> (n,) int64."""
    classes, codes = np.unique(y, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), len(classes)
