"""Helpers of the tests that run `python run.py` for real: sweeps, launchers, dashboard, CLI."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Two epochs on iris, nothing but scalars and HParams
TINY = [
    "dataset=iris",
    "trainer.max_epochs=2",
    "trainer.histogram_every=0",
    "trainer.figures=false",
    "trainer.progress=false",
]


def ffn_env() -> dict[str, str]:
    """This environment, less HYDRA_FULL_ERROR: set in some shells, it would turn ffn's one-line
    errors into tracebacks."""
    return {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}


def run_python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python ARGS` from the repository root; a failing command returns, it does not raise."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ffn_env(),
        check=False,
    )


def run_ffn(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python run.py ARGS` from the repository root."""
    return run_python("run.py", *args, timeout=timeout)


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file (a sweep's summary.csv) as one dict a row, keyed by the header."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
