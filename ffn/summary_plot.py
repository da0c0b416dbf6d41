"""summary.png: the ranking metric against each swept key, readable when runs span decades or
a few of them blow up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ffn.report import Summary


def save_plot(summary: Summary, path: Path) -> None:
    """The ranking metric against each swept key.

    Log axes for keys whose values span a factor of 10 or more (symlog where one is 0). The y
    range holds the bulk of the runs (3 IQRs around the quartiles); runs outside it are drawn
    as triangles on the edge, and runs without a finite value as red crosses along the top.
    """
    import matplotlib

    from ffn.report import as_number, final_score, natural_key

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    keys = summary.swept or ["job"]
    cols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    values = [final_score(run, summary.metric) for run in summary.runs]
    low, high = robust_range([v for v in values if v is not None])
    for ax, key in zip(axes.flat, keys, strict=False):
        labels = [run.name if key == "job" else run.value(key) for run in summary.runs]
        numbers = [as_number(v) for v in labels]
        numeric = key != "job" and all(n is not None for n in numbers)
        if numeric:
            xs = [float(n) for n in numbers]
            scale = axis_scale(xs)
            if scale == "symlog":
                ax.set_xscale("symlog", linthresh=min(abs(x) for x in xs if x))
            elif scale == "log":
                ax.set_xscale("log")
        else:
            categories = sorted(set(labels), key=natural_key)
            xs = [float(categories.index(v)) for v in labels]
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        inside = [
            (x, v) for x, v in zip(xs, values, strict=True) if v is not None and low <= v <= high
        ]
        above = [x for x, v in zip(xs, values, strict=True) if v is not None and v > high]
        below = [x for x, v in zip(xs, values, strict=True) if v is not None and v < low]
        bad = [x for x, v in zip(xs, values, strict=True) if v is None]
        if inside:
            ax.plot(*zip(*inside, strict=True), "o", color="tab:blue", alpha=0.7, label="finished")
        edge = blended_transform_factory(ax.transData, ax.transAxes)
        if above or below:
            ax.plot(above, [0.92] * len(above), "^", color="tab:orange", transform=edge)
            ax.plot(below, [0.02] * len(below), "v", color="tab:orange", transform=edge)
            ax.plot([], [], "^", color="tab:orange", label="outside the range")
        if bad:
            ax.plot(bad, [0.97] * len(bad), "x", color="tab:red", transform=edge, clip_on=False)
            ax.plot([], [], "x", color="tab:red", label="diverged / failed")
        if math.isfinite(low) and high > low:
            pad = 0.08 * (high - low)
            ax.set_ylim(low - pad, high + 2 * pad)
        ax.set_xlabel(key)
        ax.set_ylabel(summary.metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{summary.metric} ({summary.direction})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def axis_scale(xs: Sequence[float]) -> str:
    """log when the values span x10 or more, symlog when one of them is 0, else linear."""
    distinct = sorted(set(xs))
    nonzero = [abs(x) for x in distinct if x]
    if len(distinct) < 2 or not nonzero or max(nonzero) / min(nonzero) < 10:
        return "linear"
    if all(x > 0 for x in distinct):
        return "log"
    return "symlog" if all(x >= 0 for x in distinct) else "linear"


def robust_range(values: Sequence[float], k: float = 3.0) -> tuple[float, float]:
    """[q1 - k IQR, q3 + k IQR], narrowed to the data: outliers fall outside, the rest fills it."""
    if not values:
        return (-math.inf, math.inf)
    xs = sorted(values)
    q1, q3 = _quantile(xs, 0.25), _quantile(xs, 0.75)
    spread = q3 - q1
    low = max(xs[0], q1 - k * spread) if spread > 0 else xs[0]
    high = min(xs[-1], q3 + k * spread) if spread > 0 else xs[-1]
    return (low, high)


def _quantile(xs: Sequence[float], q: float) -> float:
    position = q * (len(xs) - 1)
    i = math.floor(position)
    j = min(i + 1, len(xs) - 1)
    return xs[i] + (xs[j] - xs[i]) * (position - i)
