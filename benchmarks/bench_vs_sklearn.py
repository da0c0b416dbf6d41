"""Whole processes, as a user waits for them: `python run.py` against the same job in scikit-learn.

Arms, each one real process launched from a clean shell command, run in paired, interleaved
rounds (every round runs every arm once, the order rotating), so load from other jobs on the
machine falls on every arm alike:

- `ffn`: `python run.py` with its defaults (digits, 64-128-10 ReLU, Adam lr 3e-3, batch 64,
  100 epochs, every scalar, histograms, the end figure, checkpoints, HParams);
- `sklearn`: `benchmarks/sklearn_mlp.py`, the 15-line MLPClassifier script (it stops on its own
  `tol` rule, after about 49 epochs on digits);
- `sklearn 100 epochs`: the same script with `n_iter_no_change=max_iter`, so it runs the 100
  epochs ffn runs;
- `--baseline DIR`: ffn from another checkout (e.g. a `git worktree` of main) as one more arm,
  for before/after figures from one run.

`--sweep` instead compares the 8-job sweep `python run.py -m optimizer.lr=...` (basic launcher)
with the same 8 fits in one scikit-learn process; `--readme-sweep` times README's 36-job sweep
once per arm. Printed: the machine and its load before every round, medians and min-max of wall
time, the median of the per-round ratios to `sklearn`, peak RSS (`os.wait4`'s ru_maxrss of each
process), and for ffn the phases of metrics.json `timing` (time to the first step included).

    python benchmarks/bench_vs_sklearn.py [--pairs 5] [--sweep] [--baseline /tmp/main]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKLEARN_SCRIPT = ROOT / "benchmarks" / "sklearn_mlp.py"
SWEEP_LRS = ["0.001", "0.002", "0.003", "0.005", "0.01", "0.02", "0.03", "0.05"]
README_SWEEP = [
    "model=relu,tanh,sigmoid",
    "penalty=none,l1,l2",
    "penalty.lam=1e-4,1e-3",
    "optimizer.lr=0.01,0.1",
]


@dataclass
class Arm:
    """One command to time; `ffn_root` set for ffn arms (their run folders hold metrics.json)."""

    name: str
    argv: list[str]
    cwd: Path
    ffn_root: Path | None = None
    walls: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (5 min {five:.1f})"


def launch(argv: list[str], cwd: Path) -> tuple[float, float, float]:
    """Run to completion; (wall seconds, peak RSS in MiB, CPU seconds) of that one process.

    CPU (user + sys, the process and the children it waited for) is what load from other jobs
    changes least: beside the wall time, it tells a change from the machine's noise."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace")[-2000:]
        raise SystemExit(f"{shlex.join(argv)} exited {proc.returncode}:\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss / 1024, cpu  # Linux reports KiB


def ffn_phases(run_dir: Path, launched_unix: float) -> dict[str, float]:
    """metrics.json `timing` of one run, plus the time from launch to the first step."""
    timing = json.loads((run_dir / "metrics.json").read_text())["timing"]
    phases = {k: v for k, v in timing.items() if k.endswith("_s")}
    phases["to_first_step_s"] = timing["loop_started_unix"] - launched_unix
    return phases


def run_round(arms: list[Arm], order: list[int], tmp: Path, round_no: int) -> None:
    for i in order:
        arm = arms[i]
        argv = list(arm.argv)
        run_dir = tmp / f"r{round_no}-a{i}"
        if arm.ffn_root is not None:
            key = "hydra.sweep.dir" if "-m" in argv else "hydra.run.dir"
            argv.append(f"{key}={run_dir}")
        launched = time.time()
        wall, rss, cpu = launch(argv, arm.cwd)
        arm.walls.append(wall)
        arm.rss_mib.append(rss)
        arm.cpu_s.append(cpu)
        if arm.ffn_root is not None and "-m" not in argv:
            arm.timings.append(ffn_phases(run_dir, launched))


def build_arms(args: argparse.Namespace) -> list[Arm]:
    py = sys.executable
    ffn_roots = [("ffn", ROOT)]
    if args.baseline:
        ffn_roots.append(("ffn baseline", Path(args.baseline).resolve()))
    arms = []
    if args.readme_sweep:
        for name, root in ffn_roots:
            arms.append(
                Arm(f"{name} 36-job sweep", [py, "run.py", "-m", *README_SWEEP], root, root)
            )
        return arms
    if args.sweep:
        for name, root in ffn_roots:
            argv = [py, "run.py", "-m", "optimizer.lr=" + ",".join(SWEEP_LRS)]
            arms.append(Arm(f"{name} 8-job sweep", argv, root, root))
        arms.append(Arm("sklearn 8 fits", [py, str(SKLEARN_SCRIPT), *SWEEP_LRS], ROOT))
        return arms
    for name, root in ffn_roots:
        arms.append(Arm(name, [py, "run.py"], root, root))
    arms.append(Arm("sklearn", [py, str(SKLEARN_SCRIPT)], ROOT))
    arms.append(Arm("sklearn 100 epochs", [py, str(SKLEARN_SCRIPT), "--all-epochs"], ROOT))
    return arms


def summarise(arms: list[Arm]) -> None:
    reference = next((a for a in arms if a.name.startswith("sklearn")), None)
    print(
        "\n| arm | wall s, median (min-max) | ratio to sklearn (median of rounds) "
        "| CPU s, median | peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|")
    for arm in arms:
        med = statistics.median(arm.walls)
        ratio = "-"
        if reference is not None and reference is not arm:
            ratios = [a / b for a, b in zip(arm.walls, reference.walls, strict=True)]
            ratio = f"{statistics.median(ratios):.2f}x"
        spread = f"{med:.2f} ({min(arm.walls):.2f}-{max(arm.walls):.2f})"
        cpu, rss = statistics.median(arm.cpu_s), statistics.median(arm.rss_mib)
        print(f"| {arm.name} | {spread} | {ratio} | {cpu:.2f} | {rss:.0f} |")
    for arm in arms:
        if not arm.timings:
            continue
        keys = list(arm.timings[0])
        print(f"\n{arm.name}: metrics.json timing, median (min-max) over {len(arm.timings)} runs")
        print("| phase | seconds |\n|---|---:|")
        for key in keys:
            values = [t.get(key, float("nan")) for t in arm.timings]
            med = statistics.median(values)
            print(f"| {key} | {med:.3f} ({min(values):.3f}-{max(values):.3f}) |")
        if {"loop_s", "evaluation_s", "logging_s"} <= set(keys):
            shares = [(t["evaluation_s"] + t["logging_s"]) / t["loop_s"] for t in arm.timings]
            print(
                f"(evaluation_s + logging_s) / loop_s: median {statistics.median(shares):.1%} "
                f"({min(shares):.1%}-{max(shares):.1%}); logging_s includes the config text, "
                "HParams and the final flush, outside the loop"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="rounds (each runs every arm once)")
    parser.add_argument("--sweep", action="store_true", help="the 8-job sweep against 8 fits")
    parser.add_argument("--readme-sweep", action="store_true", help="README's 36-job sweep")
    parser.add_argument("--baseline", help="another ffn checkout, timed as one more arm")
    args = parser.parse_args()
    # Versions without importing: a child's peak RSS counts its parent's at fork, so this
    # process stays small.
    versions = ", ".join(f"{name} {version(name)}" for name in ("torch", "scikit-learn"))
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; {load()}")
    print(f"python {platform.python_version()}, {versions}")
    arms = build_arms(args)
    for arm in arms:
        print(f"  {arm.name}: (cd {arm.cwd} && {shlex.join(arm.argv)})")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.pairs):
            order = list(range(len(arms)))
            k = r % len(arms)
            order = order[k:] + order[:k]  # rotate, so no arm always runs first or last
            print(f"round {r + 1}/{args.pairs}: {load()}", flush=True)
            run_round(arms, order, Path(tmp), r)
    print(f"after: {load()}")
    summarise(arms)


if __name__ == "__main__":
    main()
