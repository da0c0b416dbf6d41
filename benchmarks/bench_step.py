"""Samples/s of one full training step, ffn against native torch and scikit-learn.

A step is forward, loss (+ penalty: none here, lam = 0, as sklearn's alpha = 0), backward and a
plain SGD update (lr 0.01, no momentum), on float32 data, for four network sizes:

- ffn default:        ffn.step.manual_gradients + ffn.step.sgd_update_ (no autograd graph)
- ffn train_step:     ffn.step.train_step with torch.optim.SGD (what the runner calls)
- ffn Functions:      FeedForward(backend="manual") + loss.backward() + torch.optim.SGD
- native torch:       nn.Linear + nn.ReLU + F.cross_entropy + torch.optim.SGD
- sklearn:            MLPClassifier(solver="sgd").partial_fit, one epoch over the same samples
- ffn compiled:       torch.compile(manual_gradients) + sgd_update_ (only with --compile)

Every torch row starts from the same weights and cycles through the same batches; one repeat is
one pass over them (k steps) for every row in turn, the order rotating between repeats, so load
from elsewhere on the machine hits all rows alike. Medians and min-max over repeats are printed.

Clock: with one thread on the CPU the default is the thread's CPU time (`time.thread_time`):
torch, MKL and numpy's BLAS then all run in the calling thread, so it is the step's own time, and
it does not count the time the thread waits for a core on a shared machine. With several threads
or on CUDA it is wall time (`--clock wall` forces it everywhere).

FLOP count: 6 n sum_l d_l H_l per step (2 n d H for the forward product x W, 2 for dW = x^T dz,
2 for dx = dz W^T), counting the first layer's dx that nobody computes and ignoring biases,
activations and softmax; it is the usual "6 x parameters x samples". The peak is torch.mm on two
square matrices (2048^3, 1024^3 with --quick), timed inside the same rotation.

    python benchmarks/bench_step.py [--threads N] [--device cuda] [--quick] [--compile]
                                    [--clock auto|cpu|wall] [--sizes tiny small ...]
"""

from __future__ import annotations

import argparse
import atexit
import copy
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffn import FeedForward, Penalty
from ffn.losses import loss_function
from ffn.step import compile_gradients, manual_gradients, sgd_update_, train_step

# name: (in_features, hidden, out_features, batch)
SIZES: dict[str, tuple[int, list[int], int, int]] = {
    "tiny": (2, [16], 2, 32),
    "small": (64, [128, 128], 10, 128),
    "medium": (784, [512, 512], 10, 256),
    "large": (784, [2048, 2048], 10, 512),
}
# Steps per repeat: about 0.2-0.5 s of the slowest torch row on one core of the reference machine.
STEPS = {"tiny": 1000, "small": 300, "medium": 16, "large": 2}
QUICK_STEPS = {"tiny": 100, "small": 30, "medium": 2, "large": 1}
LR = 0.01
NATIVE = "native torch"
COMPILED = "ffn compiled"


