"""ffn.sklearn's estimators against MLPClassifier / MLPRegressor: the whole `fit`, same settings.

Each configuration is fitted by both estimators with the same network (64 ReLU units), optimizer,
batch size, number of epochs, dtype and no penalty, in paired rounds (each round fits both, the
order alternating), so load from other jobs falls on both alike. The same work on both sides:

- adam: both run every epoch (n_iter_no_change above max_iter), batches of 200, lr 1e-3;
- lbfgs: scipy's L-BFGS-B stops itself (its ftol) even with tol=0, so a first, untimed sklearn
  fit says how many iterations it makes, and ffn is given exactly that many (tol=0);
- threads: one each, torch's (`num_threads=1`) and the BLAS numpy uses (threadpoolctl); on a
  2-core machine shared with other jobs a second thread only waits;
- dtype: `--dtype OURS,THEIRS` sets ffn's dtype and the dtype of the X scikit-learn gets (it
  computes in X's dtype); float64 both by default, as both estimators default to.

Each arm is fitted once, untimed, before the rounds (imports and first-call costs out of the
comparison). Printed: the machine, its load, torch's and numpy's BLAS, then per configuration the
medians of wall time and of CPU time (this process's, so time spent waiting for a core while
other jobs run is left out) and the medians of the per-round ratios sklearn / ffn (> 1: ffn
faster), with the epochs each ran.

A third arm in every round, its line giving sklearn's time / its time the same way:
`--torch-products`, ffn with torch's products (`ffn.functions.numpy_products` off: MKL, narrow
ones transposed where `ffn.functions.MKL_SLOW_PATHS`), as before the estimators used numpy's;
`--plain-products`, ffn with every product torch's A @ B (numpy's off and
`ffn.functions._NARROW_COLUMNS` emptied), as before `ffn.functions.matmul` computed narrow ones
transposed; `--slow-mkl-routes`, ffn with both detours on (`ffn.functions.MKL_SLOW_PATHS` set:
numpy's products, narrow ones transposed), as on every CPU before the routing followed the
CPU's vendor; `--torch-lbfgs`, ffn with torch's own LBFGS step (`ffn.lbfgs.FlatLBFGS`'s numpy
step off), as before the step ran in numpy.

    python benchmarks/bench_estimators.py [--pairs 5] [--epochs 100] [--dtype float32,float32]
                                          [--torch-products | --plain-products |
                                           --slow-mkl-routes | --torch-lbfgs]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from sklearn.datasets import load_digits, make_friedman1
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_info, threadpool_limits

from ffn import functions
from ffn.sklearn import FFNClassifier, FFNRegressor

HIDDEN = (64,)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def blas() -> str:
    """The BLAS behind numpy (threadpoolctl) and behind torch (its build config)."""
    numpy_blas = [f"{i['internal_api']} {i['version']}" for i in threadpool_info()]
    config = torch.__config__.show()
    torch_blas = "MKL" if "Math Kernel Library" in config else "its own build's BLAS"
    vendor = functions.cpu_vendor() or "vendor unknown"
    routes = f"{vendor}, MKL_SLOW_PATHS={functions.MKL_SLOW_PATHS}"
    return (
        f"numpy: {', '.join(numpy_blas) or 'unknown'}; torch {torch.__version__}: {torch_blas}; "
        f"{routes}"
    )


def data(task: str):
    if task == "classification":
        x, y = load_digits(return_X_y=True)
    else:
        x, y = make_friedman1(n_samples=5000, n_features=10, noise=1.0, random_state=0)
    return StandardScaler().fit_transform(x), y


def theirs_of(task: str, solver: str, epochs: int):
    """scikit-learn's estimator for the configuration."""
    common = dict(hidden_layer_sizes=HIDDEN, max_iter=epochs, random_state=0, alpha=0.0)
    if solver == "lbfgs":
        settings = dict(solver="lbfgs", tol=0.0, max_fun=10**6, **common)
    else:
        settings = dict(solver="adam", learning_rate_init=1e-3, batch_size=200, **common)
        settings["n_iter_no_change"] = epochs + 1
    return (MLPClassifier if task == "classification" else MLPRegressor)(**settings)


def ours_of(task: str, solver: str, epochs: int, dtype: str):
    """ffn's estimator for the same configuration, running every one of `epochs`."""
    settings = dict(hidden_layer_sizes=HIDDEN, max_epochs=epochs, random_state=0, num_threads=1)
    settings |= dict(dtype=dtype, n_iter_no_change=epochs + 1)
    if solver == "lbfgs":
        settings |= dict(optimizer="lbfgs", tol=0.0)
    else:
        settings |= dict(optimizer="adam", lr=1e-3, batch_size=200)
    return (FFNClassifier if task == "classification" else FFNRegressor)(**settings)


