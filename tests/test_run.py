"""`python run.py` end to end, in a subprocess: the run folder, TensorBoard, stopping, bad input.

Runs that several tests read are made once per module; independent runs go two at a time.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_ffn, run_ffn_forked
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from ffn.run_record import DIAGNOSTICS_EVENTS, EVENT_FOLDERS, METRICS_EVENTS, event_files

# What the short run is made of: the determinism runs repeat it exactly
SHORT = ("trainer.max_epochs=3", "trainer.histogram_every=1", "trainer.device=cpu")
QUIET = ("trainer.histogram_every=0", "trainer.figures=false")
HAS_CUDA = torch.cuda.is_available()

pytestmark = pytest.mark.slow  # every test here runs `python run.py`


class FinishedRun:
    """A finished `python run.py` and the folder it wrote."""

    def __init__(self, folder: Path, proc: subprocess.CompletedProcess[str], seconds: float):
        self.folder, self.proc, self.seconds = folder, proc, seconds

    @property
    def metrics_json(self) -> dict:
        """metrics.json, refusing NaN/Infinity, which are not JSON."""
        text = (self.folder / "metrics.json").read_text()
        return json.loads(text, parse_constant=_refuse_constant)

    def events(self, folder: str = METRICS_EVENTS) -> event_accumulator.EventAccumulator:
        """The run's one event file in `folder` (ffn.run_record.EVENT_FOLDERS), read back by
        TensorBoard's own reader, nothing dropped."""
        files = sorted((self.folder / folder).glob("events.out.tfevents.*"))
        assert len(files) == 1, files
        guidance = dict.fromkeys(event_accumulator.DEFAULT_SIZE_GUIDANCE, 0)
        acc = event_accumulator.EventAccumulator(str(files[0]), size_guidance=guidance)
        acc.Reload()
        return acc


def _refuse_constant(name: str) -> None:
    raise ValueError(f"metrics.json holds {name}")


def run_cli(folder: Path, *overrides: str, timeout: float = 300) -> FinishedRun:
    """`python run.py OVERRIDES hydra.run.dir=folder` from the repo root."""
    started = time.perf_counter()
    proc = run_ffn(*overrides, f"hydra.run.dir={folder}", timeout=timeout)
    return FinishedRun(folder, proc, time.perf_counter() - started)


def run_many(base: Path, runs: dict[str, Iterable[str]]) -> dict[str, FinishedRun]:
    """Several independent runs, two at a time, each a process forked from one that did the
    imports (helpers.run_ffn_forked); folder base/NAME for each. Their `seconds` are NaN: the
    wall a user waits is test_default_run_is_accurate_and_quick's, a plain process."""
    names = list(runs)
    jobs = [[*runs[name], f"hydra.run.dir={base / name}"] for name in names]
    procs = zip(names, run_ffn_forked(jobs), strict=True)
    return {name: FinishedRun(base / name, proc, math.nan) for name, proc in procs}


# Every run the tests below read, run once for the module: name -> overrides
RUNS: dict[str, tuple[str, ...]] = {
    "short": SHORT,
    # the determinism runs: the short run again, and with another seed
    "same": SHORT,
    "other": (*SHORT, "trainer.seed=1"),
    # tasks
    "diabetes": ("dataset=diabetes", "model=sigmoid", "trainer.max_epochs=2",
                 "trainer.histogram_every=0"),
    "moons": ("dataset=moons", "dataset.n_samples=300", "model=tanh", "trainer.max_epochs=2",
              "trainer.histogram_every=0"),
    # stopping rules and optimizers
    # sgd's larger rate makes the soft-threshold eta*lam big enough to zero weights
    "l1": ("model=relu", "penalty=l1", "penalty.lam=0.01", "optimizer=sgd",
           "trainer.max_epochs=3", *QUIET),
    "gd": ("optimizer=gd", "trainer.max_epochs=3", *QUIET),
    # any change is under a huge tolerance: stops once patience epochs were calm
    "rel_tol": ("trainer.rel_tol=1e9", "trainer.patience=2", "trainer.max_epochs=20", *QUIET),
    "grad_tol": ("trainer.grad_tol=1e9", "trainer.max_epochs=20", *QUIET),
    # a large constant rate on digits: val/loss is best early, then worse
    "early_stopping": ("trainer.early_stopping=2", "optimizer.lr=0.03", "schedule=constant",
                       "trainer.max_epochs=50", *QUIET),
    "divergence": ("optimizer=sgd", "optimizer.lr=1e6", *QUIET),
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FinishedRun]:
    return run_many(tmp_path_factory.mktemp("runs"), RUNS)


