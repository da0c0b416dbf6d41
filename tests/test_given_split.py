"""Given splits (dataset.test_path, dataset.val_path): the files' rows are the parts, as given.

No row moves between the files, the standardisation comes from the train file alone, and a run's
test metrics are those of exactly the test file's rows, recomputed here from its checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, run_ffn
from sklearn import datasets as skdatasets

from ffn import ConfigError, FeedForward
from ffn.data import DatasetConfig, load_dataset
from ffn.metrics import evaluate

HEADER = ["a", "b", "c", "d", "species"]


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows([*map(repr, row.tolist()), int(t)] for row, t in zip(x, y, strict=True))
    return path


@pytest.fixture(scope="module")
def iris_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Iris cut into train (rows 0..99 of a fixed shuffle), val (100..119), test (120..149)."""
    folder = tmp_path_factory.mktemp("given")
    x, y = skdatasets.load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    cuts = {"train": slice(0, 100), "val": slice(100, 120), "test": slice(120, 150)}
    paths = {k: write_csv(folder / f"{k}.csv", x[s], y[s]) for k, s in cuts.items()}
    np.savez(folder / "train.npz", x=x[cuts["train"]], y=y[cuts["train"]])
    np.savez(folder / "test.npz", x=x[cuts["test"]], y=y[cuts["test"]])
    parts = {k: (x[s], y[s]) for k, s in cuts.items()}
    return {"folder": folder, "paths": paths, "parts": parts}


def standardised(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    return (x - train.mean(0)) / train.std(0)


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_test_file_rows_are_the_test_part_in_order(iris_files, suffix: str) -> None:
    folder, parts = iris_files["folder"], iris_files["parts"]
    cfg = DatasetConfig(
        name="file",
        path=str(folder / f"train{suffix}"),
        test_path=str(folder / f"test{suffix}"),
        target="species" if suffix == ".csv" else None,
        val_fraction=0.0,
    )
    d = load_dataset(cfg, seed=5, dtype=torch.float64)
    x_train, y_train = parts["train"]
    x_test, y_test = parts["test"]
    assert (d.n_train, d.n_val, d.n_test) == (100, 0, 30)
    np.testing.assert_allclose(d.x_train.numpy(), standardised(x_train, x_train), atol=1e-12)
    np.testing.assert_allclose(d.x_test.numpy(), standardised(x_test, x_train), atol=1e-12)
    assert d.y_test.tolist() == y_test.tolist() and d.y_train.tolist() == y_train.tolist()
    other = load_dataset(cfg, seed=6, dtype=torch.float64)  # the run's seed moves no row
    assert torch.equal(other.x_test, d.x_test) and torch.equal(other.x_train, d.x_train)


def test_val_file_or_val_fraction_of_the_train_file(iris_files) -> None:
    paths, parts = iris_files["paths"], iris_files["parts"]
    given = DatasetConfig(
        name="file",
        path=str(paths["train"]),
        val_path=str(paths["val"]),
        test_path=str(paths["test"]),
        target="species",
    )
    d = load_dataset(given, seed=0, dtype=torch.float64)
    assert (d.n_train, d.n_val, d.n_test) == (100, 20, 30)
    x_train = parts["train"][0]
    np.testing.assert_allclose(d.x_val.numpy(), standardised(parts["val"][0], x_train), atol=1e-12)
    split = DatasetConfig(
        name="file", path=str(paths["train"]), test_path=str(paths["test"]), target="species"
    )
    d = load_dataset(split, seed=0, dtype=torch.float64)  # val_fraction 0.15 of the train file
    assert (d.n_train, d.n_val, d.n_test) == (85, 15, 30)
    assert d.y_test.tolist() == parts["test"][1].tolist()  # the test file is untouched


def test_bad_given_files_name_their_key(iris_files, tmp_path: Path) -> None:
    paths = iris_files["paths"]
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("a,species\n1.0,0\n2.0,1\n")
    cases = {
        "dataset.test_path": dict(test_path=str(narrow)),
        "dataset.val_path": dict(val_path=str(paths["val"])),  # without a test_path
    }
    for key, extra in cases.items():
        with pytest.raises(ConfigError) as error:
            load_dataset(
                DatasetConfig(name="file", path=str(paths["train"]), target="species", **extra),
                seed=0,
            )
        assert error.value.key == key
    with pytest.raises(ConfigError) as error:
        load_dataset(DatasetConfig(name="iris", test_path=str(narrow)), seed=0)
    assert error.value.key == "dataset.test_path"


@pytest.mark.slow
def test_run_reports_metrics_of_exactly_the_test_file(iris_files, tmp_path: Path) -> None:
    paths, parts = iris_files["paths"], iris_files["parts"]
    run_dir = tmp_path / "run"
    proc = run_ffn(
        *TINY,
        "dataset=file",
        f"dataset.path={paths['train']}",
        f"dataset.test_path={paths['test']}",
        "dataset.target=species",
        "dataset.val_fraction=0",
        "optimized_metric=test/loss",
        "model.hidden=[8]",
        "trainer.dtype=float64",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    model = FeedForward(4, [8], 3, dtype=torch.float64)
    model.load_state_dict(state)
    (x_train, _), (x_test, y_test) = parts["train"], parts["test"]
    x = torch.as_tensor(standardised(x_test, x_train))
    values, _, _ = evaluate(model, x, torch.as_tensor(y_test), "classification")
    assert metrics["test/loss"] == pytest.approx(float(values["loss"]), rel=1e-12)
    assert metrics["test/accuracy"] == pytest.approx(float(values["accuracy"]), rel=1e-12)
    assert round(metrics["test/accuracy"] * 30, 9) % 1 == 0  # a count out of the file's 30 rows
