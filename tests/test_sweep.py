"""Sweeps: a real multirun where one job diverges and others raise, and the summary it leaves.

Also ffn.report on hand-made run folders (ranking, columns, event files instead of metrics.json,
the command line) and the callback's hand-back of failed and diverged jobs to the sweepers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, TINY, read_rows, run_ffn
from hydra.core.utils import JobReturn, JobStatus

from ffn import figure_worker, report, summary_plot
from ffn.hparams import (
    HEADLINE_TAGS,
    MAX_METRICS,
    chosen_hparams,
    experiment_keys,
    headline_metrics,
)
from ffn.report import (
    direction_for,
    find_run_dirs,
    load_run,
    read_event_files,
    summarize,
    write_report,
)
from ffn.run_logger import RunLogger
from ffn.sweep import JobDiverged, compose_each_job_once, hand_back


def fake_run(
    folder: Path,
    overrides: list[str],
    status: str = "completed",
    metrics: dict[str, float | None] | None = None,
    choices: dict[str, str] | None = None,
    config: dict | None = None,
    **record: object,
) -> Path:
    """A run folder as run_job and Hydra leave it, without training anything."""
    (folder / ".hydra").mkdir(parents=True)
    payload = {"status": status, "metrics": metrics or {}, **record}
    (folder / "metrics.json").write_text(json.dumps(payload))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"runtime": {"choices": choices or {"model": "relu"}}}}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    config = config or {"optimized_metric": "val/loss", "optimizer": {"lr": 0.1}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


# ---------------------------------------------------------------------------- ffn.report


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Four jobs swept over model and lr: two finished, one diverged, one failed."""
    root = tmp_path / "sweep"
    fake_run(root / "0", ["model=relu", "optimizer.lr=0.1"], metrics={"val/loss": 0.5}, epochs=3)
    fake_run(
        root / "1",
        ["model=tanh", "optimizer.lr=0.1"],
        metrics={"val/loss": 0.2, "train/loss": 0.1},
        choices={"model": "tanh"},
        epochs=3,
        wall_time_s=1.5,
    )
    fake_run(root / "2", ["model=relu", "optimizer.lr=1e30"], "diverged", {"val/loss": None})
    fake_run(root / "10", ["model=relu", "optimizer.lr=-1"], "failed", error="ConfigError: lr")
    (root / "0" / ".hydra" / "metrics.json").write_text("{}")  # hidden folders are not runs
    return root


def test_summary_ranks_best_first_and_failures_last(sweep: Path) -> None:
    summary = summarize(sweep)
    assert summary.metric == "val/loss"
    assert summary.direction == "minimize"
    assert [run.name for run in summary.runs] == ["1", "0", "2", "10"]
    assert [run.status for run in summary.runs] == ["completed", "completed", "diverged", "failed"]
    assert summary.swept == ["model", "optimizer.lr"]
    assert [run.name for run in summary.failed] == ["10"]
    assert summary.metric_names == ["val/loss", "train/loss"]


def test_summary_maximises_scores() -> None:
    assert direction_for("val/accuracy") == "maximize"
    assert direction_for("val/r2") == "maximize"
    assert direction_for("val/loss") == "minimize"
    assert direction_for("train/objective") == "minimize"


