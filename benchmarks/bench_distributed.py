"""One run across processes: `torchrun --nproc_per_node=P run.py` against one `python run.py`.

Arms, each a whole process tree launched as a user launches it, in paired, interleaved rounds
(every round runs every arm once, the order rotating), so load from other jobs on the machine
falls on every arm alike:

- `1 process, 1 thread`: `python run.py CONFIG trainer.num_threads=1`;
- `1 process, P threads`: the same with trainer.num_threads=P (the same cores as P ranks);
- `torchrun P x 1 thread`: `python -m torch.distributed.run --nproc_per_node=P run.py CONFIG`
  on gloo, each rank one thread and its shard of every minibatch.

Printed: the machine and its load before every round, and per arm the medians (min-max) of the
whole process's wall time and of metrics.json's steps_s (the minibatch steps, all-reduces
included) and loop_s (steps, evaluation, logging, checkpoints), and the ratio of each to the
first arm's, per round. CONFIG is model.hidden=[512,512] on mnist1d (10 classes, 40 inputs), with
--samples rows, batch 256, no histograms or figures.

    python benchmarks/bench_distributed.py [--rounds 3] [--samples 20000] [--epochs 5] [-P 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def config(samples: int, epochs: int) -> list[str]:
    return [
        "dataset=mnist1d",
        f"dataset.n_samples={samples}",
        "model.hidden=[512,512]",
        "trainer.batch_size=256",
        f"trainer.max_epochs={epochs}",
        "trainer.histogram_every=0",
        "trainer.figures=false",
        "trainer.progress=false",
        "trainer.checkpoint_every=0",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arms(processes: int) -> dict[str, list[str]]:
    """Arm name -> the command before the config (run.py is named in each)."""
    run = str(ROOT / "run.py")
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    return {
        "1 process, 1 thread": [sys.executable, run, "trainer.num_threads=1"],
        f"1 process, {processes} threads": [
            sys.executable,
            run,
            f"trainer.num_threads={processes}",
        ],
        f"torchrun {processes} x 1 thread": [*torchrun, "--master_port=PORT", run],
    }


def machine() -> str:
    cores = os.cpu_count()
    return (
        f"{platform.processor() or platform.machine()}, {cores} cores, {platform.system()}; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def time_arm(command: list[str], cfg: list[str], folder: Path) -> dict[str, float]:
    command = [c.replace("PORT", str(free_port())) for c in command]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, *cfg, f"hydra.run.dir={folder}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    timing = json.loads((folder / "metrics.json").read_text())["timing"]
    return {"wall_s": wall, "steps_s": timing["steps_s"], "loop_s": timing["loop_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("-P", "--processes", type=int, default=2)
    args = parser.parse_args()
    cfg = config(args.samples, args.epochs)
    commands = arms(args.processes)
    names = list(commands)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    print(f"machine: {machine()}")
    print(f"config: {' '.join(cfg)}")
    scratch = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    try:
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"round {r + 1}/{args.rounds}: load average {load}", flush=True)
            for name in order:
                folder = scratch / f"{r}-{names.index(name)}"
                results[name].append(time_arm(commands[name], cfg, folder))
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    first = results[names[0]]
    print()
    print("| arm | wall s | steps s | loop s | steps / 1 process, 1 thread (per round) |")
    print("|---|---|---|---|---|")
    for name in names:
        rows = results[name]
        cells = []
        for key in ("wall_s", "steps_s", "loop_s"):
            values = [row[key] for row in rows]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        ratio = statistics.median(
            row["steps_s"] / base["steps_s"] for row, base in zip(rows, first, strict=True)
        )
        print(f"| {name} | {' | '.join(cells)} | {ratio:.2f} |")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