def completed_ok(run: FinishedRun) -> dict:
    """metrics.json of a run that must have exited 0; the process output if not."""
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    return run.metrics_json


def values(acc: event_accumulator.EventAccumulator, tag: str) -> list[float]:
    return [event.value for event in acc.Scalars(tag)]


def steps(acc: event_accumulator.EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in acc.Scalars(tag)]


def tags_like(names: Iterable[str], prefix: str) -> list[str]:
    return sorted(name for name in names if name.startswith(prefix))


def hparams_info(acc: event_accumulator.EventAccumulator):
    """The HParams plugin's session start and end records."""
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    return start, end


# ---------------------------------------------------------------- the short default run


@pytest.fixture(scope="module")
def short_run(runs: dict[str, FinishedRun]) -> FinishedRun:
    return runs["short"]


@pytest.fixture(scope="module")
def short_events(short_run: FinishedRun) -> event_accumulator.EventAccumulator:
    completed_ok(short_run)
    return short_run.events()


@pytest.fixture(scope="module")
def short_diagnostics(short_run: FinishedRun) -> event_accumulator.EventAccumulator:
    completed_ok(short_run)
    return short_run.events(DIAGNOSTICS_EVENTS)


def test_short_run_leaves_a_complete_folder(short_run: FinishedRun) -> None:
    result = completed_ok(short_run)
    folder = short_run.folder
    config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 3
    assert config["model"]["activation"] == "relu"
    overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    assert set(SHORT) <= set(overrides)
    log = (folder / "run.log").read_text()  # the job log, named after run.py
    assert "completed" in log
    assert result["status"] == "completed"
    assert result["stop_reason"] == "max_epochs"
    assert result["epochs"] == 3
    assert result["wall_time_s"] > 0
    metrics = result["metrics"]
    for split in ("train", "val", "test"):
        for name in ("loss", "accuracy"):
            value = metrics[f"{split}/{name}"]
            assert value is not None and math.isfinite(value), (split, name)
    assert 0 <= metrics["test/accuracy"] <= 1
    # the HParams session and headline curves, and beside them the rest (ffn/run_logger.py)
    assert [path.parent.name for path in event_files(folder)] == list(EVENT_FOLDERS)


def test_short_run_logs_every_scalar_each_epoch(short_events, short_diagnostics) -> None:
    per_epoch = [
        "train/loss",
        "train/accuracy",
        "train/objective",
        "val/loss",
        "val/accuracy",
    ]
    for tag in per_epoch:
        assert steps(short_events, tag) == [1, 2, 3], tag
        assert all(math.isfinite(v) for v in values(short_events, tag)), tag
    assert values(short_diagnostics, "train/penalty") == [0, 0, 0]
    scalars = short_diagnostics.Tags()["scalars"]
    layer_tags = [
        tags_like(scalars, prefix)
        for prefix in ("grad_norm/layer_", "weight_norm/layer_", "sparsity/layer_")
    ]
    # relu, one hidden layer of 128: two weight matrices, one activation
    assert all(len(tags) == 2 for tags in layer_tags), layer_tags
    assert tags_like(scalars, "dead/layer_") == ["dead/layer_0"]
    assert not tags_like(scalars, "saturated/")
    for tag in sum(layer_tags, ["dead/layer_0", "train/penalty", "train/lr", "train/grad_norm"]):
        assert steps(short_diagnostics, tag) == [1, 2, 3], tag
        assert all(math.isfinite(v) for v in values(short_diagnostics, tag)), tag
    for tag in tags_like(scalars, "sparsity/") + tags_like(scalars, "dead/"):
        assert all(0 <= v <= 1 for v in values(short_diagnostics, tag)), tag
    # no penalty: nothing pushes a weight to exactly zero
    assert all(v == 0 for tag in layer_tags[2] for v in values(short_diagnostics, tag))


