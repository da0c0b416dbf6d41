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


# What `python run.py` imports, its jobs' lazy imports included (forked_runs.py preloads them)
RUN_PY_IMPORTS = ["hydra", "torch.optim", "ffn.cli_errors", "ffn.config", "ffn.data.load"]
RUN_PY_IMPORTS += ["ffn.job", "ffn.sweep"]


def run_forked(
    commands: list[list[str]], preload: list[str], timeout: float = 900
) -> list[subprocess.CompletedProcess[str]]:
    """`python SCRIPT ARGS` for each [SCRIPT, *ARGS] (SCRIPT relative to the repository), each a
    real process forked from one that imported `preload` once (tests/forked_runs.py): for
    tables of commands whose processes are the point and whose imports are not."""
    with tempfile.TemporaryDirectory(prefix="ffn-jobs-") as folder:
        jobs_file, results_file = Path(folder) / "jobs.json", Path(folder) / "results.json"
        jobs_file.write_text(json.dumps({"preload": preload, "jobs": commands}))
        driver = str(ROOT / "tests" / "forked_runs.py")
        proc = run_python(driver, str(jobs_file), str(results_file), timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads(results_file.read_text())
    return [
        subprocess.CompletedProcess(command, r["returncode"], r["stdout"], r["stderr"])
        for command, r in zip(commands, results, strict=True)
    ]


def run_ffn_forked(jobs: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """`python run.py ARGS` for each ARGS, forked (run_forked)."""
    return run_forked([["run.py", *args] for args in jobs], RUN_PY_IMPORTS)


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file (a sweep's summary.csv) as one dict a row, keyed by the header."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
