"""Generated datasets, deterministic in the seed: regression Y = f*(X) + eps, moons, spirals, blobs.

`noise` is always the std of Gaussian noise: on the target for `regression`, on each point's
coordinates for `moons` and `spirals`, and the blobs' own std for `blobs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ffn.data.arrays import Arrays
from ffn.data.config import DatasetConfig
from ffn.errors import ConfigError

MIN_SAMPLES = 20
SPIRAL_TURNS = 1.0  # how far each arm winds from the centre to radius 1


@dataclass(frozen=True)
class TargetFunction:
    """f*: x (n, d) on [-1, 1]^d -> (n,), defined for d >= min_features."""

    f: Callable[[np.ndarray], np.ndarray]
    formula: str
    min_features: int = 1


def _friedman(x: np.ndarray) -> np.ndarray:
    """Friedman #1 on u = (x + 1) / 2 in [0, 1]^d; only the first 5 inputs matter."""
    u = (x + 1.0) / 2.0
    return (
        10.0 * np.sin(np.pi * u[:, 0] * u[:, 1])
        + 20.0 * (u[:, 2] - 0.5) ** 2
        + 10.0 * u[:, 3]
        + 5.0 * u[:, 4]
    )


FUNCTIONS: dict[str, TargetFunction] = {
    "linear": TargetFunction(lambda x: x.sum(axis=1), "sum_j x_j"),
    "quadratic": TargetFunction(lambda x: (x**2).sum(axis=1), "sum_j x_j^2"),
    "sin": TargetFunction(lambda x: np.sin(np.pi * x.sum(axis=1)), "sin(pi sum_j x_j)"),
    "abs": TargetFunction(lambda x: np.abs(x).sum(axis=1), "sum_j |x_j| (a kink at 0)"),
    "friedman": TargetFunction(_friedman, "Friedman #1 on (x + 1) / 2", min_features=5),
}


def regression(cfg: DatasetConfig, seed: int) -> Arrays:
    """Y = f*(X) + eps, X ~ U[-1, 1]^d, eps ~ N(0, noise^2).  y: (n, 1)."""
    _check_common(cfg)
    if cfg.function not in FUNCTIONS:
        raise ConfigError("dataset.function", cfg.function, "one of: " + ", ".join(FUNCTIONS))
    target = FUNCTIONS[cfg.function]
    _check_features(cfg, target.min_features, f"for function={cfg.function}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(cfg.n_samples, cfg.n_features))
    y = target.f(x) + cfg.noise * rng.standard_normal(cfg.n_samples)
    return Arrays(x=x, y=y.reshape(-1, 1), task="regression", size_key="dataset.n_samples")


def moons(cfg: DatasetConfig, seed: int) -> Arrays:
    """Two interleaved half circles in 2-D (n_features is ignored).

    sklearn's make_moons(n_samples, noise=noise, random_state=seed), step by step: the same
    RandomState draws in the same order, so the same points (tests/test_data.py checks it
    against sklearn), without sklearn's import (1-2 s, paid by every moons run before this).
    """
    _check_common(cfg)
    n_out = cfg.n_samples // 2
    n_in = cfg.n_samples - n_out
    rng = np.random.RandomState(seed)
    outer, inner = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    x = np.vstack(
        [
            np.append(np.cos(outer), 1 - np.cos(inner)),
            np.append(np.sin(outer), 1 - np.sin(inner) - 0.5),
        ]
    ).T
    y = np.hstack([np.zeros(n_out, dtype=np.intp), np.ones(n_in, dtype=np.intp)])
    order = np.arange(cfg.n_samples)
    rng.shuffle(order)  # sklearn.utils.shuffle
    x, y = x[order], y[order]
    x += rng.normal(scale=cfg.noise, size=x.shape)
    return Arrays(x=x, y=y, task="classification", size_key="dataset.n_samples")


def spirals(cfg: DatasetConfig, seed: int) -> Arrays:
    """n_classes arms winding out from the origin, evenly offset, in 2-D (n_features ignored)."""
    _check_common(cfg)
    _check_classes(cfg)
    rng = np.random.default_rng(seed)
    y = np.arange(cfg.n_samples) % cfg.n_classes  # classes as even as n allows
    r = rng.uniform(0.05, 1.0, size=cfg.n_samples)  # 0.05: the arms all meet at the centre
    theta = 2.0 * np.pi * (y / cfg.n_classes + SPIRAL_TURNS * r)
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    x = x + cfg.noise * rng.standard_normal(x.shape)
    return Arrays(x=x, y=y, task="classification", size_key="dataset.n_samples")


def blobs(cfg: DatasetConfig, seed: int) -> Arrays:
    """n_classes isotropic Gaussians of std noise, centres uniform in [-1, 1]^n_features."""
    _check_common(cfg)
    _check_classes(cfg)
    _check_features(cfg, 1, "for blobs")
    from sklearn.datasets import make_blobs

    x, y = make_blobs(
        n_samples=cfg.n_samples,
        n_features=cfg.n_features,
        centers=cfg.n_classes,
        cluster_std=cfg.noise,
        center_box=(-1.0, 1.0),
        random_state=seed,
    )
    return Arrays(x=x, y=y, task="classification", size_key="dataset.n_samples")


def _check_common(cfg: DatasetConfig) -> None:
    """n_samples and noise, which every generator here reads."""
    if cfg.n_samples < MIN_SAMPLES:
        raise ConfigError("dataset.n_samples", cfg.n_samples, f"an integer >= {MIN_SAMPLES}")
    if not (math.isfinite(cfg.noise) and cfg.noise >= 0.0):
        raise ConfigError("dataset.noise", cfg.noise, "a finite number >= 0")


def _check_classes(cfg: DatasetConfig) -> None:
    """At least two classes; the split checks there are enough samples for them."""
    if cfg.n_classes < 2:
        raise ConfigError("dataset.n_classes", cfg.n_classes, "an integer >= 2")


def _check_features(cfg: DatasetConfig, minimum: int, why: str) -> None:
    """At least `minimum` input dimensions."""
    if cfg.n_features < minimum:
        raise ConfigError("dataset.n_features", cfg.n_features, f"an integer >= {minimum} {why}")