# What each side is set to, printed per configuration (the knobs that decide the work done).
THEIR_KEYS = (
    "hidden_layer_sizes",
    "activation",
    "solver",
    "alpha",
    "batch_size",
    "learning_rate_init",
    "beta_1",
    "beta_2",
    "epsilon",
    "max_iter",
    "tol",
    "n_iter_no_change",
    "early_stopping",
    "shuffle",
    "max_fun",
)
OUR_KEYS = (
    "hidden_layer_sizes",
    "activation",
    "optimizer",
    "penalty",
    "lam",
    "batch_size",
    "lr",
    "max_epochs",
    "tol",
    "n_iter_no_change",
    "early_stopping",
    "dtype",
    "num_threads",
)
OPTIMIZER_KEYS = (
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "history_size",
    "max_iter",
    "max_eval",
    "line_search_fn",
)


def configuration(theirs, ours, x_theirs) -> str:
    """Both estimators' settings (ours after its fit: the optimizer torch built), one line each."""
    their_params = theirs.get_params()
    sk = ", ".join(f"{k}={their_params[k]}" for k in THEIR_KEYS if k in their_params)
    params = ours.get_params()
    group = ours._optimizer.param_groups[0]
    built = ", ".join(f"{k}={group[k]}" for k in OPTIMIZER_KEYS if k in group)
    ffn = ", ".join(f"{k}={params[k]}" for k in OUR_KEYS)
    return (
        f"  sklearn {type(theirs).__name__}({sk}), X {x_theirs.dtype}\n"
        f"  ffn     {type(ours).__name__}({ffn})\n"
        f"          {type(ours._optimizer).__name__}({built})"
    )


@contextlib.contextmanager
def torch_products():
    """Inside, the estimators' fits keep torch's products (functions.numpy_products off)."""
    import ffn.sklearn

    enabled = ffn.sklearn.numpy_products
    ffn.sklearn.numpy_products = lambda enabled=True: functions.numpy_products(False)
    try:
        yield
    finally:
        ffn.sklearn.numpy_products = enabled


@contextlib.contextmanager
def plain_products():
    """Inside, ffn computes every product as torch's A @ B (none numpy's, none transposed)."""
    narrow = functions._NARROW_COLUMNS
    functions._NARROW_COLUMNS = range(0)
    try:
        with torch_products():
            yield
    finally:
        functions._NARROW_COLUMNS = narrow


@contextlib.contextmanager
def slow_mkl_routes():
    """Inside, ffn routes products as where MKL is off Intel's CPUs (numpy's, narrow transposed)."""
    slow = functions.MKL_SLOW_PATHS
    functions.MKL_SLOW_PATHS = True
    try:
        yield
    finally:
        functions.MKL_SLOW_PATHS = slow


@contextlib.contextmanager
def torch_lbfgs():
    """Inside, FlatLBFGS takes torch's own step (its numpy step needs a dtype it lists)."""
    import ffn.lbfgs

    dtypes = ffn.lbfgs._NUMPY_DTYPES
    ffn.lbfgs._NUMPY_DTYPES = ()
    try:
        yield
    finally:
        ffn.lbfgs._NUMPY_DTYPES = dtypes


THIRD_ARMS = {
    "torch": torch_products,
    "plain": plain_products,
    "slow-mkl": slow_mkl_routes,
    "torch-lbfgs": torch_lbfgs,
}
THIRD_LABELS = {
    "slow-mkl": "slow-MKL routes",
    "torch": "torch products",
    "plain": "plain products",
    "torch-lbfgs": "torch's LBFGS step",
}


def timed_fit(estimator, x, y, arm: str = "") -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one fit."""
    with THIRD_ARMS[arm]() if arm in THIRD_ARMS else contextlib.nullcontext():
        wall, cpu = time.perf_counter(), time.process_time()
        estimator.fit(x, y)
        return time.perf_counter() - wall, time.process_time() - cpu


FIRST_FIT = """
import time, warnings
from threadpoolctl import threadpool_limits
import benchmarks.bench_estimators as bench
warnings.simplefilter("ignore")
x, y = bench.data({task!r})
est = bench.{arm}_of({task!r}, {solver!r}, {epochs}, *{ours_dtype!r})
x = x.astype({x_dtype!r})
with threadpool_limits(1):
    start = time.perf_counter()
    est.fit(x, y)
