"""A dataset's fingerprint: what a checkpoint records so that a resume trains on the same data.

Source, split, shapes and a SHA-256 of the split tensors' bytes: a CSV shuffled, edited or given
an extra column between stop and resume changes it, and the resume is refused in one line.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ffn.data.dataset import Dataset

PARTS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
SPLIT_KEYS = ("val_fraction", "test_fraction", "split_seed", "stratify", "standardize")


def fingerprint(cfg: Any, data: Dataset, seed: int) -> dict[str, Any]:
    """{source, split, shapes, sha256} of the tensors a run trains and is scored on."""
    digest = hashlib.sha256()
    shapes = {}
    for name in PARTS:
        array = getattr(data, name).detach().cpu().numpy()
        shapes[name] = list(array.shape)
        digest.update(f"{name} {array.dtype} {array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return {
        "source": str(cfg.path) if cfg.name == "file" else cfg.name,
        "split": {key: cfg.get(key) for key in SPLIT_KEYS} | {"seed": seed},
        "shapes": shapes,
        "sha256": digest.hexdigest(),
    }


def difference(recorded: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between two fingerprints, in a few words; None when they agree."""
    for key in ("source", "split", "shapes"):
        if recorded.get(key) != now.get(key):
            return f"{key} was {recorded.get(key)}, is {now.get(key)}"
    if recorded.get("sha256") != now.get("sha256"):
        return "same shapes, other values (the file changed since the checkpoint)"
    return None
