"""End-to-end overhead of `python run.py`: time to the first step, and logging's share.

Runs the default job (and the same with histograms and figures off) a few times as real
subprocesses, and reads each run's metrics.json `timing`: the loop's start (so time to first
step = loop start - launch), the loop's wall time and the seconds spent in the TensorBoard
logger. Prints medians and min-max, with the machine.

    python benchmarks/bench_run.py [--repeats 3] [--epochs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "default (all logging)": [],
    "no histograms, no figures": ["trainer.histogram_every=0", "trainer.figures=false"],
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def one_run(overrides: list[str], epochs: int, folder: Path) -> dict[str, float]:
    """Launch run.py, wait, and read where its time went."""
    launched = time.time()
    cmd = [sys.executable, "run.py", f"hydra.run.dir={folder}", f"trainer.max_epochs={epochs}"]
    subprocess.run([*cmd, *overrides], cwd=ROOT, check=True, capture_output=True)
    total = time.time() - launched
    metrics = json.loads((folder / "metrics.json").read_text())
    timing = metrics["timing"]
    return {
        "total_s": total,
        "to_first_step_s": timing["loop_started_unix"] - launched,
        "loop_s": timing["loop_s"],
        "logging_s": timing["logging_s"],
        "logging_share": timing["logging_s"] / total,
        "test_accuracy": metrics["metrics"]["test/accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"python {platform.python_version()}; default job on digits, {args.epochs} epochs\n")
    keys = ["total_s", "to_first_step_s", "loop_s", "logging_s", "logging_share", "test_accuracy"]
    print("| variant | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
        for i in range(args.repeats):  # interleaved, so load changes hit every variant alike
            for j, (name, overrides) in enumerate(VARIANTS.items()):
                folder = Path(tmp) / f"{i}-{j}"
                results[name].append(one_run(overrides, args.epochs, folder))
        for name, runs in results.items():
            cells = []
            for key in keys:
                values = [r[key] for r in runs]
                cells.append(
                    f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"
                )
            print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nmedian (min-max) over", args.repeats, "runs; logging_share = logging_s / total_s")


if __name__ == "__main__":
    main()
