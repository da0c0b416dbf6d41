"""What evaluation and logging cost the training loop, in CPU seconds, on the default job.

Runs the default job's loop (conf/'s defaults as Hydra composes them: digits, 64-128-10 ReLU,
fused Adam, cosine, 100 epochs; no figures) in this process, with the run's phase clocks
reading `time.process_time` instead of the wall clock, so that other jobs on a shared machine
do not count; prints steps, evaluation, logging and checkpoints, and (evaluation + logging) /
loop, for each `trainer.histogram_every` and `trainer.eval_every` asked for, interleaved over
the repeats. (Before the fourth pass it built the schema's Adam, unfused: 2x slower steps, so
its share came out a few points low; before the sixth, a full collection of torch's objects could
land in a measured loop, which `python run.py` freezes away.)

    python benchmarks/bench_loop_share.py [--histogram-every 1 5] [--eval-every 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import ffn.progress
import ffn.run_logger
from ffn.config import register_configs
from ffn.interrupt import stop_on_signals
from ffn.run_logger import RunLogger
from ffn.train import Run

CONF = Path(__file__).resolve().parents[1] / "conf"


class _CpuClock:
    """`time` with perf_counter reading this process's CPU time (the clocks' only call)."""

    perf_counter = staticmethod(time.process_time)
    time = staticmethod(time.time)


def default_config() -> DictConfig:
    """conf/'s defaults, composed by Hydra as `python run.py` composes them (fused Adam, cosine)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config")
    return cfg


def loop_seconds(histogram_every: int, eval_every: int) -> dict[str, float]:
    cfg = default_config()
    cfg.trainer.merge_with(
        {
            "figures": False,
            "progress": False,
            "histogram_every": histogram_every,
            "eval_every": eval_every,
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        run = Run(cfg, folder)
        logger = RunLogger(folder)
        with stop_on_signals() as stop:
            run.train(logger, stop)
        logger.close()
    c = run.clock.seconds
    phases = {
        "steps": c["steps"],
        "evaluation": c.get("evaluation", 0.0),
        "logging": logger.seconds.get("logging", 0.0),
        "checkpoints": c.get("checkpoints", 0.0),
    }
    # the loop, as the sum of its phases in CPU time
    phases["share"] = (phases["evaluation"] + phases["logging"]) / sum(phases.values())
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histogram-every", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--eval-every", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ffn.progress.time = _CpuClock  # the phase clocks
    ffn.run_logger.time = _CpuClock  # the logger's clock
    torch.set_num_threads(1)
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; CPU seconds of one process")
    variants = list(itertools.product(args.histogram_every, args.eval_every))
    results: dict[tuple[int, int], list[dict[str, float]]] = {v: [] for v in variants}
    loop_seconds(1, 1)  # warm-up: first-use imports and allocations
    # As `python run.py` (ffn.collector): what the imports made is never scanned again, so a
    # full collection over torch's objects (70-240 ms) lands in no phase of a measured loop
    gc.freeze()
    for _ in range(args.repeats):
        for variant in variants:
            results[variant].append(loop_seconds(*variant))
    print(
        "\n| histogram_every | eval_every | steps s | evaluation s | logging s | checkpoints s "
        "| (evaluation + logging) / loop |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for (hist, ev), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"| {hist} | {ev} | {med['steps']:.3f} | {med['evaluation']:.3f} | "
            f"{med['logging']:.3f} | {med['checkpoints']:.3f} | {med['share']:.1%} |"
        )
    print(f"\nmedians over {args.repeats} repeats; load now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