def test_report_files(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_report(sweep, out)
    rows = read_rows(out / "summary.csv")
    assert [r["job"] for r in rows] == ["1", "0", "2", "10"]
    assert rows[0]["model"] == "tanh"
    assert rows[0]["optimizer.lr"] == "0.1"
    assert float(rows[0]["val/loss"]) == pytest.approx(0.2)
    assert rows[0]["wall_time_s"] == "1.5"
    assert rows[2]["val/loss"] == "nan"  # diverged: not finite
    assert rows[3]["val/loss"] == ""  # failed: never measured
    assert rows[3]["error"] == "ConfigError: lr"
    assert list(rows[0])[:5] == ["rank", "job", "model", "optimizer.lr", "status"]
    markdown = (out / "summary.md").read_text()
    assert "| rank | job | model | optimizer.lr | status | val/loss |" in markdown
    assert "ConfigError: lr" in markdown
    assert "train/loss" not in markdown  # train metrics are in the CSV only
    assert (out / "summary.png").stat().st_size > 1000


def test_a_sweeps_figure_worker_draws_its_summary_png(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary plot through the worker a sweep's runs started: the same PNG bytes."""
    (summary,) = report.summarize_all(sweep)
    summary_plot.save_plot(summary, tmp_path / "here.png")
    monkeypatch.setattr(figure_worker, "_drew_here", False)  # as in a sweep's process
    figure_worker.start()
    try:
        assert figure_worker.ready(timeout=60)
        report.save_plot(summary, tmp_path / "worker.png")
        assert figure_worker.running()  # it did the task (a failure stops it)
    finally:
        figure_worker.stop()
    assert (tmp_path / "worker.png").read_bytes() == (tmp_path / "here.png").read_bytes()


def test_unswept_keys_take_each_run_s_own_value(tmp_path: Path) -> None:
    """Two sweeps that varied different keys line up: a missing key shows the run's config."""
    fake_run(
        tmp_path / "a" / "0", ["model=tanh"], metrics={"val/loss": 1.0}, choices={"model": "tanh"}
    )
    fake_run(
        tmp_path / "b" / "0",
        ["optimizer.lr=0.5"],
        metrics={"val/loss": 2.0},
        choices={"model": "sigmoid"},
        config={"optimized_metric": "val/loss", "optimizer": {"lr": 0.5}},
    )
    summary = summarize(tmp_path)
    assert summary.swept == ["model", "optimizer.lr"]
    rows = {row["job"]: row for row in summary.rows()}
    assert rows["a/0"]["optimizer.lr"] == "0.1"  # from its config.yaml
    assert rows["b/0"]["model"] == "sigmoid"  # from its group choices


def test_report_command_line(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main([str(sweep), "--metric", "train/loss", "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "best train/loss (minimize) first" in printed
    assert (sweep / "summary.csv").exists()
    assert not (sweep / "summary.png").exists()
    rows = read_rows(sweep / "summary.csv")
    assert rows[0]["job"] == "1"  # the only run with a train/loss


def test_report_command_line_refuses_an_empty_folder(tmp_path: Path) -> None:
    assert report.main([str(tmp_path)]) == 1


def test_event_files_stand_in_for_metrics_json(tmp_path: Path) -> None:
    """A run killed before metrics.json was final is read from its TensorBoard events."""
    logger = RunLogger(tmp_path)
    logger.hparams_start({"model": "relu", "optimizer.lr": 0.1})
    for epoch, loss in enumerate([0.9, 0.5, 0.3], start=1):
        scalars = {"train/loss": loss, "val/loss": loss + 0.1, "train/lr": 0.1}
        logger.scalars({**scalars, "train/penalty": loss / 10}, epoch)  # diagnostics/: beside
    logger.scalars({"test/loss": 0.45}, 3)
    logger.hparams_end("completed")
    logger.close()
    (tmp_path / "metrics.json").write_text('{"status": "running"}')

    record = read_event_files(tmp_path)
    assert record["status"] == "completed"
    assert record["epochs"] == 3
    assert record["metrics"] == pytest.approx(
        {"train/loss": 0.3, "val/loss": 0.4, "test/loss": 0.45, "train/penalty": 0.03}
    )
    run = load_run(tmp_path, tmp_path)
    assert run.status == "completed"
    assert run.metrics["val/loss"] == pytest.approx(0.4)


def test_event_files_tell_diverged_from_failed(tmp_path: Path) -> None:
    for name, loss in (("diverged", math.nan), ("failed", 0.5)):
        logger = RunLogger(tmp_path / name)
        logger.hparams_start({"model": "relu"})
        logger.scalars({"train/loss": loss}, 1)
        logger.hparams_end(name)
        logger.close()
        assert read_event_files(tmp_path / name)["status"] == name
    logger = RunLogger(tmp_path / "running")
    logger.scalars({"train/loss": 1.0}, 1)
    logger.close()
    assert read_event_files(tmp_path / "running")["status"] == "running"
    assert read_event_files(tmp_path / "empty") is None
    # each found as the run folder, not as its metrics/ event folder
    found = find_run_dirs(tmp_path)
    assert found == [tmp_path / name for name in ("diverged", "failed", "running")]


# ---------------------------------------------------------------------------- hand-back


def job_return(status: JobStatus, value: object) -> JobReturn:
    ret = JobReturn(overrides=["optimizer.lr=1e30"], status=status)
    ret.return_value = value
    return ret


def test_basic_sweeper_gets_nan_for_a_job_that_raised() -> None:
    ret = job_return(JobStatus.FAILED, ValueError("boom"))
    hand_back(ret, optuna=False)
    assert ret.status == JobStatus.COMPLETED
    assert math.isnan(ret.return_value)


def test_basic_sweeper_keeps_a_diverged_job_s_nan() -> None:
    ret = job_return(JobStatus.COMPLETED, math.nan)
    hand_back(ret, optuna=False)
    assert ret.status == JobStatus.COMPLETED
    assert math.isnan(ret.return_value)


def test_optuna_gets_a_failed_trial_for_nan() -> None:
    ret = job_return(JobStatus.COMPLETED, math.nan)
    hand_back(ret, optuna=True)
    assert ret.status == JobStatus.FAILED
    with pytest.raises(JobDiverged, match=r"optimizer\.lr=1e30"):
        _ = ret.return_value
    finished = job_return(JobStatus.COMPLETED, 0.25)
    hand_back(finished, optuna=True)
    assert finished.return_value == 0.25
    raised = job_return(JobStatus.FAILED, ValueError("boom"))
    hand_back(raised, optuna=True)
    assert raised.status == JobStatus.FAILED


# ---------------------------------------------------------------------------- real multirun


def test_a_basic_sweeps_derived_jobs_are_the_configs_hydra_composes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the basic sweeper a job differing from a composed one in values only is derived
    (ffn.ensemble.compose): each is, hydra node and all, the config Hydra composes for it."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from ffn.config import register_configs
    from ffn.ensemble import compose
    from ffn.ensemble.compose import compose_by_template

    derivations: list[object] = []
    derive = compose._derive
    monkeypatch.setattr(compose, "_derive", lambda *args: derivations.append(args) or derive(*args))

    register_configs()  # as run.py does: conf/config.yaml's defaults name the schema
    jobs = [
        ["optimizer.lr=0.001", "trainer.seed=0"],
        ["optimizer.lr=0.03", "trainer.seed=5"],  # derived: values only
        ["optimizer.lr=1e-4", "trainer.seed=1", "penalty=l2"],  # a group choice: composed
        ["optimizer.lr=2", "trainer.seed=2", "penalty=l2"],  # derived from the one above
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        swept = "optimizer.lr=" + ",".join(job[0].partition("=")[2] for job in jobs)
        master = loader.load_configuration(
            "config", [f"hydra.sweep.dir={tmp_path}", swept], run_mode=RunMode.MULTIRUN
        )
        composed = [loader.load_sweep_config(master, job) for job in jobs]
        compose_by_template(loader)
        compose_each_job_once(loader)  # as SummaryCallback.on_multirun_start wraps it
        wrapped = loader.load_sweep_config
        compose_by_template(loader)  # the ensemble launcher's setup, after the callback's
        assert loader.load_sweep_config is wrapped  # not derived twice
        for job, theirs in zip(jobs, composed, strict=True):
            for _ in ("validate_batch_is_legal", "the launcher"):
                mine = loader.load_sweep_config(master, job)
                assert OmegaConf.to_container(mine) == OmegaConf.to_container(theirs), job
                assert OmegaConf.to_yaml(mine) == OmegaConf.to_yaml(theirs)  # 2, not 2.0
        # the two value-only jobs derived once each: the launcher's second load is answered
        # by compose_each_job_once, not derived again
        assert len(derivations) == 2


def test_each_job_is_composed_once_for_validation_and_launch() -> None:
    """The sweeper's validation and the launcher share one composition; each gets its own."""
    from omegaconf import OmegaConf

    calls: list[tuple[str, ...]] = []

    class Loader:
        def load_sweep_config(self, master_config, sweep_overrides):
            calls.append(tuple(sweep_overrides))
            return OmegaConf.create({"lr": sweep_overrides[0], "job": {"num": None}})

    loader, master = Loader(), OmegaConf.create({})
    compose_each_job_once(loader)
    compose_each_job_once(loader)  # a second sweep in the process: not wrapped twice
    batch = [["lr=1"], ["lr=2"]]
    checked = [loader.load_sweep_config(master, job) for job in batch]  # validate_batch_is_legal
    launched = [loader.load_sweep_config(master, job) for job in batch]  # the launcher
    assert calls == [("lr=1",), ("lr=2",)]
    for first, second, job in zip(checked, launched, batch, strict=True):
        assert first is not second and first == second and second.lr == job[0]
    launched[0].job.num = 0  # what the launcher does: the next request composes afresh
    again = loader.load_sweep_config(master, ["lr=1"])
    assert calls[-1] == ("lr=1",) and again.job.num is None


@pytest.mark.slow
def test_multirun_survives_divergence_and_errors(tmp_path: Path) -> None:
    """Eight jobs: two finish, lr=1e30 diverges, lr=-1 is refused, LBFGS raises in its step.

    Every job runs, each metrics.json says how it ended, failures log their traceback, the
    summary ranks the finished jobs first, and the sweep exits 1 naming the failed jobs.
    """
    sweep_dir = tmp_path / "sweep"
    proc = run_ffn(
        "-m",
        *TINY,
        "optimizer=sgd",
        "optimizer._target_=torch.optim.SGD,torch.optim.SparseAdam",
        "optimizer.lr=0.02,0.05,1e30,-1",
        f"hydra.sweep.dir={sweep_dir}",
        timeout=240,
    )
    assert proc.returncode == 1, proc.stderr
    expected = {
        0: "completed",
        1: "completed",
        2: "diverged",
        3: "failed",  # lr=-1: ConfigError before training
        4: "failed",  # SparseAdam: RuntimeError in optimizer.step() (dense gradients)
        5: "failed",
        6: "failed",
        7: "failed",
    }
    records = {n: json.loads((sweep_dir / str(n) / "metrics.json").read_text()) for n in expected}
    assert {n: r["status"] for n, r in records.items()} == expected
    assert records[2]["stop_reason"] == "diverged"
    assert records[2]["metrics"]["val/loss"] is None
    assert "optimizer.lr" in records[3]["error"]
    assert records[4]["error"].startswith("RuntimeError")
    for n in (3, 4):
        log = (sweep_dir / str(n) / "run.log").read_text()
        assert "Traceback (most recent call last)" in log
    assert "5 of 8 jobs failed" in proc.stderr
    for n in (3, 4, 5, 6, 7):
        assert f"{sweep_dir / str(n)}:" in proc.stderr

    rows = read_rows(sweep_dir / "summary.csv")
    assert len(rows) == 8
    assert [r["status"] for r in rows] == ["completed"] * 2 + ["diverged"] + ["failed"] * 5
    losses = [float(rows[i]["val/loss"]) for i in (0, 1)]
    assert losses == sorted(losses)
    for row in rows[:3]:
        record = records[int(row["job"])]
        assert row["epochs"] == str(record["epochs"])
        assert row["optimizer._target_"] == "torch.optim.SGD"
    assert {r["optimizer.lr"] for r in rows[:2]} == {"0.02", "0.05"}
    assert list(rows[0])[2:5] == ["optimizer._target_", "optimizer.lr", "status"]
    assert (sweep_dir / "summary.md").read_text() in proc.stdout
    assert (sweep_dir / "summary.png").exists()

    # ffn.report rebuilds the same table from the folder, and from event files alone
    assert report.main([str(sweep_dir), "--out", str(tmp_path / "again")]) == 0
    assert read_rows(tmp_path / "again" / "summary.csv") == rows
    for n in expected:
        (sweep_dir / str(n) / "metrics.json").unlink()
    from_events = summarize(sweep_dir)
    assert [run.status for run in from_events.runs] == [r["status"] for r in rows]
    for run, row in zip(from_events.runs[:2], rows, strict=False):
        assert run.metrics["val/loss"] == pytest.approx(float(row["val/loss"]), rel=1e-6)


# ---------------------------------------------------------------------------- what is shown


def test_chosen_hparams_are_choices_and_typed_keys() -> None:
    config = {
        "dataset": {"name": "digits", "noise": 0.1},
        "model": {"activation": "relu", "hidden": [64, 64]},
        "optimizer": {"lr": 0.01},
        "trainer": {"seed": 3, "resume": False},
    }
    choices = {"dataset": "digits", "model": "relu", "trainer": "default", "hydra/launcher": "x"}
    typed = ["dataset.name=digits", "model.hidden=[64,64]", "optimizer.lr=0.01"]
    typed += ["trainer.seed=3", "trainer.resume=false", "hydra.sweep.dir=/x", "+model=relu"]
    assert chosen_hparams(choices, typed, config) == {
        "dataset": "digits",
        "model": "relu",
        "model.hidden": "[64, 64]",
        "optimizer.lr": 0.01,
        "trainer.seed": 3,
    }  # dataset.name says what dataset says; resume and hydra.* are how a run was started
    assert chosen_hparams(choices, [], config, ["dataset.noise"])["dataset.noise"] == 0.1


def test_experiment_keys_follow_what_the_experiment_builds_on() -> None:
    keys = experiment_keys("lasso_ridge_smoke", [ROOT / "conf"])
    assert {"optimizer.lr", "trainer.dtype", "trainer.max_epochs"} <= set(keys)
    assert not [k for k in keys if k.startswith(("hydra", "defaults"))]
    assert experiment_keys(None, [ROOT / "conf"]) == []


def test_headline_metrics_fit_the_table() -> None:
    tags = [f"{s}/{m}" for s in ("train", "val", "test") for m in ("loss", "accuracy", "r2")]
    tags += ["train/objective", "train/penalty", "train/sparsity", "epochs", "train/lr"]
    tags += ["dead/layer_0", "sparsity/layer_0", "train/grad_norm"]
    shown = headline_metrics(tags)
    assert len(shown) == len(HEADLINE_TAGS) == MAX_METRICS  # both tasks' scores
    assert shown[:3] == ["val/loss", "val/accuracy", "val/r2"]
    # train/penalty is objective - loss: a Scalars curve beside them, not a column
    assert not {"train/penalty", "train/lr", "train/grad_norm"} & set(shown)
    assert headline_metrics(["val/loss", "dead/layer_0", "epochs"]) == ["val/loss", "epochs"]


def test_plot_axes() -> None:
    assert summary_plot.axis_scale([0.001, 0.01, 0.1]) == "log"
    assert summary_plot.axis_scale([0.0, 1e-4, 1e-3]) == "symlog"
    assert summary_plot.axis_scale([16, 32, 64]) == "linear"
    assert summary_plot.axis_scale([0, 1, 2, 3]) == "linear"
    low, high = summary_plot.robust_range([0.30, 0.31, 0.32, 0.33, 0.34, 20.0])
    assert low == pytest.approx(0.30) and high < 1.0  # the outlier falls outside


def test_warnings_for_keys_that_change_nothing_and_repeated_jobs(tmp_path: Path) -> None:
    same = {"val/loss": 0.5, "val/accuracy": 0.8}
    for n, (penalty, lam, metrics) in enumerate(
        [("none", "0.1", same), ("none", "1", same), ("l2", "0.1", {"val/loss": 0.4}),
         ("l2", "1", {"val/loss": 0.9}), ("l2", "1", {"val/loss": 0.9})]
    ):  # fmt: skip
        fake_run(tmp_path / str(n), [f"penalty={penalty}", f"penalty.lam={lam}"], metrics=metrics)
    warnings = summarize(tmp_path).warnings
    assert "penalty.lam changed nothing where penalty=none: 1 job(s) repeat another" in warnings[0]
    assert "job 4 is the same configuration as job 3" in warnings
    assert len(warnings) == 2


def test_the_sweep_plan_is_read_once_a_sweep(tmp_path: Path, monkeypatch) -> None:
    """Every job's progress line asks for the plan: multirun.yaml is parsed and its grid
    expanded once, and again only when the file changes."""
    from ffn import sweep

    path = tmp_path / "multirun.yaml"
    lines = "hydra:\n  sweeper:\n    params: null\n  overrides:\n    task: {}\n"
    path.write_text(lines.format('["optimizer.lr=0.1,0.2", "trainer.seed=0,1,2"]'))
    reads = []
    read = sweep._read_plan
    monkeypatch.setattr(sweep, "_read_plan", lambda p: reads.append(p) or read(p))
    assert sweep.sweep_plan(path) == (6, {"optimizer.lr", "trainer.seed"})
    assert sweep.sweep_plan(path) == (6, {"optimizer.lr", "trainer.seed"})
    assert len(reads) == 1
    path.write_text(lines.format('["trainer.seed=0,1,2,3"]'))
    assert sweep.sweep_plan(path) == (4, {"trainer.seed"}) and len(reads) == 2
    assert sweep.sweep_plan(tmp_path / "missing.yaml") == (None, set())