@dataclass
class Row:
    """One implementation: `epoch()` runs k steps over the size's batches."""

    name: str
    epoch: Callable[[], None]
    samples: int
    times: list[float] = field(default_factory=list)
    note: str = ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(args: argparse.Namespace) -> list[str]:
    lines = [
        f"cpu: {cpu_model()}, {os.cpu_count()} logical cores; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"torch {torch.__version__} (threads {torch.get_num_threads()}, "
        f"BLAS {'MKL' if torch.backends.mkl.is_available() else 'other'}), "
        f"numpy {np.__version__}, python {platform.python_version()}",
    ]
    if args.device == "cuda":
        lines.append(f"device: {torch.cuda.get_device_name()} (torch rows), CPU threads as above")
    else:
        import sklearn
        from threadpoolctl import threadpool_info

        blas = [  # which package bundles it: numpy.libs is the one sklearn's products use
            f"{os.path.basename(os.path.dirname(i['filepath']))}: {i['internal_api']} "
            f"{i.get('version')} {i.get('threading_layer')} {i.get('architecture')}"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        ]
        lines.append(f"scikit-learn {sklearn.__version__}; BLAS: {', '.join(blas) or '?'}")
    if os.environ.get("OPENBLAS_CORETYPE"):
        lines.append(f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} (numpy's OpenBLAS)")
    return lines


def make_data(size: str, steps: int, device: str) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
    """k batches of a learnable problem (labels from a random linear teacher), and all of X."""
    d, _, m, n = SIZES[size]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * n, d, generator=g)
    y = (x @ torch.randn(d, m, generator=g)).argmax(1)
    pairs = zip(x.split(n), y.split(n), strict=True)
    batches = [(xb.to(device), yb.to(device)) for xb, yb in pairs]
    return batches, torch.cat([x, y[:, None].float()], 1)


def native_net(model: FeedForward) -> nn.Sequential:
    """nn.Linear layers with ffn's initial weights (nn.Linear stores W^T), ReLU between."""
    mods: list[nn.Module] = []
    for layer in model.layers:
        d, h = layer.weight.shape
        lin = nn.Linear(d, h, device=layer.weight.device)
        with torch.no_grad():
            lin.weight.copy_(layer.weight.T)
            lin.bias.copy_(layer.bias)
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def torch_rows(size: str, batches: list, device: str, with_compile: bool) -> list[Row]:
    d, hidden, m, n = SIZES[size]
    task = "classification"
    base = FeedForward(d, hidden, m, activation="relu", seed=0, device=device)
    samples = n * len(batches)
    rows = []

    model_a = copy.deepcopy(base)
    params_a = list(model_a.parameters())

    def ffn_default() -> None:
        for x, y in batches:
            manual_gradients(model_a, x, y, task)
            sgd_update_(params_a, LR)

    rows.append(Row("ffn default", ffn_default, samples))

    model_t = copy.deepcopy(base)
    opt_t = torch.optim.SGD(model_t.parameters(), lr=LR)
    penalty = Penalty()

    def ffn_train_step() -> None:
        for x, y in batches:
            train_step(model_t, opt_t, penalty, x, y, task)

    rows.append(Row("ffn train_step + optim.SGD", ffn_train_step, samples))

    model_f = base.with_backend("manual")
    opt_f = torch.optim.SGD(model_f.parameters(), lr=LR)
    loss_fn = loss_function(task, "manual")

    def ffn_functions() -> None:
        for x, y in batches:
            opt_f.zero_grad()
            loss_fn(model_f(x), y).backward()
            opt_f.step()

    rows.append(Row("ffn Functions + autograd", ffn_functions, samples))

    net = native_net(base)
    opt_n = torch.optim.SGD(net.parameters(), lr=LR)

    def native() -> None:
        for x, y in batches:
            opt_n.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt_n.step()

    rows.append(Row(NATIVE, native, samples))

    if with_compile:
        model_c = copy.deepcopy(base)
        params_c = list(model_c.parameters())
        compiled = compile_gradients()

        def ffn_compiled() -> None:
            for x, y in batches:
                compiled(model_c, x, y, task)
                sgd_update_(params_c, LR)

        rows.append(Row(COMPILED, ffn_compiled, samples))
    return rows


def sklearn_row(size: str, data: Tensor) -> Row:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    d, hidden, m, n = SIZES[size]
    x = data[:, :d].numpy()  # float32: MLPClassifier keeps float32 since 1.x
    y = data[:, d].numpy().astype(np.int64)
    clf = MLPClassifier(
        hidden_layer_sizes=tuple(hidden),
        activation="relu",
        solver="sgd",
        batch_size=n,
        learning_rate_init=LR,
        momentum=0.0,
        nesterovs_momentum=False,
        alpha=0.0,
        max_iter=1,
        shuffle=False,
        random_state=0,
    )
    classes = np.arange(m)

    def epoch() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.partial_fit(x, y, classes=classes)

    note = "binary: one logistic output unit" if m == 2 else ""
    return Row("sklearn MLPClassifier", epoch, len(x), note=note)


def peak_row(device: str, quick: bool) -> tuple[Row, float]:
    k = 1024 if quick else 2048
    g = torch.Generator().manual_seed(1)
    a = torch.randn(k, k, generator=g).to(device)
    b = torch.randn(k, k, generator=g).to(device)
    out = torch.empty(k, k, device=device)
    reps = 20 if device == "cuda" else 1

    def mm() -> None:
        for _ in range(reps):
            torch.mm(a, b, out=out)

    return Row(f"torch.mm {k}^3 (peak)", mm, samples=reps), 2.0 * k**3


def run_updates(size: str, args: argparse.Namespace) -> list[str]:
    """Microseconds of the SGD update alone (no momentum), with the gradients held fixed."""
    d, hidden, m, _ = SIZES[size]
    model = FeedForward(d, hidden, m, device=args.device)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-6
    steps = (QUICK_STEPS if args.quick else STEPS)[size] * 4
    lr = 1e-9  # keeps the weights where they are over many repeats

    def loop() -> None:
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-lr)

    variants = {
        "p.add_(p.grad, alpha=-lr) per tensor": loop,
        "torch._foreach_add_ (sgd_update_)": lambda: sgd_update_(params, lr),
        "torch.optim.SGD (default foreach=None)": torch.optim.SGD(params, lr=lr).step,
        "torch.optim.SGD(foreach=True)": torch.optim.SGD(params, lr=lr, foreach=True).step,
    }
    rows = [Row(name, _repeat(fn, steps), steps) for name, fn in variants.items()]
    _time_rows(rows, args)
    lines = [f"### SGD update alone, {size} ({len(params)} tensors), {steps} updates a repeat", ""]
    lines += ["| update | us (median) | min - max |", "|---|---:|---:|"]
    for row in rows:
        us = [1e6 * t / row.samples for t in row.times]
        lines.append(
            f"| {row.name} | {statistics.median(us):.1f} | {min(us):.1f} - {max(us):.1f} |"
        )
    return [*lines, ""]


