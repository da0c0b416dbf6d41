"""Helpers of the tests that run `python run.py` for real: sweeps, launchers, dashboard, CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
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


def run_ffn_forked(
    jobs: list[list[str]], timeout: float = 600
) -> list[subprocess.CompletedProcess[str]]:
    """`python run.py ARGS` for each ARGS, each a real process forked from one that did the
    imports once (tests/forked_runs.py): for tables of refusals, which would pay them each."""
    with tempfile.TemporaryDirectory(prefix="ffn-jobs-") as folder:
        jobs_file, results_file = Path(folder) / "jobs.json", Path(folder) / "results.json"
        jobs_file.write_text(json.dumps(jobs))
        driver = str(ROOT / "tests" / "forked_runs.py")
        proc = run_python(driver, str(jobs_file), str(results_file), timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads(results_file.read_text())
    return [
        subprocess.CompletedProcess(["run.py", *args], r["returncode"], r["stdout"], r["stderr"])
        for args, r in zip(jobs, results, strict=True)
    ]


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file (a sweep's summary.csv) as one dict a row, keyed by the header."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
