"""The end figures, drawn again on a kept Figure as a sweep's members draw them (ffn.figures).

Thread CPU time of `ffn.figures.render` per figure, the minimum over repeats of 10 draws each,
after 3 warm-up draws that build the kept Figure: a 10-class and a 2-class confusion matrix and
a decision-regions plot over 200 test points. `--tree DIR` draws with another checkout's ffn
(main before a change), run in turn with this one's to compare.

    python benchmarks/bench_figures.py [--repeats 5] [--tree ../main-before]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import numpy as np


def drawings() -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    gen = np.random.default_rng(0)
    x, y = gen.normal(size=(200, 2)), gen.integers(0, 2, 200)
    g0, g1 = np.linspace(-3, 3, 200), np.linspace(-2, 2, 200)
    regions = (np.add.outer(g1, g0) > 0).astype(np.int64)
    return {
        "confusion matrix, 10 classes": (
            "confusion_matrix",
            {"counts": gen.integers(0, 40, (10, 10))},
        ),
        "confusion matrix, 2 classes": (
            "confusion_matrix",
            {"counts": np.array([[90, 10], [12, 88]])},
        ),
        "decision regions": ("decision_regions", dict(g0=g0, g1=g1, classes=regions, x=x, y=y)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tree", help="another checkout whose ffn draws")
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, os.path.abspath(args.tree))  # ahead of this one's editable install
    figures = importlib.import_module("ffn.figures")
    print(f"ffn from {os.path.dirname(figures.__file__)}; load {os.getloadavg()[0]:.2f}")
    print("| figure | ms, thread CPU (min of repeats) |\n|---|---:|")
    for label, (name, arrays) in drawings().items():
        for _ in range(3):
            figures.render(name, arrays)
        times = []
        for _ in range(args.repeats):
            start = time.thread_time()
            for _ in range(10):
                figures.render(name, arrays)
            times.append((time.thread_time() - start) / 10 * 1e3)
        print(f"| {label} | {min(times):.1f} |")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
