"""Bad input, end to end: each bad command line or data file is refused in one line.

Every case runs `python run.py` in a process of its own and must end with a non-zero exit,
exactly one line on stderr (`ffn: error: ...`) naming the key and the value, no traceback, and
no run folder that looks like a successful run. The cases run once, two at a time, in a module
fixture; the parametrized tests only read their results. Most are forked from one process that
imported run.py's modules once (helpers.run_ffn_forked: a second of imports a case saved); the
cases in FRESH run as plain `python run.py`, so that the imports are covered too: a refusal by
Hydra's composition, one by validate, one by the data.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_ffn, run_ffn_forked, run_python

from ffn.run_record import event_files

pytestmark = pytest.mark.slow

# Quick settings, first: a case that sets one of these keys again wins (Hydra keeps the last)
QUICK = (
    "trainer.max_epochs=1",
    "trainer.histogram_every=0",
    "trainer.figures=false",
    "trainer.device=cpu",
)
HAS_CUDA = torch.cuda.is_available()


@dataclass(frozen=True)
class Case:
    """A bad input ({data}: the folder of the test's files, {run}: hydra.run.dir), and its line."""

    name: str
    overrides: tuple[str, ...]
    key: str
    value: str  # as the line shows it; for an unknown key, the key is the bad value
    bug: str | None = None  # a known bug: the case is a strict xfail
    skip: str | None = None  # why the case cannot be bad here


def file_case(name: str, file: str, key: str, value: str, *more: str) -> Case:
    """A user data file that ffn must refuse."""
    overrides = ("dataset=file", f"dataset.path={{data}}/{file}", "dataset.target=y", *more)
    return Case(name, overrides, key, value)


CASES = [
    Case("negative_lambda", ("penalty=l2", "penalty.lam=-1"), "penalty.lam", "-1"),
    Case("lr_zero", ("optimizer.lr=0",), "optimizer.lr", "0"),
    Case("lr_negative", ("optimizer.lr=-0.01",), "optimizer.lr", "-0.01"),
    Case("lr_as_text", ("optimizer.lr=fast",), "optimizer.lr", "fast"),
    Case("lr_nan", ("optimizer.lr=nan",), "optimizer.lr", "nan"),
    Case("unknown_activation", ("model.activation=swish",), "model.activation", "swish"),
    Case("unknown_model", ("model=swish",), "model", "swish"),
    Case("unknown_dataset", ("dataset=imagenet",), "dataset", "imagenet"),
    Case("hidden_size_zero", ("model.hidden=[64,0]",), "model.hidden", "[64, 0]"),
    Case("hidden_not_a_list", ("model.hidden=64",), "model.hidden", "64"),
    Case("batch_size_zero", ("trainer.batch_size=0",), "trainer.batch_size", "0"),
    Case("max_epochs_zero", ("trainer.max_epochs=0",), "trainer.max_epochs", "0"),
    Case(
        "cuda_without_cuda",
        ("trainer.device=cuda",),
        "trainer.device",
        "cuda",
        skip="this machine has CUDA" if HAS_CUDA else None,
    ),
    Case(
        "cuda_index_out_of_range",
        (f"trainer.device=cuda:{torch.cuda.device_count()}",),
        "trainer.device",
        f"cuda:{torch.cuda.device_count()}",
        skip=None if HAS_CUDA else "no CUDA here: cuda_without_cuda covers it",
    ),
    Case("unknown_dtype", ("trainer.dtype=float16",), "trainer.dtype", "float16"),
    Case("unknown_l1_method", ("penalty=l1", "penalty.method=lars"), "penalty.method", "lars"),
    Case("lbfgs_with_l1", ("optimizer=lbfgs", "penalty=l1"), "penalty.name", "'l1'"),
    Case(
        "test_path_missing",
        (
            "dataset=file",
            "dataset.path={data}/ok.csv",
            "dataset.target=y",
            "dataset.test_path={data}/absent.csv",
        ),
        "dataset.test_path",
        "{data}/absent.csv",
    ),
    file_case("missing_data_file", "absent.csv", "dataset.path", "{data}/absent.csv"),
    file_case("csv_text_column", "text.csv", "dataset.path", "{data}/text.csv"),
    Case(
        "target_column_not_there",
        ("dataset=file", "dataset.path={data}/ok.csv", "dataset.target=price"),
        "dataset.target",
        "price",
    ),
    file_case("nan_in_csv", "nan.csv", "dataset.path", "{data}/nan.csv"),
    file_case("inf_in_csv", "inf.csv", "dataset.path", "{data}/inf.csv"),
    file_case("nan_in_npz", "nan.npz", "dataset.path", "{data}/nan.npz"),
    file_case(
        "non_integer_class_labels",
        "fractional.csv",
        "dataset.target",
        "y",
        "dataset.task=classification",
    ),
    Case(
        "regression_data_classification_head",
        ("dataset=diabetes", "dataset.task=classification"),
        "dataset.task",
        "classification",
    ),
    Case("unknown_key", ("trainer.epochs=5",), "trainer.epochs", "trainer.epochs"),
    Case("unknown_model_key", ("model.hiddn=[3]",), "model.hiddn", "model.hiddn"),
    Case("unknown_dataset_name", ("dataset.name=nope",), "dataset.name", "nope"),
    Case("negative_lambda_without_a_penalty", ("penalty.lam=-1",), "penalty.lam", "-1"),
    # Hydra's `+` adds a key past the schema: ffn must still refuse it, not ignore it
    Case("unknown_key_added_with_plus", ("+trainer.max_epoch=3",), "trainer.max_epoch", "3"),
    Case(
        "not_a_checkpoint",
        ("trainer.resume=true",),
        "trainer.resume",
        "{run}/checkpoints/last.pt",
    ),
    # Found while writing this table
    Case(
        "step_schedule_step_size_zero",
        ("schedule=step", "schedule.step_size=0"),
        "schedule.step_size",
        "0",
    ),
    Case(
        "exponential_schedule_negative_gamma",
        ("schedule=exponential", "schedule.gamma=-1"),
        "schedule.gamma",
        "-1",
    ),
    Case(
        "adam_betas_of_one_number",
        ("+optimizer.betas=[0.9]",),  # torch's default betas are not in adam.yaml: + adds them
        "optimizer.betas",
        "[0.9]",
    ),
    # Data that parses but would make training meaningless (issue 12)
    file_case("repeated_header", "repeated.csv", "dataset.path", "each column once"),
    file_case("no_header_row", "numbers.csv", "dataset.path", "header row"),
    file_case("feature_overflows", "overflow.csv", "dataset.path", "overflows"),
    file_case("labels_that_are_no_classes", "unique.csv", "dataset.target", "distinct values"),
    # Values that make no sense (issue 12)
    Case("momentum_one", ("optimizer=momentum", "optimizer.momentum=1"), "optimizer.momentum", "1"),
    Case(
        "dampening_above_one",
        ("optimizer=sgd", "+optimizer.dampening=1.5"),
        "optimizer.dampening",
        "1.5",
    ),
    Case(
        "cosine_eta_min_above_lr",
        ("schedule=cosine", "+schedule.eta_min=1"),
        "schedule.eta_min",
        "1",
    ),
    Case(
        "num_threads_far_beyond_cores",
        ("trainer.num_threads=100000",),
        "trainer.num_threads",
        "100000",
    ),
    # Sizes that cannot fit in memory: refused with the estimate, before any allocation
    Case("hidden_too_big_for_memory", ("model.hidden=[100000000]",), "model.hidden", "need about"),
    Case(
        "n_samples_too_big_for_memory",
        ("dataset=regression", "dataset.n_samples=10000000000"),
        "dataset.n_samples",
        "need about",
    ),
    Case("hidden_1e20", ("model.hidden=[1e20]",), "model.hidden", "1e+20"),
    Case(
        "run_dir_is_a_file",
        (),
        "hydra.run.dir",
        "{run}",
    ),
]


def write_data(folder: Path) -> None:
    """The files the file cases read: one good CSV and one per way of being bad."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    rows = [(f"{a:.3f}", f"{b:.3f}", str(i % 2)) for i, (a, b) in enumerate(x)]

    def csv(name: str, body: list[tuple[str, str, str]]) -> None:
        lines = ["a,b,y", *(",".join(row) for row in body)]
        (folder / name).write_text("\n".join(lines) + "\n")

    csv("ok.csv", rows)
    csv("text.csv", [*rows[:5], ("1.0", "blue", "1"), *rows[5:]])
    csv("nan.csv", [*rows[:5], ("1.0", "nan", "1"), *rows[5:]])
    csv("inf.csv", [*rows[:5], ("inf", "1.0", "0"), *rows[5:]])
    csv("fractional.csv", [(a, b, f"{int(y) + 0.5}") for a, b, y in rows])
    (folder / "repeated.csv").write_text("a,a,y\n" + "\n".join(",".join(r) for r in rows) + "\n")
    (folder / "numbers.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    csv("overflow.csv", [(a, "1e300" if i == 3 else b, y) for i, (a, b, y) in enumerate(rows)])
    csv("unique.csv", [(a, b, f"c{i}") for i, (a, b, _) in enumerate(rows)])
    x[3, 1] = np.nan
    np.savez(folder / "nan.npz", x=x, y=np.arange(40) % 2)


PREPARED = ("not_a_checkpoint", "run_dir_is_a_file")  # cases that find something at the folder


def prepare_run_folder(case: Case, run: Path) -> None:
    """What a case finds at hydra.run.dir: usually nothing."""
    if case.name == "not_a_checkpoint":  # a folder whose checkpoint is random bytes
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.pt").write_bytes(os.urandom(2048))
    elif case.name == "run_dir_is_a_file":
        run.write_text("not a folder\n")


@dataclass
class Result:
    case: Case
    data: Path
    run: Path  # the case's hydra.run.dir
    proc: subprocess.CompletedProcess[str]

    def text(self, template: str) -> str:
        return template.format(data=self.data, run=self.run)


FRESH = ("unknown_key", "lr_zero", "nan_in_csv")  # run as plain `python run.py`


def case_arguments(base: Path, case: Case) -> list[str]:
    """The case's command line, its folders made and prepared."""
    run = base / case.name / "run"
    run.parent.mkdir(parents=True)
    prepare_run_folder(case, run)
    overrides = [o.format(data=base / "data", run=run) for o in case.overrides]
    return [*QUICK, *overrides, f"hydra.run.dir={run}"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    base = tmp_path_factory.mktemp("bad_input")
    write_data(base / "data")
    todo = [case for case in CASES if case.skip is None]
    fresh = [case for case in todo if case.name in FRESH]
    forked = [case for case in todo if case.name not in FRESH]
    with ThreadPoolExecutor(1) as pool:  # the fresh processes, one at a time, beside the forked
        plain = pool.map(lambda case: run_ffn(*case_arguments(base, case)), fresh)
        procs = run_ffn_forked([case_arguments(base, case) for case in forked])
        procs += list(plain)
    return {
        case.name: Result(case, base / "data", base / case.name / "run", proc)
        for case, proc in zip(forked + fresh, procs, strict=True)
    }


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 20
    assert len({case.name for case in CASES}) == len(CASES)
    assert set(FRESH) <= {case.name for case in CASES}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            case,
            id=case.name,
            marks=[
                *([pytest.mark.xfail(reason=case.bug, strict=True)] if case.bug else []),
                *([pytest.mark.skip(reason=case.skip)] if case.skip else []),
            ],
        )
        for case in CASES
    ],
)
def test_bad_input_is_refused_in_one_line(case: Case, results: dict[str, Result]) -> None:
    result = results[case.name]
    proc = result.proc
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("ffn: error:"), line
    assert case.key in line
    assert result.text(case.value) in line
    # No run folder left looking like a successful run
    run = result.run
    metrics = run / "metrics.json"
    if metrics.exists():
        assert json.loads(metrics.read_text())["status"] != "completed"
    if case.name != "not_a_checkpoint":
        assert not (run / "checkpoints").exists()
    assert not event_files(run)
    if case.name not in PREPARED:  # a refused command leaves no run folder at all
        assert not run.exists(), sorted(p.name for p in run.iterdir())


@pytest.mark.parametrize("override", ["optimizer.lr=0", "trainer.batch_size=0"])
def test_a_value_that_needs_no_torch_is_refused_before_torch_is_imported(
    override: str, tmp_path: Path
) -> None:
    """config.check_before_torch: the job refuses these before it imports torch (seconds)."""
    proc = run_python("-X", "importtime", "run.py", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("ffn: error:")
    imported = [line.rpartition("|")[2].strip() for line in proc.stderr.splitlines()]
    assert "torch" not in imported
    assert "ffn.job" in imported  # the job ran its checks
