"""Sweeps stopped by a real signal, on the basic and the joblib launcher, and continued.

The running job checkpoints, the jobs not started are not run and are named, the summary is
written for what finished, the exit status says the sweep was interrupted, no worker goes on
training, and the same command with trainer.resume=auto continues the sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, TINY, ffn_env, read_rows, run_ffn

pytestmark = pytest.mark.slow

# Digits for long enough that a signal lands inside a job; a checkpoint every 5 epochs
LONG = (*TINY, "dataset=digits", "trainer.checkpoint_every=5", "trainer.progress=false")


def start(sweep: Path, *overrides: str) -> subprocess.Popen:
    """The sweep in a process group of its own, as a terminal runs it (Ctrl-C: the whole group)."""
    return subprocess.Popen(
        [sys.executable, "run.py", "-m", *overrides, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=ffn_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def status(job: Path) -> str | None:
    try:
        return json.loads((job / "metrics.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def wait_for(condition, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def checkpointed(job: Path) -> bool:
    return status(job) == "running" and (job / "checkpoints" / "last.pt").exists()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory):
    """Three jobs on the basic launcher, SIGTERM while the second trains."""
    sweep = tmp_path_factory.mktemp("basic") / "sweep"
    overrides = (*LONG, "trainer.max_epochs=200", "trainer.seed=0,1,2")
    proc = start(sweep, *overrides)
    wait_for(lambda: checkpointed(sweep / "1"), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    return sweep, overrides, proc.returncode, out, err


def test_sigterm_to_a_basic_sweep_keeps_results_and_names_the_rest(basic) -> None:
    sweep, _, code, _, err = basic
    assert code == 143, err[-3000:]
    assert "Traceback" not in err
    assert status(sweep / "0") == "completed"
    assert status(sweep / "1") == "interrupted"
    assert not (sweep / "2" / "metrics.json").exists()
    assert "not run: trainer.seed=2" in err
    assert "interrupted" in err and "trainer.resume=auto" in err
    rows = read_rows(sweep / "summary.csv")
    assert sorted(r["status"] for r in rows) == ["completed", "interrupted"]
    assert "not run: trainer.seed=2" in (sweep / "summary.md").read_text()


def test_the_same_sweep_with_resume_auto_continues_it(basic) -> None:
    sweep, overrides, *_ = basic
    finished = (sweep / "0" / "metrics.json").read_text()
    proc = run_ffn("-m", *overrides, "trainer.resume=auto", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [status(sweep / str(n)) for n in range(3)] == ["completed"] * 3
    assert (sweep / "0" / "metrics.json").read_text() == finished  # kept, not rerun
    resumed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert resumed["epochs"] == 200
    rows = read_rows(sweep / "summary.csv")
    assert len(rows) == 3


def test_ctrl_c_to_a_basic_sweep_checkpoints_summarises_and_names_the_rest(tmp_path: Path):
    sweep = tmp_path / "sweep"
    proc = start(sweep, *LONG, "trainer.max_epochs=2000", "trainer.seed=0,1")
    wait_for(lambda: checkpointed(sweep / "0"), proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole group
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert status(sweep / "0") == "interrupted"
    assert (sweep / "0" / "checkpoints" / "last.pt").exists()
    assert not (sweep / "1" / "metrics.json").exists()
    assert "not run: trainer.seed=1" in err
    assert "not run: trainer.seed=1" in (sweep / "summary.md").read_text()


@pytest.mark.parametrize(
    ("signum", "code", "to_group"),
    [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)],
    ids=["sigterm-to-the-sweep", "ctrl-c-to-the-process-group"],
)
def test_a_signal_to_a_joblib_sweep_leaves_no_worker_training(
    tmp_path: Path, signum: int, code: int, to_group: bool
) -> None:
    """SIGTERM to the sweep alone (a scheduler), or SIGINT to every process (a terminal's Ctrl-C,
    which used to hang the sweep for minutes)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = start(
        sweep, *LONG, "trainer.max_epochs=3000", "trainer.seed=0,1,2,3",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    )  # fmt: skip
    wait_for(lambda: checkpointed(sweep / "0") and checkpointed(sweep / "1"), proc)
    workers = children(proc.pid)
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err
    assert [status(sweep / str(n)) for n in range(2)] == ["interrupted"] * 2
    assert not any((sweep / str(n) / "metrics.json").exists() for n in (2, 3))
    assert "not run: trainer.seed=2" in err and "not run: trainer.seed=3" in err
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)], "a worker outlived the sweep"


def test_an_optuna_search_where_every_trial_diverges_ends_with_a_summary(tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    proc = run_ffn(
        "hparams_search=digits", *TINY, "model=relu", "hydra.sweeper.n_trials=2",
        "optimizer.lr=choice(1e30)", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "ended without a result" in proc.stderr
    rows = read_rows(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["diverged", "diverged"]
    assert os.path.exists(sweep / "summary.md")