def test_short_run_logs_histograms_figures_and_config(
    short_run: FinishedRun, short_events, short_diagnostics
) -> None:
    histograms = short_diagnostics.Tags()["histograms"]
    for prefix in ("weights/layer_", "grads/layer_", "preactivations/layer_"):
        found = tags_like(histograms, prefix)
        assert found, prefix
        for tag in found:  # histogram_every=1: every epoch
            assert [e.step for e in short_diagnostics.Histograms(tag)] == [1, 2, 3], tag
    tags = short_events.Tags()
    assert "figures/confusion_matrix" in tags["images"]
    text = short_events.PluginTagToContent("text")
    assert any(tag.startswith("config") for tag in text), text
    config_tag = next(tag for tag in tags["tensors"] if tag.startswith("config"))
    logged = short_events.Tensors(config_tag)[0].tensor_proto.string_val[0].decode()
    assert "max_epochs: 3" in logged
    assert (short_run.folder / "figures" / "confusion_matrix.png").is_file()


def test_short_run_hparams_session(short_events) -> None:
    start, end = hparams_info(short_events)
    hp = start.hparams
    # what the user chose: the group choices and the keys typed (ffn.hparams.chosen_hparams)
    assert hp["trainer.max_epochs"].number_value == 3
    assert hp["trainer.device"].string_value == "cpu"
    assert hp["model"].string_value == "relu"  # the group choice
    assert hp["dataset"].string_value == "digits"
    assert hp["optimizer"].string_value == "adam"
    # not typed, or how the run is logged: not columns
    assert not {"model.activation", "penalty.lam", "trainer.histogram_every"} & set(hp)
    assert end.status == api_pb2.STATUS_SUCCESS


def test_scalars_agree_with_metrics_json(
    short_run: FinishedRun, short_events, short_diagnostics
) -> None:
    metrics = short_run.metrics_json["metrics"]
    for tag in ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "train/objective"):
        assert values(short_events, tag)[-1] == pytest.approx(metrics[tag], rel=1e-6), tag
    for tag in ("test/loss", "test/accuracy"):
        assert steps(short_events, tag) == [3]
        assert values(short_events, tag)[-1] == pytest.approx(metrics[tag], rel=1e-6), tag
    # train/lr is the rate each epoch used: cosine over 3 epochs from adam's 3e-3
    expected = [3e-3 * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)]
    assert values(short_diagnostics, "train/lr") == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- other tasks and activations


@pytest.fixture(scope="module")
def task_runs(runs: dict[str, FinishedRun]) -> dict[str, FinishedRun]:
    return {name: runs[name] for name in ("diabetes", "moons")}


@pytest.mark.slow
def test_regression_logs_r2_and_predicted_vs_true(task_runs: dict[str, FinishedRun]) -> None:
    run = task_runs["diabetes"]
    metrics = completed_ok(run)["metrics"]
    assert math.isfinite(metrics["test/r2"]) and "test/accuracy" not in metrics
    acc = run.events()
    tags = acc.Tags()
    assert steps(acc, "val/r2") == [1, 2]
    assert "val/accuracy" not in tags["scalars"]
    assert "figures/predicted_vs_true" in tags["images"]
    assert "figures/confusion_matrix" not in tags["images"]
    assert (run.folder / "figures" / "predicted_vs_true.png").is_file()
    # sigmoid saturates rather than dies
    scalars = run.events(DIAGNOSTICS_EVENTS).Tags()["scalars"]
    assert tags_like(scalars, "saturated/layer_") == ["saturated/layer_0"]
    assert not tags_like(scalars, "dead/")


@pytest.mark.slow
def test_two_dimensional_classification_logs_decision_regions(
    task_runs: dict[str, FinishedRun],
) -> None:
    run = task_runs["moons"]
    completed_ok(run)
    assert {"figures/confusion_matrix", "figures/decision_regions"} <= set(
        run.events().Tags()["images"]
    )
    assert (run.folder / "figures" / "decision_regions.png").is_file()
    scalars = run.events(DIAGNOSTICS_EVENTS).Tags()["scalars"]
    assert tags_like(scalars, "saturated/layer_") == ["saturated/layer_0"]


# ---------------------------------------------------------------- determinism


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_metrics(
    short_run: FinishedRun, runs: dict[str, FinishedRun]
) -> None:
    first = completed_ok(short_run)
    same, other = completed_ok(runs["same"]), completed_ok(runs["other"])
    # Determinism is bitwise by definition: exact equality is the point here
    assert same["metrics"] == first["metrics"]
    assert (same["epochs"], same["steps"]) == (first["epochs"], first["steps"])
    assert other["metrics"]["train/loss"] != first["metrics"]["train/loss"]
    assert other["metrics"] != first["metrics"]


