"""The optional launchers and sweeper, run for real: joblib, submitit_local and an Optuna search.

Each needs its extra (`pip install -e ".[parallel,slurm,optuna]"`, all in `.[test]`); a missing
plugin skips its test. The Slurm preset is only composed and instantiated: no cluster here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import ROOT, TINY, read_rows, run_ffn, run_python
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ffn.config import register_configs
from ffn.run_record import METRICS_EVENTS


def statuses(sweep_dir: Path, n: int) -> list[str]:
    return [
        json.loads((sweep_dir / str(i) / "metrics.json").read_text())["status"] for i in range(n)
    ]


def event_file_pid(run_dir: Path) -> str:
    """events.out.tfevents.<time>.<host>.<pid>.<n>: the process that trained the run."""
    return next((run_dir / METRICS_EVENTS).glob("events.out.tfevents.*")).name.split(".")[-2]


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_processes(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = run_ffn(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *TINY,
        "trainer.num_threads=null",  # let the callback share the cores out
        "optimizer.lr=0.05,1e30,-1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 1, proc.stderr  # the lr=-1 job failed, the others ran
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    assert statuses(tmp_path, 3) == ["completed", "diverged", "failed"]
    assert "1 of 3 jobs failed" in proc.stderr
    assert "Traceback" in (tmp_path / "2" / "run.log").read_text()
    assert event_file_pid(tmp_path / "0") != str(os.getpid())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max((cores or 1) // 2, 1)
    for n in (0, 1):
        log = (tmp_path / str(n) / "run.log").read_text()
        assert f"torch threads: {threads} ({cores} cores, 2 parallel jobs)" in log
    rows = read_rows(tmp_path / "summary.csv")
    assert [r["status"] for r in rows] == ["completed", "diverged", "failed"]


@pytest.mark.slow
def test_submitit_local_runs_each_job_as_its_own_process(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = run_ffn(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        *TINY,
        "optimizer.lr=0.05,-1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 1, proc.stderr
    assert statuses(tmp_path, 2) == ["completed", "failed"]
    assert (tmp_path / ".submitit").is_dir()
    assert event_file_pid(tmp_path / "0") != str(os.getpid())
    rows = read_rows(tmp_path / "summary.csv")  # .submitit/ holds no runs of its own
    assert [(r["optimizer.lr"], r["status"]) for r in rows] == [
        ("0.05", "completed"),
        ("-1", "failed"),
    ]


def test_slurm_preset_builds_a_slurm_launcher() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1
    assert launcher.timeout_min > 0
    built = instantiate(launcher)  # stores the parameters; submits nothing
    assert built.params["partition"] == "gpu"


@pytest.mark.slow
def test_optuna_search_survives_diverged_and_failed_trials(tmp_path: Path) -> None:
    """hparams_search=digits on iris, six trials of lr in {0.05, 1e30, -1}, stored in sqlite.

    With the preset's seed the six trials include all three outcomes; the study keeps going,
    Optuna's value for each finished trial is what the job returned (its metrics.json's
    optimized_metric), and diverged or failed jobs are failed trials.
    """
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep_dir = tmp_path / "sweep"
    proc = run_ffn(
        "hparams_search=digits",  # hydra.mode=MULTIRUN: no -m
        *TINY,
        "model=relu",
        "hydra.sweeper.n_trials=6",
        "optimizer.lr=choice(0.05,1e30,-1)",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert proc.returncode == 1, proc.stderr  # some trials raised (lr=-1)
    found = statuses(sweep_dir, 6)
    assert {"completed", "diverged", "failed"} <= set(found), found

    study = optuna.load_study(study_name="digits", storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 6
    for n, trial in enumerate(trials):
        record = json.loads((sweep_dir / str(n) / "metrics.json").read_text())
        if record["status"] == "completed":
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert trial.value == pytest.approx(record["metrics"]["val/accuracy"], rel=1e-12)
        else:
            assert trial.state == optuna.trial.TrialState.FAIL, (n, record["status"])
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert f"best_value: {study.best_value}" in results

    rows = read_rows(sweep_dir / "summary.csv")
    assert len(rows) == 6
    assert float(rows[0]["val/accuracy"]) == pytest.approx(study.best_value, rel=1e-12)
    assert "optimizer.lr" in rows[0]


# Runs run.py with some Hydra plugins hidden from Hydra's plugin scan, as if never installed.
WITHOUT_PLUGINS = """
import pkgutil, runpy, sys
hidden, walk = tuple(sys.argv[1].split(",")), pkgutil.walk_packages
pkgutil.walk_packages = lambda *a, **k: (m for m in walk(*a, **k) if not m.name.startswith(hidden))
sys.argv = ["run.py", *sys.argv[2:]]
runpy.run_path("run.py", run_name="__main__")
"""


@pytest.mark.parametrize(
    ("plugin", "args", "extra"),
    [
        ("hydra_joblib_launcher", ["-m", "hydra/launcher=joblib", "model=relu,tanh"], "parallel"),
        ("hydra_optuna_sweeper", ["hparams_search=digits"], "optuna"),
    ],
)
def test_a_missing_plugin_names_its_extra(plugin: str, args: list[str], extra: str) -> None:
    hidden = f"hydra_plugins.{plugin}"
    proc = run_python("-c", WITHOUT_PLUGINS, hidden, *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("ffn: error: invalid value for hydra."), line
    assert f'install the {extra} extra: pip install -e ".[{extra}]"' in line
    assert "\n" not in line and "one of )" not in line


def test_install_hints_work_from_a_checkout() -> None:
    """No hint names the distribution: "ffn" on PyPI is an unrelated project."""
    for folder in ("ffn", "conf", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml", ".md"):
                text = path.read_text()
                assert "install 'ffn[" not in text and 'install "ffn[' not in text, path
                assert "pip install ffn" not in text, path
