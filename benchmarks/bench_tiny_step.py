"""Microseconds of one graph-free step on the tiny net, in-process, for A/B runs of checkouts.

The work of `bench_step.py`'s "ffn default" row alone: the 2-[16]-2 net (relu), 1000 batches of
32 float32 samples, `manual_gradients` + `sgd_update_` (lr 0.01), one thread. Each repeat is
1000 steps on the thread's CPU clock (`time.thread_time`: not the time it waits for a core).
Prints the median and the best repeat per step, and the load. Compare two checkouts by
alternating processes:

    for i in 1 2 3; do for tree in /path/a /path/b; do
        PYTHONPATH=$tree python benchmarks/bench_tiny_step.py --label $tree; done; done
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ffn import FeedForward
from ffn.step import manual_gradients, sgd_update_

STEPS, BATCH, LR = 1000, 32, 0.01


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * BATCH, 2, generator=g)
    y = (x @ torch.randn(2, 2, generator=g)).argmax(1)
    batches = list(zip(x.split(BATCH), y.split(BATCH), strict=True))
    model = FeedForward(2, [16], 2, activation="relu", seed=0)
    params = list(model.parameters())

    def epoch() -> None:
        for xb, yb in batches:
            manual_gradients(model, xb, yb, "classification")
            sgd_update_(params, LR)

    epoch()  # warm-up
    per_step = []
    for _ in range(args.repeats):
        start = time.thread_time()
        epoch()
        per_step.append((time.thread_time() - start) / STEPS)
    median, best = statistics.median(per_step), min(per_step)
    print(
        f"{args.label} {median * 1e6:.1f} us/step median ({BATCH / median:,.0f} samples/s), "
        f"best {best * 1e6:.1f} us ({BATCH / best:,.0f}); torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
