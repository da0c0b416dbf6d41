"""hydra/launcher=ensemble against the basic launcher: whole sweeps, and one step per size.

Whole process (`--whole`): the same sweep (`python run.py -m ...`, 32 jobs: 4 learning rates x
8 seeds) on the basic launcher and on the ensemble, timed from process start to exit, in pairs
whose order alternates, on one thread (trainer.num_threads=1, the default). Two sweeps:

- moons: dataset=moons model.hidden=[16] (2-[16]-2), everything else ffn's defaults;
- digits: ffn's default config (64-[128]-10, Adam, cosine, batch 64).

`--epochs N` shortens every job (trainer.max_epochs=N; 100 by default) to fit a busy machine.

Per step (`--step`): E members' minibatch steps at once (ffn.ensemble: StackedNet through
ffn.step.manual_gradients, StackedOptimizer's SGD) against the same E steps one after the other
(manual_gradients + sgd_update_, the fastest single-run step), each member its own minibatch
rows gathered from its own permutation, over benchmarks/bench_step.py's sizes, on one thread,
thread CPU time, medians over repeats (the order of the two rotating).

    python benchmarks/bench_ensemble.py --step [--sizes tiny small] [--members 1 8 32 128]
    python benchmarks/bench_ensemble.py --whole [--sweeps moons digits] [--epochs N] [--repeats 3]
    python benchmarks/bench_ensemble.py --against ../main-checkout [--sweeps moons] [--repeats 2]

`--against TREE`: the ensemble sweep in another checkout of ffn (main before a change, run with
this interpreter) and in this one, alternating: wall and the process tree's CPU (user + sys),
medians: what a change to the ensemble gained, with less of the machine's load in the CPU column.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import SIZES, machine_lines

from ffn.ensemble.optim import StackedOptimizer
from ffn.ensemble.stack import StackedNet
from ffn.model import FeedForward
from ffn.step import manual_gradients, sgd_update_

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = {
    "moons": ["dataset=moons", "model.hidden=[16]"],
    "digits": [],
}
GRID = ["optimizer.lr=0.001,0.003,0.01,0.03", "trainer.seed=0,1,2,3,4,5,6,7"]
MAX_STACK_BYTES = 2**30  # sizes whose E copies would need more are skipped


# ---------------------------------------------------------------------------- per step


def step_pair(size: str, members: int, steps: int, repeats: int) -> tuple[float, float] | None:
    """(sequential, ensemble) seconds per step of all `members`, medians."""
    d, hidden, m, batch = SIZES[size]
    n = batch * steps
    models = [FeedForward(d, hidden, m, seed=s) for s in range(members)]
    if sum(p.numel() for p in models[0].parameters()) * 4 * members * 3 > MAX_STACK_BYTES:
        return None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(members, n, d, generator=g)
    y = torch.randint(0, m, (members, n), generator=g)
    orders = torch.stack([torch.randperm(n, generator=g) for _ in range(members)])
    rows = torch.arange(members).unsqueeze(1)
    lr = [0.01 * (1 + e % 4) for e in range(members)]
    params = [list(model.parameters()) for model in models]
    net = StackedNet(models)
    optimizers = [torch.optim.SGD(p, lr=rate) for p, rate in zip(params, lr, strict=True)]
    stacked = StackedOptimizer(optimizers, params, net.parameters())

    def sequential() -> None:
        for k in range(steps):
            for e, model in enumerate(models):
                idx = orders[e, k * batch : (k + 1) * batch]
                manual_gradients(model, x[e][idx], y[e][idx], "classification")
                sgd_update_(params[e], lr[e])

    def ensemble() -> None:
        for k in range(steps):
            idx = orders[:, k * batch : (k + 1) * batch]
            manual_gradients(net, x[rows, idx], y[rows, idx], "classification")
            stacked.step()

    times: dict[str, list[float]] = {"sequential": [], "ensemble": []}
    runs = [("sequential", sequential), ("ensemble", ensemble)]
    for r in range(repeats + 1):
        for name, run in runs if r % 2 else runs[::-1]:
            start = time.thread_time()
            run()
            if r:  # the first round warms up
                times[name].append((time.thread_time() - start) / steps)
    return statistics.median(times["sequential"]), statistics.median(times["ensemble"])


def step_table(sizes: list[str], members: list[int], repeats: int) -> None:
    torch.set_num_threads(1)
    print("\nper step, one thread, thread CPU time (medians):")
    print("| size | net, batch | E | E sequential steps | one ensemble step | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for size in sizes:
        d, hidden, m, batch = SIZES[size]
        for e in members:
            steps = max(2, min(50, 20000 // (e * batch)))
            pair = step_pair(size, e, steps, repeats)
            net = f"{d}-{hidden}-{m}, {batch}"
            if pair is None:
                print(f"| {size} | {net} | {e} | (over {MAX_STACK_BYTES >> 20} MiB: skipped) | | |")
                continue
            seq, ens = pair
            print(
                f"| {size} | {net} | {e} | {seq * 1e3:.3f} ms | {ens * 1e3:.3f} ms | "
                f"{seq / ens:.1f}x |",
                flush=True,
            )


# ---------------------------------------------------------------------------- whole process


def sweep_times(
    overrides: list[str], launcher: str, folder: Path, root: Path = ROOT
) -> tuple[float, float]:
    """(wall, CPU user + sys) seconds of `python run.py -m ...` run in `root`."""
    command = [sys.executable, "run.py", "-m", *overrides, f"hydra/launcher={launcher}"]
    command.append(f"hydra.sweep.dir={folder}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu


def against_table(other: Path, sweeps: list[str], epochs: int | None, repeats: int) -> None:
    print(f"\nensemble sweep, {other} against this checkout, {repeats} alternating pairs:")
    print("| sweep | other wall | this wall | other CPU | this CPU | load before / after |")
    print("|---|---:|---:|---:|---:|---|")
    trees = {"other": other.resolve(), "this": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        for name in sweeps:
            overrides = [*SWEEPS[name], *GRID, "trainer.progress=false"]
            if epochs:
                overrides.append(f"trainer.max_epochs={epochs}")
            times: dict[str, list[tuple[float, float]]] = {"other": [], "this": []}
            load = os.getloadavg()[0]
            for r in range(repeats):
                for tree in ["other", "this"] if r % 2 == 0 else ["this", "other"]:
                    folder = Path(tmp) / f"{name}-{tree}-{r}"
                    times[tree].append(sweep_times(overrides, "ensemble", folder, trees[tree]))
            wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
            cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
            print(
                f"| {name} | {wall['other']:.1f} s | {wall['this']:.1f} s | {cpu['other']:.1f} s | "
                f"{cpu['this']:.1f} s | {load:.1f} / {os.getloadavg()[0]:.1f} |",
                flush=True,
            )


def whole_table(sweeps: list[str], epochs: int | None, repeats: int) -> None:
    """Wall and the process tree's CPU (user + sys: the figure worker's included), medians: on
    a loaded machine the wall time is the machine's as much as the sweep's."""
    print(f"\nwhole process, 32 jobs ({' '.join(GRID)}), {repeats} paired runs:")
    print(
        "| sweep | basic wall | ensemble wall | speed-up | basic CPU | ensemble CPU | CPU ratio "
        "| load before / after |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in sweeps:
            overrides = [*SWEEPS[name], *GRID, "trainer.progress=false"]
            if epochs:
                overrides.append(f"trainer.max_epochs={epochs}")
            times: dict[str, list[tuple[float, float]]] = {"basic": [], "ensemble": []}
            load = os.getloadavg()[0]
            for r in range(repeats):
                order = ["basic", "ensemble"] if r % 2 == 0 else ["ensemble", "basic"]
                for launcher in order:
                    folder = Path(tmp) / f"{name}-{launcher}-{r}"
                    times[launcher].append(sweep_times(overrides, launcher, folder))
            wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
            cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
            shown = f"{name}" + (f" ({epochs} epochs)" if epochs else "")
            print(
                f"| {shown} | {wall['basic']:.1f} s | {wall['ensemble']:.1f} s | "
                f"{wall['basic'] / wall['ensemble']:.1f}x | {cpu['basic']:.1f} s | "
                f"{cpu['ensemble']:.1f} s | {cpu['basic'] / cpu['ensemble']:.1f}x | "
                f"{load:.1f} / {os.getloadavg()[0]:.1f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", action="store_true", help="the per-step table")
    parser.add_argument("--whole", action="store_true", help="whole-process sweeps")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "medium"], choices=SIZES)
    parser.add_argument("--members", nargs="+", type=int, default=[1, 8, 32, 128])
    parser.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=SWEEPS)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another checkout's ensemble sweep")
    args = parser.parse_args()
    args.device = "cpu"
    if not (args.step or args.whole or args.against):
        args.step = args.whole = True
    print("\n".join(machine_lines(args)))
    if args.step:
        step_table(args.sizes, args.members, args.repeats)
    if args.whole:
        whole_table(args.sweeps, args.epochs, args.repeats)
    if args.against:
        against_table(args.against, args.sweeps, args.epochs, args.repeats)


if __name__ == "__main__":
    main()
