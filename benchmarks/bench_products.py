"""ffn.functions' products, torch's (MKL) against numpy's (its OpenBLAS), alone and in a step.

Two tables, one thread each (torch's and numpy's BLAS):

- per product: `functions.matmul(a, b)` outside and inside `functions.numpy_products()`, and
  torch's transposed product `(b^T a^T)^T` (what `functions.matmul` computes for a narrow
  product where `functions.MKL_SLOW_PATHS`), at the shapes the estimators' benchmark multiplies
  (a: (rows, inner), b: (inner, columns)) and a few narrow ones, and which one the rule in
  `functions._numpy_product` picks;
- per training step: `ffn.step.train_step` (Adam) on each benchmark's batch shape, the two
  settings interleaved step by step, so that load from other jobs falls on both alike.

Medians of wall time, microseconds.

    python benchmarks/bench_products.py [--dtype float64] [--steps 2000]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
import timeit

import torch
from threadpoolctl import threadpool_limits

from ffn import functions
from ffn.model import FeedForward
from ffn.penalties import Penalty
from ffn.step import train_step

PRODUCTS = [  # (rows, inner, columns): the digits MLP's and the friedman1 MLP's products
    (200, 64, 64),
    (200, 64, 10),
    (200, 10, 64),
    (64, 200, 10),
    (64, 200, 64),
    (10, 200, 64),
    (1797, 64, 64),
    (1797, 64, 10),
    (1797, 10, 64),
    (64, 1797, 10),
    (64, 1797, 64),
    (5000, 10, 64),
    (10, 5000, 64),
    (5000, 64, 1),
    (5000, 1, 64),
    (1797, 64, 4),  # narrow products: the transposed column
    (5000, 10, 2),
]
STEPS = [  # (task, batch rows, features, outputs): the estimators' benchmark configurations
    ("classification", 200, 64, 10),
    ("classification", 1797, 64, 10),
    ("regression", 200, 10, 1),
    ("regression", 5000, 10, 1),
]


def product_table(dtype: torch.dtype) -> None:
    print(
        f"{'rows x inner x columns':>24} {'torch us':>9} {'numpy us':>9} {'transposed us':>14}"
        "  rule picks"
    )
    generator = torch.Generator().manual_seed(0)
    for rows, inner, columns in PRODUCTS:
        a = torch.randn(rows, inner, generator=generator, dtype=dtype)
        b = torch.randn(inner, columns, generator=generator, dtype=dtype)
        times = []
        for numpy in (False, True):
            with functions.numpy_products(numpy):
                number = max(20, 200_000 // (rows * inner * columns // 1000 + 1))
                product = functools.partial(functions.matmul, a, b)
                best = min(timeit.repeat(product, number=number, repeat=5))
                times.append(best / number * 1e6)
                picked = numpy and functions._numpy_product(a, b)
        transposed = functools.partial(lambda a, b: (b.mT @ a.mT).mT, a, b)
        times.append(min(timeit.repeat(transposed, number=number, repeat=5)) / number * 1e6)
        shape = f"{rows} x {inner} x {columns}"
        print(
            f"{shape:>24} {times[0]:9.1f} {times[1]:9.1f} {times[2]:14.1f}"
            f"  {'numpy' if picked else 'torch'}"
        )


def step_table(dtype: torch.dtype, steps: int) -> None:
    print(f"{'train_step (adam)':>32} {'torch us':>9} {'numpy us':>9} {'ratio':>6}")
    penalty = Penalty("none", 0.0)
    for task, rows, features, outputs in STEPS:
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(rows, features, generator=generator, dtype=dtype)
        if task == "classification":
            y = torch.randint(0, outputs, (rows,), generator=generator)
        else:
            y = torch.randn(rows, outputs, generator=generator, dtype=dtype)
        arms = {}
        for numpy in (False, True):
            model = FeedForward(features, [64], outputs, dtype=dtype, seed=2)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
            arms[numpy] = (model, optimizer, [])
        count = max(20, steps * 200 // rows)
        for i in range(count):
            for numpy, (model, optimizer, times) in arms.items():
                with functions.numpy_products(numpy):
                    start = time.perf_counter()
                    train_step(model, optimizer, penalty, x, y, task)
                    if i >= count // 10:  # first calls and first-touched pages left out
                        times.append((time.perf_counter() - start) * 1e6)
        torch_us, numpy_us = (statistics.median(arms[k][2]) for k in (False, True))
        label = f"{task} {rows}x{features}->{outputs}"
        print(f"{label:>32} {torch_us:9.1f} {numpy_us:9.1f} {torch_us / numpy_us:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--steps", type=int, default=2000, help="steps of a 200-row batch")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(1)
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {args.dtype}, one thread each")
    print(f"CPU vendor {functions.cpu_vendor()!r}, MKL_SLOW_PATHS={functions.MKL_SLOW_PATHS}")
    with threadpool_limits(1):
        product_table(dtype)
        step_table(dtype, args.steps)
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
