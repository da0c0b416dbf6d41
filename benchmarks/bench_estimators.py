"""ffn.sklearn's estimators against MLPClassifier / MLPRegressor: the whole `fit`, same settings.

Each configuration is fitted by both estimators with the same network, optimizer, batch size,
epochs, float64 and no penalty, in paired rounds (each round fits both, the order alternating),
so load from other jobs falls on both alike. Both run on one thread (torch's, and the BLAS that
scikit-learn's numpy uses, through threadpoolctl), and both run every epoch they are given
(n_iter_no_change above max_iter; lbfgs: tol 0), so the work is the same. `--dtype OURS,THEIRS`
sets ffn's dtype and the dtype of the X scikit-learn gets (it computes in X's dtype). Printed:
the machine and its load, the median wall time of each arm, the median of the per-round
ratios, and the epochs each ran.

    python benchmarks/bench_estimators.py [--pairs 5] [--epochs 100] [--dtype float32,float32]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

from sklearn.datasets import load_digits, make_friedman1
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ffn.sklearn import FFNClassifier, FFNRegressor


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def data(task: str):
    if task == "classification":
        x, y = load_digits(return_X_y=True)
    else:
        x, y = make_friedman1(n_samples=5000, n_features=10, noise=1.0, random_state=0)
    return StandardScaler().fit_transform(x), y


def pair(task: str, solver: str, epochs: int, dtype: str):
    """(ffn estimator, sklearn estimator) with the same settings."""
    hidden = (64,)
    common = dict(max_iter=epochs, random_state=0, alpha=0.0)
    if solver == "lbfgs":
        ours = dict(optimizer="lbfgs", tol=0.0, n_iter_no_change=epochs + 1)
        theirs = dict(solver="lbfgs", tol=0.0, max_fun=10**6, **common)
    else:
        ours = dict(optimizer="adam", lr=1e-3, batch_size=200, n_iter_no_change=epochs + 1)
        theirs = dict(solver="adam", learning_rate_init=1e-3, batch_size=200, **common)
        theirs["n_iter_no_change"] = epochs + 1
    ours |= dict(hidden_layer_sizes=hidden, max_epochs=epochs, random_state=0, num_threads=1)
    ours["dtype"] = dtype
    if task == "classification":
        return FFNClassifier(**ours), MLPClassifier(hidden_layer_sizes=hidden, **theirs)
    return FFNRegressor(**ours), MLPRegressor(hidden_layer_sizes=hidden, **theirs)


def timed_fit(estimator, x, y) -> float:
    start = time.perf_counter()
    estimator.fit(x, y)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument(
        "--dtype",
        default="float64,float64",
        help="ffn's dtype, then the dtype of the X sklearn gets (it computes in X's dtype)",
    )
    args = parser.parse_args()
    ours_dtype, theirs_dtype = args.dtype.split(",")
    warnings.simplefilter("ignore", ConvergenceWarning)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"dtype: ffn {ours_dtype}, sklearn {theirs_dtype}")
    configs = [(t, s) for t in ("classification", "regression") for s in ("adam", "lbfgs")]
    print(f"{'configuration':<28} {'ffn s':>8} {'sklearn s':>10} {'ratio':>7}  epochs ffn/sklearn")
    with threadpool_limits(1):
        for task, solver in configs:
            x, y = data(task)
            x_theirs = x.astype(theirs_dtype)
            walls: dict[str, list[float]] = {"ffn": [], "sklearn": []}
            ratios, epochs = [], None
            for i in range(args.pairs):
                ours, theirs = pair(task, solver, args.epochs, ours_dtype)
                order = [("ffn", ours, x), ("sklearn", theirs, x_theirs)]
                for name, est, xs in order if i % 2 == 0 else order[::-1]:
                    walls[name].append(timed_fit(est, xs, y))
                ratios.append(walls["sklearn"][-1] / walls["ffn"][-1])
                epochs = (ours.n_iter_, theirs.n_iter_)
            name = f"{task} {solver} {x.shape[0]}x{x.shape[1]}"
            print(
                f"{name:<28} {statistics.median(walls['ffn']):8.3f} "
                f"{statistics.median(walls['sklearn']):10.3f} {statistics.median(ratios):6.2f}x"
                f"  {epochs[0]}/{epochs[1]}  (load {os.getloadavg()[0]:.2f})"
            )
    print("ratio: the median over pairs of sklearn's fit time / ffn's; > 1 means ffn is faster")


if __name__ == "__main__":
    main()
