"""hydra/launcher=ensemble end to end: the same sweep on the ensemble and the basic launcher.

One sweep of 8 jobs (lr x lam x seed, float64) runs once on each launcher (session fixtures):
its members differ in lr, penalty.lam and trainer.seed, and include members that diverge, stop
early (restoring the best weights) and run to max_epochs. Every member must end as the same job
alone: status, stop reason, epochs and steps equal, final metrics and parameters within 1e-10
relative; and both sweeps must leave the same files, TensorBoard tags and metrics.json keys.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, ffn_env, run_ffn
from omegaconf import OmegaConf
from tensorboard.backend.event_processing import event_accumulator

pytestmark = pytest.mark.slow

SWEEP = [
    "-m",
    "dataset=regression",
    "dataset.n_samples=200",
    "model=relu",
    "model.hidden=[8]",
    "optimizer=momentum",
    "penalty=l1",
    "optimizer.lr=0.05,1e4",  # 1e4: diverges in its first epoch
    "penalty.lam=0,0.01",
    "trainer.seed=0,1",
    "trainer.dtype=float64",
    "trainer.max_epochs=8",
    "trainer.batch_size=16",
    "trainer.early_stopping=2",  # two of the lr=0.05 members stop early, two run to the end
    "trainer.histogram_every=3",
    "trainer.checkpoint_every=2",
    "trainer.progress=false",
]
JOBS = 8
REL = 1e-10


def sweep(folder: Path, *extra: str) -> Path:
    done = run_ffn(*SWEEP, f"hydra.sweep.dir={folder}", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.fixture(scope="session")
def basic_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sweep(tmp_path_factory.mktemp("basic") / "sweep")


@pytest.fixture(scope="session")
def ensemble_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sweep(tmp_path_factory.mktemp("ensemble") / "sweep", "hydra/launcher=ensemble")


def record(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


def assert_same_tensors(mine: dict, theirs: dict) -> None:
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(mine[key], value, rtol=REL, atol=1e-12, equal_nan=True)


def test_every_member_ends_as_the_same_job_alone(basic_sweep: Path, ensemble_sweep: Path) -> None:
    reasons = set()
    for job in range(JOBS):
        alone, member = record(basic_sweep / str(job)), record(ensemble_sweep / str(job))
        for key in ("status", "stop_reason", "epochs", "steps"):
            assert member[key] == alone[key], (job, key)
        reasons.add(alone["stop_reason"])
        assert member["metrics"].keys() == alone["metrics"].keys()
        for key, value in alone["metrics"].items():
            assert close(member["metrics"][key], value), (job, key, member["metrics"][key], value)
        for name in ("last.pt", "best.pt"):
            path = basic_sweep / str(job) / "checkpoints" / name
            if not path.exists():
                assert not (ensemble_sweep / str(job) / "checkpoints" / name).exists()
                continue
            mine = torch.load(ensemble_sweep / str(job) / "checkpoints" / name, weights_only=True)
            theirs = torch.load(path, weights_only=True)
            assert_same_tensors(mine["model"], theirs["model"])
            if name == "last.pt":
                assert mine["loop"]["epoch"] == theirs["loop"]["epoch"]
                assert mine["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
                for k, state in theirs["optimizer"]["state"].items():
                    assert_same_tensors(mine["optimizer"]["state"][k], state)
    assert reasons == {"diverged", "early_stopping", "max_epochs"}  # the sweep covers all three


def files(folder: Path) -> set[str]:
    """Every path under the folder, event files named by their folder only."""
    names = set()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        names.add(str(rel.parent / "EVENTS") if "tfevents" in path.name else str(rel))
    return names


def tags(folder: Path) -> set[tuple[str, str, str]]:
    found = set()
    for events in folder.rglob("events.out.tfevents.*"):
        acc = event_accumulator.EventAccumulator(str(events.parent))
        acc.Reload()
        where = str(events.parent.relative_to(folder))
        for kind, names in acc.Tags().items():
            if isinstance(names, list):
                found |= {(where, kind, name) for name in names}
    return found


def scalar_curves(folder: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Every scalar series of a run: (event folder, tag) -> [(step, value)]."""
    curves = {}
    for events in folder.rglob("events.out.tfevents.*"):
        acc = event_accumulator.EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            where = str(events.parent.relative_to(folder))
            curves[where, tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return curves


def test_every_epochs_scalars_equal_the_job_alone(basic_sweep: Path, ensemble_sweep: Path) -> None:
    """The members' per-epoch scalars and layer diagnostics come from one stacked evaluation
    (ffn/ensemble/evaluation.py): each curve is the job's alone (float32 in the event files)."""
    for job in range(JOBS):
        alone, member = (scalar_curves(f / str(job)) for f in (basic_sweep, ensemble_sweep))
        assert member.keys() == alone.keys(), job
        for key, curve in alone.items():
            assert [s for s, _ in member[key]] == [s for s, _ in curve], (job, key)
            for (_, mine), (_, theirs) in zip(member[key], curve, strict=True):
                assert (
                    mine == theirs
                    or (math.isnan(mine) and math.isnan(theirs))
                    or (math.isclose(mine, theirs, rel_tol=1e-6, abs_tol=1e-9))
                ), (job, key, mine, theirs)


def test_both_launchers_leave_the_same_files_tags_and_keys(
    basic_sweep: Path, ensemble_sweep: Path
) -> None:
    assert files(ensemble_sweep) - {"multirun.yaml"} == files(basic_sweep) - {"multirun.yaml"}
    compared: list[Path] = []  # the PNGs compared byte for byte
    for job in range(JOBS):
        alone, member = basic_sweep / str(job), ensemble_sweep / str(job)
        assert tags(member) == tags(alone), job
        assert record(member).keys() == record(alone).keys()
        assert record(member)["timing"].keys() == record(alone)["timing"].keys()
        for name in ("config.yaml", "overrides.yaml"):  # a member's config may be derived
            assert (member / ".hydra" / name).read_text() == (alone / ".hydra" / name).read_text()
        mine, theirs = (OmegaConf.load(f / ".hydra" / "hydra.yaml").hydra for f in (member, alone))
        assert mine.job == theirs.job and mine.overrides.task == theirs.overrides.task
        mine.runtime.choices.pop("hydra/launcher")
        theirs.runtime.choices.pop("hydra/launcher")
        assert mine.runtime.choices == theirs.runtime.choices
        assert "run folder" in (member / "run.log").read_text()
        for png in (alone / "figures").glob("*.png"):  # drawn while the group ended others
            assert (member / "figures" / png.name).read_bytes() == png.read_bytes(), job
            compared.append(png)
    assert compared  # the jobs that did not diverge drew end figures, and they were compared
    summary = (ensemble_sweep / "summary.csv").read_text()
    assert summary.count("\n") == (basic_sweep / "summary.csv").read_text().count("\n")


def test_a_member_checkpoint_resumes_alone_on_the_basic_launcher(ensemble_sweep: Path) -> None:
    """A member that ran to max_epochs, extended by two epochs alone: an ordinary run folder."""
    job = next(
        j for j in range(JOBS) if record(ensemble_sweep / str(j))["stop_reason"] == "max_epochs"
    )
    folder = ensemble_sweep / str(job)
    done = run_ffn(f"hydra.run.dir={folder}", "trainer.resume=true", "trainer.max_epochs=10")
    assert done.returncode == 0, done.stderr[-2000:]
    assert record(folder)["epochs"] == 10 and record(folder)["status"] == "completed"


def test_what_no_ensemble_can_do_is_refused_in_one_line(tmp_path: Path) -> None:
    done = run_ffn(
        "-m",
        "hydra/launcher=ensemble",
        "dataset=iris",
        "optimizer.lr=0.1,0.2",
        "model.backend=autograd",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("ffn: error: invalid value for model.backend: "), lines[-3:]
    assert "hydra/launcher=basic" in lines[-1]


def test_sigterm_mid_ensemble_checkpoints_every_member_and_the_sweep_resumes(
    basic_sweep: Path, tmp_path: Path
) -> None:
    """SIGTERM once the first member has checkpointed: every member still training saves its
    checkpoint and ends `interrupted`, the sweep exits 143; the same command with
    trainer.resume=auto then ends every member as the uninterrupted basic sweep did."""
    folder = tmp_path / "sweep"
    command = [
        sys.executable,
        "run.py",
        *SWEEP,
        "hydra/launcher=ensemble",
        f"hydra.sweep.dir={folder}",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=ffn_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while not (folder / "0" / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        if process.poll() is not None:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    statuses = [record(folder / str(job))["status"] for job in range(JOBS)]
    if "interrupted" not in statuses:
        pytest.skip(f"the sweep ended before the signal took effect ({statuses})")
    assert process.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    for job, status in enumerate(statuses):
        assert status in ("interrupted", "diverged", "completed"), (job, status)
        if status == "interrupted":
            assert (folder / str(job) / "checkpoints" / "last.pt").exists()
    done = run_ffn(
        *SWEEP, "hydra/launcher=ensemble", f"hydra.sweep.dir={folder}", "trainer.resume=auto"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for job in range(JOBS):
        alone, member = record(basic_sweep / str(job)), record(folder / str(job))
        for key in ("status", "stop_reason", "epochs", "steps"):
            assert member[key] == alone[key], (job, key)
        for key, value in alone["metrics"].items():
            assert close(member["metrics"][key], value), (job, key, member["metrics"][key], value)
        last = Path(str(job)) / "checkpoints" / "last.pt"
        assert (folder / last).exists() == (basic_sweep / last).exists()  # none: diverged at once
        if (basic_sweep / last).exists():
            mine = torch.load(folder / last, weights_only=True)
            assert_same_tensors(
                mine["model"], torch.load(basic_sweep / last, weights_only=True)["model"]
            )


def test_an_optuna_batch_of_n_jobs_trials_trains_as_one_ensemble(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    done = run_ffn(
        "hparams_search=digits",
        "hydra/launcher=ensemble",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        "model=choice(relu)",
        "model.hidden=choice([16])",
        "penalty=choice(l2)",
        "trainer.max_epochs=1",
        "trainer.figures=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Launching 2 jobs locally, as 1 ensembles and 0 single jobs" in done.stdout + done.stderr
    assert [record(tmp_path / "sweep" / str(j))["status"] for j in range(2)] == ["completed"] * 2