# ---------------------------------------------------------------- penalties, optimizers, stopping


@pytest.fixture(scope="module")
def rule_runs(runs: dict[str, FinishedRun]) -> dict[str, FinishedRun]:
    return {name: runs[name] for name in ("l1", "gd", "rel_tol", "grad_tol", "early_stopping")}


@pytest.mark.slow
def test_l1_proximal_gives_exact_zeros(rule_runs: dict[str, FinishedRun]) -> None:
    run = rule_runs["l1"]
    metrics = completed_ok(run)["metrics"]
    assert metrics["train/penalty"] > 0
    layers = run.events(DIAGNOSTICS_EVENTS)
    sparsity = [values(layers, t)[-1] for t in tags_like(layers.Tags()["scalars"], "sparsity/")]
    assert max(sparsity) > 0.01, sparsity
    start, _ = hparams_info(run.events())
    assert start.hparams["penalty.lam"].number_value == pytest.approx(0.01)
    assert start.hparams["penalty"].string_value == "l1"


@pytest.mark.slow
def test_gd_takes_one_full_batch_step_per_epoch(rule_runs: dict[str, FinishedRun]) -> None:
    result = completed_ok(rule_runs["gd"])
    assert result["epochs"] == 3
    assert result["steps"] == result["epochs"]


@pytest.mark.slow
def test_rel_tol_stops_as_converged(rule_runs: dict[str, FinishedRun]) -> None:
    result = completed_ok(rule_runs["rel_tol"])
    assert (result["status"], result["stop_reason"]) == ("completed", "converged")
    assert result["epochs"] == 3  # epoch 1 has nothing to compare; epochs 2 and 3 calm


@pytest.mark.slow
def test_grad_tol_stops_at_once(rule_runs: dict[str, FinishedRun]) -> None:
    result = completed_ok(rule_runs["grad_tol"])
    assert (result["status"], result["stop_reason"]) == ("completed", "grad_tol")
    assert result["epochs"] == 1


@pytest.mark.slow
def test_early_stopping_keeps_the_best_model(rule_runs: dict[str, FinishedRun]) -> None:
    run = rule_runs["early_stopping"]
    result = completed_ok(run)
    assert (result["status"], result["stop_reason"]) == ("completed", "early_stopping")
    assert 3 <= result["epochs"] < 50
    acc = run.events()
    val = values(acc, "val/loss")
    assert len(val) == result["epochs"]
    best = val.index(min(val))
    assert len(val) - 1 - best == 2  # stopped two epochs after the best
    # the model reported is the best one on val, not the last
    assert result["metrics"]["val/loss"] == pytest.approx(min(val), rel=1e-6)


# ---------------------------------------------------------------- divergence


def test_divergence_is_a_result_not_a_crash(runs: dict[str, FinishedRun]) -> None:
    run = runs["divergence"]
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    assert "Traceback" not in run.proc.stderr
    result = run.metrics_json  # valid JSON: NaN is written as null
    assert (result["status"], result["stop_reason"]) == ("diverged", "diverged")
    assert result["metrics"]["train/loss"] is None
    _, end = hparams_info(run.events())
    assert end.status == api_pb2.STATUS_FAILURE


# ---------------------------------------------------------------- bad input

# One line naming the key, for every bad value: tests/test_bad_input.py, whose one table of cases
# runs each bad command line once for the whole suite.


# ---------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_run_trains(device: str, tmp_path: Path) -> None:
    run = run_cli(tmp_path / "run", f"trainer.device={device}", "trainer.max_epochs=2", *QUIET)
    result = completed_ok(run)
    assert result["status"] == "completed"
    assert all(v is not None and math.isfinite(v) for v in result["metrics"].values())


# ---------------------------------------------------------------- the README's promise


@pytest.mark.slow
def test_default_run_is_accurate_and_quick(tmp_path: Path) -> None:
    run = run_cli(tmp_path / "run")
    result = completed_ok(run)
    accuracy = result["metrics"]["test/accuracy"]
    print(
        f"default run: test/accuracy={accuracy:.4f}, {run.seconds:.1f} s wall "
        f"({result['wall_time_s']:.1f} s in the job), {result['epochs']} epochs"
    )
    assert result["status"] == "completed"
    assert accuracy >= 0.97
    assert run.seconds < 60