print(time.perf_counter() - start)
"""


def first_fits(pairs: int, epochs: int, ours_dtype: str, theirs_dtype: str) -> None:
    """The first fit in a fresh process (imports done, first-call costs in), paired rounds."""
    root = Path(__file__).resolve().parents[1]
    for task, solver in (("classification", "adam"), ("regression", "lbfgs")):
        walls: dict[str, list[float]] = {"ours": [], "theirs": []}
        for i in range(pairs):
            for arm in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                ours = arm == "ours"
                code = FIRST_FIT.format(
                    task=task,
                    solver=solver,
                    epochs=epochs,
                    arm=arm,
                    ours_dtype=(ours_dtype,) if ours else (),
                    x_dtype="float64" if ours else theirs_dtype,
                )
                out = subprocess.run(
                    [sys.executable, "-c", code], cwd=root, capture_output=True, text=True
                )
                walls[arm].append(float(out.stdout.split()[-1]))
        ours, theirs = statistics.median(walls["ours"]), statistics.median(walls["theirs"])
        ratio = statistics.median(
            t / o for o, t in zip(walls["ours"], walls["theirs"], strict=True)
        )
        print(
            f"first fit, fresh process: {task} {solver:<6} ffn {ours:.3f} s, sklearn "
            f"{theirs:.3f} s, {ratio:.2f}x  (load {os.getloadavg()[0]:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument(
        "--dtype",
        default="float64,float64",
        help="ffn's dtype, then the dtype of the X sklearn gets (it computes in X's dtype)",
    )
    parser.add_argument("--only", default="", help="run only configurations containing this")
    parser.add_argument(
        "--first", action="store_true", help="also time the first fit in fresh processes"
    )
    third = parser.add_mutually_exclusive_group()
    third.add_argument(
        "--torch-products",
        action="store_const",
        const="torch",
        dest="third",
        help="a third arm each round: ffn with torch's products, none numpy's",
    )
    third.add_argument(
        "--plain-products",
        action="store_const",
        const="plain",
        dest="third",
        help="a third arm each round: ffn with every product torch's A @ B, none transposed",
    )
    third.add_argument(
        "--slow-mkl-routes",
        action="store_const",
        const="slow-mkl",
        dest="third",
        help="a third arm each round: ffn with numpy's products and narrow ones transposed",
    )
    third.add_argument(
        "--torch-lbfgs",
        action="store_const",
        const="torch-lbfgs",
        dest="third",
        help="a third arm each round: ffn with torch's own LBFGS step, not the numpy one",
    )
    args = parser.parse_args()
    ours_dtype, theirs_dtype = args.dtype.split(",")
    warnings.simplefilter("ignore", ConvergenceWarning)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"BLAS: {blas()}; one thread each")
    print(f"dtype: ffn {ours_dtype}, sklearn {theirs_dtype}; {args.pairs} pairs")
    configs = [(t, s) for t in ("classification", "regression") for s in ("adam", "lbfgs")]
    print(
        f"{'configuration':<28} {'ffn s':>7} {'sk s':>7} {'wall':>6} {'ffn cpu':>8} "
        f"{'sk cpu':>7} {'cpu':>6}  epochs ffn/sklearn"
    )
    with threadpool_limits(1):
        for task, solver in configs:
            name = f"{task} {solver}"
            if args.only not in name:
                continue
            x, y = data(task)
            x_theirs = x.astype(theirs_dtype)
            epochs = args.epochs
            warm_theirs = theirs_of(task, solver, epochs).fit(x_theirs, y)
            if solver == "lbfgs":  # the iterations scipy makes before its own stop
                epochs = warm_theirs.n_iter_
            warm_ours = ours_of(task, solver, epochs, ours_dtype).fit(x, y)
            print(configuration(warm_theirs, warm_ours, x_theirs))
            arms = ["ffn", "sklearn"] + ([args.third] if args.third else [])
            times = {k: {arm: [] for arm in arms} for k in ("wall", "cpu")}
            ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
            plain_ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
            for i in range(args.pairs):
                ours = ours_of(task, solver, epochs, ours_dtype)
                theirs = theirs_of(task, solver, args.epochs)
                order = [("ffn", ours, x), ("sklearn", theirs, x_theirs)]
                if args.third:
                    order.append((args.third, ours_of(task, solver, epochs, ours_dtype), x))
                for arm, est, xs in order if i % 2 == 0 else order[::-1]:
                    wall, cpu = timed_fit(est, xs, y, arm)
                    times["wall"][arm].append(wall)
                    times["cpu"][arm].append(cpu)
                for k in ratios:
                    ratios[k].append(times[k]["sklearn"][-1] / times[k]["ffn"][-1])
                    if args.third:
                        plain_ratios[k].append(times[k]["sklearn"][-1] / times[k][args.third][-1])
            med = {k: {arm: statistics.median(v) for arm, v in d.items()} for k, d in times.items()}
            label = f"{name} {x.shape[0]}x{x.shape[1]}"
            print(
                f"{label:<28} {med['wall']['ffn']:7.3f} {med['wall']['sklearn']:7.3f} "
                f"{statistics.median(ratios['wall']):5.2f}x {med['cpu']['ffn']:8.3f} "
                f"{med['cpu']['sklearn']:7.3f} {statistics.median(ratios['cpu']):5.2f}x"
                f"  {ours.n_iter_}/{theirs.n_iter_}  (load {os.getloadavg()[0]:.2f})"
            )
            if args.third:
                print(
                    f"{'  ffn, ' + THIRD_LABELS[args.third]:<28} {med['wall'][args.third]:7.3f} "
                    f"{'':>7} {statistics.median(plain_ratios['wall']):5.2f}x "
                    f"{med['cpu'][args.third]:8.3f} {'':>7} "
                    f"{statistics.median(plain_ratios['cpu']):5.2f}x"
                )
    if args.first:
        first_fits(args.pairs, args.epochs, ours_dtype, theirs_dtype)
    print("ratio: the median over pairs of sklearn's time / ffn's; > 1 means ffn is faster")


if __name__ == "__main__":
    main()
