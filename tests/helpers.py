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


def run_ffn(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python run.py ARGS` from the repository root; a failing run returns, it does not raise."""
    # HYDRA_FULL_ERROR=1 (set in some shells) would turn ffn's one-line errors into tracebacks
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file (a sweep's summary.csv) as one dict a row, keyed by the header."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