def _repeat(fn: Callable[[], None], k: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(k):
            fn()

    return run


def _time_rows(rows: list[Row], args: argparse.Namespace) -> None:
    """One warm-up pass, then `args.repeats` passes of every row, the order rotating."""
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    for row in rows:  # warm-up pass: allocations, sklearn's init, compilation
        sync()
        t0 = time.perf_counter()
        row.epoch()
        sync()
        if row.name == COMPILED:
            row.note = f"first pass incl. compile {time.perf_counter() - t0:.1f} s (wall)"
    for r in range(args.repeats):
        shift = r % len(rows)
        for row in rows[shift:] + rows[:shift]:
            sync()
            t0 = clock()
            row.epoch()
            sync()
            row.times.append(clock() - t0)


def run_size(size: str, args: argparse.Namespace) -> list[str]:
    d, hidden, m, n = SIZES[size]
    steps = (QUICK_STEPS if args.quick else STEPS)[size]
    batches, data = make_data(size, steps, args.device)
    rows = torch_rows(size, batches, args.device, args.compile)
    if args.device == "cpu":
        rows.append(sklearn_row(size, data))
    peak, peak_flops = peak_row(args.device, args.quick)
    rows.append(peak)
    _time_rows(rows, args)

    flops_per_sample = 6 * sum(a * b for a, b in zip([d, *hidden], [*hidden, m], strict=True))
    peak_gflops = peak_flops * peak.samples / statistics.median(peak.times) / 1e9
    native = next(r for r in rows if r.name == NATIVE)
    native_rate = native.samples / statistics.median(native.times)
    title = f"{size}: {d}-{hidden}-{m}, batch {n}, {steps} steps a repeat"
    lines = [f"### {title}", ""]
    lines.append(
        "| step | samples/s (median) | min - max | x native | GFLOP/s | % of mm peak | note |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        if row is peak:
            continue
        rates = [row.samples / t for t in row.times]
        med = statistics.median(rates)
        gflops = med * flops_per_sample / 1e9
        lines.append(
            f"| {row.name} | {med:,.0f} | {min(rates):,.0f} - {max(rates):,.0f} "
            f"| {med / native_rate:.2f} | {gflops:.3g} | {100 * gflops / peak_gflops:.3g}% "
            f"| {row.note} |"
        )
    lines.append(f"| {peak.name} | | | | {peak_gflops:.1f} | 100% | same rotation |")
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="few steps and repeats: a smoke run")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile row")
    parser.add_argument(
        "--updates", action="store_true", help="also time the SGD update variants alone"
    )
    parser.add_argument("--repeats", type=int, default=None, help="repeats per row (7; 3 quick)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument(
        "--clock",
        choices=["auto", "cpu", "wall"],
        default="auto",
        help="auto: thread CPU time with one thread on the CPU, else wall time",
    )
    args = parser.parse_args()
    if args.clock == "auto":
        args.clock = "cpu" if args.threads == 1 and args.device == "cpu" else "wall"
    if args.clock == "cpu" and (args.threads != 1 or args.device != "cpu"):
        parser.error("--clock cpu counts only the calling thread: use it with --threads 1 on cpu")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")

    if args.compile and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        # A fresh cache, so the compile time printed is a first compile, not a cache hit.
        cache = tempfile.mkdtemp(prefix="ffn-bench-inductor-")
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    torch.set_num_threads(args.threads)
    if args.device == "cpu":
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)  # numpy's BLAS, for sklearn
    lines = machine_lines(args)
    lines.append(f"clock: {'thread CPU time' if args.clock == 'cpu' else 'wall time'}")
    print("\n".join(lines), end="\n\n", flush=True)
    for size in args.sizes:
        print("\n".join(run_size(size, args)), flush=True)
    if args.updates:
        for size in args.sizes:
            print("\n".join(run_updates(size, args)), flush=True)
    print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
