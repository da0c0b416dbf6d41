"""Standardisation whose statistics come from the train part alone, so val/test stay unseen."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Columns this flat (digits' always-blank pixels) are divided by 1, not blown up by 1/eps
_FLAT = 1e-12


@dataclass(frozen=True)
class Scale:
    """Per-column mean and std.  mean, std: (d,)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, train: np.ndarray) -> Scale:
        """Statistics of the train part.  train: (n, d)."""
        std = train.std(axis=0)
        return cls(mean=train.mean(axis=0), std=np.where(std > _FLAT, std, 1.0))

    def apply(self, a: np.ndarray) -> np.ndarray:
        """(a - mean) / std.  a: (n, d) -> (n, d)."""
        return (a - self.mean) / self.std
