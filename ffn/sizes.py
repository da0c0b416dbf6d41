"""Sizes that cannot fit in memory, refused up front with the estimated bytes.

Estimates, not exact counts: enough to turn `model.hidden=[100000000]` or
`dataset.n_samples=10000000000` into one line before any allocation, instead of a MemoryError
(or the machine swapping) minutes later.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from ffn.errors import ConfigError

# Width of a generated dataset's rows (features + target) by name; None: from n_features
_GENERATED_WIDTH = {"regression": None, "blobs": None, "moons": 3, "spirals": 3, "mnist1d": 41}
_DATA_COPIES = 4  # the float64 source, its standardised copy, the split tensors, slack
_TRAINING_COPIES = 4  # weights, gradients and up to two optimizer moments (Adam)


def available_bytes() -> int:
    """Memory this machine can still hand out (MemAvailable), else its physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_data_size(dataset: Any) -> None:
    """Refuse a generated dataset too big to hold; the estimate is in the message."""
    if dataset.name not in _GENERATED_WIDTH:
        return  # the shipped sets and the user's files are as big as they are
    width = _GENERATED_WIDTH[dataset.name] or dataset.n_features + 1
    need = _DATA_COPIES * 8 * dataset.n_samples * width
    _refuse_if_too_big("dataset.n_samples", dataset.n_samples, need, "the data")


def check_model_size(
    hidden: list[int], in_features: int, out_features: int, n_rows: int, dtype_bytes: int
) -> None:
    """Refuse a network whose parameters (and one pass over the train part) cannot fit."""
    widths = [in_features, *hidden, out_features]
    params = sum((a + 1) * b for a, b in itertools.pairwise(widths))
    activations = n_rows * sum(widths[1:]) * 2  # pre-activations and outputs, one full pass
    need = dtype_bytes * (_TRAINING_COPIES * params + activations)
    _refuse_if_too_big("model.hidden", list(hidden), need, f"{params:,} parameters")


def _refuse_if_too_big(key: str, value: Any, need: int, what: str) -> None:
    have = available_bytes()
    if need > have:
        raise ConfigError(
            key,
            value,
            f"sizes that fit in memory: {what} need about {_human(need)}, "
            f"{_human(have)} is available",
        )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"
