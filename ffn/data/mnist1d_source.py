"""MNIST-1D made on this machine by the mnist1d package's own generator, never downloaded.

The package splits 80/20 itself; we join its two parts and split them our way like any other
set. Its generator seeds numpy's and Python's global RNGs, so we put both back afterwards.
"""

from __future__ import annotations

import random

import numpy as np

from ffn.data.arrays import Arrays
from ffn.data.config import DatasetConfig
from ffn.errors import ConfigError

N_CLASSES = 10
MIN_SAMPLES = 10 * N_CLASSES  # it makes n_samples // 10 per digit, so n rounds down to tens


def load_mnist1d(cfg: DatasetConfig, seed: int) -> Arrays:
    """n_samples // 10 signals of each digit.  x: (n, 40), y: (n,) labels 0..9."""
    if cfg.n_samples < MIN_SAMPLES:
        raise ConfigError("dataset.n_samples", cfg.n_samples, f"an integer >= {MIN_SAMPLES}")
    try:  # lazy: an optional extra, and it pulls in matplotlib
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise ConfigError(
            "dataset.name",
            cfg.name,
            f'a dataset whose package is installed ({exc}): pip install -e ".[data]"',
        ) from None
    args = get_dataset_args()
    args.num_samples, args.seed = cfg.n_samples, int(seed)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float64)
    y = np.concatenate([data["y"], data["y_test"]])
    return Arrays(x=x, y=y, task="classification", size_key="dataset.n_samples")
