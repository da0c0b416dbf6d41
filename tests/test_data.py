"""ffn.data on real data: every dataset, split and scaling, the user's files and their errors."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn import datasets as skdatasets
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from ffn.data import DATASETS, Dataset, DatasetConfig, load_dataset
from ffn.data.split import split_indices
from ffn.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"

# Small enough to keep the file quick; n_features=5 lets every regression function run
SMALL = {
    "mnist1d": {"n_samples": 200},
    "regression": {"n_samples": 200, "n_features": 5, "function": "friedman"},
    "moons": {"n_samples": 200},
    "spirals": {"n_samples": 200, "n_classes": 4},
    "blobs": {"n_samples": 200, "n_features": 3},
}


def small(name: str, **overrides: object) -> DatasetConfig:
    """A quick config for `name`."""
    return DatasetConfig(name=name, **{**SMALL.get(name, {}), **overrides})


def parts(d: Dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) of train, val, test."""
    return [(d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)]


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """A csv file with a header row."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def good_rows(n: int = 30) -> list[list[object]]:
    """Two numeric features and a 3-class integer label, 10 of each class."""
    return [[i * 0.1, (i % 7) - 3.0, i % 3] for i in range(n)]


# --- every dataset ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [  # mnist1d takes seconds to generate: with the slow tests
        pytest.param(n, marks=[pytest.mark.slow] if n == "mnist1d" else [])
        for n in sorted(set(DATASETS) - {"file"})
    ],
)
def test_every_dataset_loads_with_right_shapes_dtypes_and_labels(name: str) -> None:
    d = load_dataset(small(name), seed=0)
    assert d.name == name and d.task in ("classification", "regression")
    n_in = d.in_features
    for x, y in parts(d):
        assert x.dtype == torch.float32 and x.device.type == "cpu"
        assert x.ndim == 2 and x.shape[1] == n_in and len(x) == len(y) > 0
        assert torch.isfinite(x).all()
        if d.task == "classification":
            assert y.dtype == torch.int64 and y.shape == (len(x),)
            assert int(y.min()) >= 0 and int(y.max()) < d.n_classes
        else:
            assert y.dtype == torch.float32 and y.shape == (len(x), d.out_features)
    if d.task == "classification":
        assert d.out_features == d.n_classes >= 2
        assert set(d.y_train.tolist()) == set(range(d.n_classes))  # labels are exactly 0..C-1
    else:
        assert d.n_classes is None and d.out_features == d.y_train.shape[1] == 1
    assert "\n" not in repr(d) and name in repr(d)


def test_expected_sizes_and_tasks_of_the_shipped_sets() -> None:
    expected = {
        "digits": (1797, 64, 10),
        "iris": (150, 4, 3),
        "wine": (178, 13, 3),
        "breast_cancer": (569, 30, 2),
        "diabetes": (442, 10, None),
    }
    for name, (n, d_in, n_classes) in expected.items():
        d = load_dataset(DatasetConfig(name=name), seed=0)
        assert d.n_train + d.n_val + d.n_test == n
        assert d.in_features == d_in and d.n_classes == n_classes
        assert abs(d.n_test - 0.2 * n) <= 1 and abs(d.n_val - 0.15 * n) <= 1


def test_mnist1d_respects_n_samples_and_has_ten_digits() -> None:
    d = load_dataset(DatasetConfig(name="mnist1d", n_samples=300), seed=1)
    assert d.n_train + d.n_val + d.n_test == 300
    assert d.in_features == 40 and d.n_classes == 10


def test_mnist1d_leaves_the_global_rngs_alone() -> None:
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    load_dataset(DatasetConfig(name="mnist1d", n_samples=100), seed=5)
    assert np.array_equal(np.random.random(3), expected)


def test_missing_mnist1d_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # makes `import mnist1d...` fail
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ConfigError, match=r'dataset\.name.*pip install -e "\.\[data\]"'):
        load_dataset(DatasetConfig(name="mnist1d", n_samples=100), seed=0)


@pytest.mark.parametrize("function", ["linear", "quadratic", "sin", "abs", "friedman"])
def test_every_regression_function_runs(function: str) -> None:
    cfg = small("regression", function=function, noise=0.0, standardize=False)
    d = load_dataset(cfg, seed=0, dtype=torch.float64)
    assert d.y_train.shape == (d.n_train, 1) and torch.isfinite(d.y_train).all()


@pytest.mark.parametrize("n, noise, seed", [(200, 0.2, 0), (201, 0.0, 7), (21, 1.5, 2**31)])
def test_moons_are_sklearns_make_moons_without_importing_it(n, noise, seed) -> None:
    from ffn.data.synthetic import moons

    mine = moons(small("moons", n_samples=n, noise=noise), seed)
    x, y = skdatasets.make_moons(n_samples=n, noise=noise, random_state=seed)
    np.testing.assert_array_equal(mine.x, x)
    np.testing.assert_array_equal(mine.y, y)


def test_noise_free_sin_regression_is_f_star() -> None:
    cfg = DatasetConfig(name="regression", n_samples=100, noise=0.0, standardize=False)
    d = load_dataset(cfg, seed=3, dtype=torch.float64)
    assert d.x_train.abs().max() <= 1.0
    torch.testing.assert_close(d.y_train[:, 0], torch.sin(torch.pi * d.x_train[:, 0]))


def test_dtype_argument_is_respected_and_labels_stay_int64() -> None:
    d = load_dataset(DatasetConfig(name="iris"), seed=0, dtype=torch.float64, device="cpu")
    assert d.x_train.dtype == torch.float64 and d.y_train.dtype == torch.int64
    r = load_dataset(DatasetConfig(name="diabetes"), seed=0, dtype=torch.float64)
    assert r.y_train.dtype == torch.float64 and r.y_mean.dtype == torch.float64


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_land_on_the_requested_device() -> None:
    d = load_dataset(DatasetConfig(name="iris"), seed=0, device="cuda")
    assert all(x.is_cuda and y.is_cuda for x, y in parts(d))


# --- split and standardisation ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "iris"])
def test_stratified_split_keeps_every_class_in_every_part(name: str) -> None:
    d = load_dataset(DatasetConfig(name=name), seed=4)
    whole = torch.cat([d.y_train, d.y_val, d.y_test]).bincount() / (d.n_train + d.n_val + d.n_test)
    for _, y in parts(d):
        counts = y.bincount(minlength=d.n_classes)
        assert (counts > 0).all()
        assert (counts / len(y) - whole).abs().max() < 0.05  # proportions kept


def test_parts_are_disjoint_and_cover_the_data() -> None:
    cfg = DatasetConfig(name="regression", n_samples=200, n_features=2, standardize=False)
    d = load_dataset(cfg, seed=0, dtype=torch.float64)
    rows = torch.cat([d.x_train, d.x_val, d.x_test])
    assert len(rows) == 200 and len(torch.unique(rows, dim=0)) == 200


def test_standardisation_uses_the_train_part_only() -> None:
    d = load_dataset(DatasetConfig(name="wine"), seed=0, dtype=torch.float64)
    torch.testing.assert_close(d.x_train.mean(0), torch.zeros(13, dtype=torch.float64))
    torch.testing.assert_close(
        d.x_train.std(0, unbiased=False), torch.ones(13, dtype=torch.float64)
    )
    assert d.x_val.mean(0).abs().max() > 1e-3  # val statistics were not used

    raw = load_dataset(DatasetConfig(name="wine", standardize=False), seed=0, dtype=torch.float64)
    mean, std = raw.x_train.mean(0), raw.x_train.std(0, unbiased=False)
    torch.testing.assert_close(d.x_val, (raw.x_val - mean) / std)
    torch.testing.assert_close(d.x_test, (raw.x_test - mean) / std)


def test_constant_columns_are_not_blown_up() -> None:
    d = load_dataset(DatasetConfig(name="digits"), seed=0, dtype=torch.float64)
    raw = load_dataset(DatasetConfig(name="digits", standardize=False), seed=0)
    flat = raw.x_train.std(0) == 0  # digits has always-blank pixels
    assert flat.any()
    assert torch.isfinite(d.x_val).all() and torch.isfinite(d.x_test).all()
    assert (d.x_train[:, flat] == 0).all()


def test_regression_target_is_standardised_on_train_and_recoverable() -> None:
    d = load_dataset(DatasetConfig(name="diabetes"), seed=2, dtype=torch.float64)
    raw = load_dataset(
        DatasetConfig(name="diabetes", standardize=False), seed=2, dtype=torch.float64
    )
    assert abs(float(d.y_train.mean())) < 1e-10
    assert abs(float(d.y_train.std(unbiased=False)) - 1.0) < 1e-10
    assert raw.y_mean is None and raw.y_std is None and d.y_mean.shape == (1,)
    torch.testing.assert_close(d.y_test * d.y_std + d.y_mean, raw.y_test)
    raw_x = skdatasets.load_diabetes(scaled=False).data  # raw features, not sklearn's scaled ones
    assert float(raw.x_train.max()) > 1.0 and raw_x.max() > 1.0


def test_fractions_set_the_part_sizes() -> None:
    cfg = DatasetConfig(name="moons", n_samples=400, val_fraction=0.25, test_fraction=0.1)
    d = load_dataset(cfg, seed=0)
    assert (d.n_train, d.n_val, d.n_test) == (260, 100, 40)


SKLEARN_SPLIT = {"split_seed": 0, "stratify": False, "test_fraction": 0.25, "val_fraction": 0}
LOADERS = {"digits": skdatasets.load_digits, "breast_cancer": skdatasets.load_breast_cancer}


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_split_seed_is_sklearns_train_test_split_exactly(name: str) -> None:
    # train_test_split(X, y, test_size=0.25, random_state=0): the protocol
    x, y = LOADERS[name](return_X_y=True)
    train, test = train_test_split(np.arange(len(x)), test_size=0.25, random_state=0)
    for seed in (0, 7):  # the run's seed does not move a given split_seed
        cfg = DatasetConfig(name=name, standardize=False, **SKLEARN_SPLIT)
        d = load_dataset(cfg, seed=seed, dtype=torch.float64)
        assert d.n_val == 0 and d.x_val.shape == (0, x.shape[1])
        for rows, xs, ys in ((train, d.x_train, d.y_train), (test, d.x_test, d.y_test)):
            rows = np.sort(rows)  # the parts keep the rows in the data's order
            assert torch.equal(xs, torch.as_tensor(x[rows])) and torch.equal(
                ys, torch.as_tensor(y[rows])
            )

    # standardised on the train part, as StandardScaler fitted on sklearn's train rows
    scaled = load_dataset(DatasetConfig(name=name, **SKLEARN_SPLIT), seed=0, dtype=torch.float64)
    scaler = StandardScaler().fit(x[np.sort(train)])
    np.testing.assert_allclose(
        scaled.x_test.numpy(), scaler.transform(x[np.sort(test)]), rtol=1e-10, atol=1e-10
    )


def test_split_seed_stratified_is_sklearns_stratified_test_part() -> None:
    x, y = skdatasets.load_iris(return_X_y=True)
    _, test = train_test_split(np.arange(len(x)), test_size=0.2, random_state=3, stratify=y)
    cfg = DatasetConfig(name="iris", split_seed=3, standardize=False)  # stratify by default
    d = load_dataset(cfg, seed=0, dtype=torch.float64)
    assert torch.equal(d.x_test, torch.as_tensor(x[np.sort(test)]))
    assert d.n_val == round(0.15 * 150) and d.n_train + d.n_val + d.n_test == 150


def test_stratify_false_is_a_plain_shuffle_split() -> None:
    # 10 of class 1 among 100 rows: stratified, each part holds 10%; not stratified, it may not
    y = (np.arange(100) % 10 == 0).astype(int)
    seen = set()
    for seed in range(20):
        cfg = DatasetConfig(split_seed=seed, stratify=False, test_fraction=0.2, val_fraction=0)
        parts_ = split_indices(y, 100, cfg, "dataset.n_samples", seed)
        _, test = train_test_split(np.arange(100), test_size=0.2, random_state=seed)
        assert np.array_equal(parts_.test, np.sort(test))
        seen.add(int(y[parts_.test].sum()))
        strat = split_indices(y, 100, DatasetConfig(test_fraction=0.2), "dataset.n_samples", seed)
        assert y[strat.test].sum() == 2
    assert len(seen) > 1


@pytest.mark.parametrize(("name", "n"), [("digits", 1797), ("moons", 200), ("diabetes", 442)])
def test_val_fraction_zero_leaves_no_val_part(name: str, n: int) -> None:
    d = load_dataset(small(name, val_fraction=0.0), seed=1)
    assert d.n_val == 0 and d.x_val.shape == (0, d.in_features) and len(d.y_val) == 0
    assert d.n_test == round(0.2 * n) and d.n_train == n - d.n_test


@pytest.mark.slow
def test_mnist1d_at_the_packages_sizes() -> None:
    cfg = DatasetConfig(name="mnist1d", n_samples=5000, test_fraction=0.2, val_fraction=0)
    d = load_dataset(cfg, seed=0)
    assert (d.n_train, d.n_val, d.n_test) == (4000, 0, 1000)


# --- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "moons", "spirals", "blobs", "regression", "mnist1d"])
def test_same_seed_same_bits_other_seed_other_data(name: str) -> None:
    a, b = load_dataset(small(name), seed=7), load_dataset(small(name), seed=7)
    for (xa, ya), (xb, yb) in zip(parts(a), parts(b), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = load_dataset(small(name), seed=8)
    assert not torch.equal(a.x_train, c.x_train)


# --- the user's files ---------------------------------------------------------------------------


def test_csv_round_trip_equals_the_builtin_set(tmp_path: Path) -> None:
    iris = skdatasets.load_iris()
    header = ["sepal_l", "sepal_w", "petal_l", "petal_w", "species"]
    rows = [[*map(repr, x.tolist()), int(t)] for x, t in zip(iris.data, iris.target, strict=True)]
    path = write_csv(tmp_path / "iris.csv", header, rows)
    from_file = load_dataset(DatasetConfig(name="file", path=str(path), target="species"), seed=3)
    builtin = load_dataset(DatasetConfig(name="iris"), seed=3)
    assert from_file.task == "classification" and from_file.n_classes == 3  # inferred
    for (xa, ya), (xb, yb) in zip(parts(from_file), parts(builtin), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_npz_round_trip_equals_the_builtin_set(tmp_path: Path) -> None:
    diabetes = skdatasets.load_diabetes(scaled=False)
    path = tmp_path / "diabetes.npz"
    np.savez(path, x=diabetes.data, y=diabetes.target)
    from_file = load_dataset(DatasetConfig(name="file", path=str(path)), seed=1)
    builtin = load_dataset(DatasetConfig(name="diabetes"), seed=1)
    assert from_file.task == "regression"  # integer-valued, but far more than 20 values
    for (xa, ya), (xb, yb) in zip(parts(from_file), parts(builtin), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_csv_text_labels_become_sorted_codes(tmp_path: Path) -> None:
    names = ["setosa", "versicolor", "virginica"]
    rows = [[i * 0.5, i % 4, names[i % 3]] for i in range(30)]
    path = write_csv(tmp_path / "text.csv", ["a", "b", "kind"], rows)
    d = load_dataset(
        DatasetConfig(name="file", path=str(path), target="kind", standardize=False),
        seed=0,
        dtype=torch.float64,
    )
    assert d.task == "classification" and d.n_classes == 3
    for x, y in parts(d):
        codes = (torch.round(x[:, 0] / 0.5).long()) % 3  # row i has label i % 3
        assert torch.equal(y, codes)


def test_npz_named_target_multi_output_and_explicit_task(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "multi.npz"
    np.savez(path, x=rng.normal(size=(40, 3)), targets=rng.normal(size=(40, 2)))
    d = load_dataset(DatasetConfig(name="file", path=str(path), target="targets"), seed=0)
    assert d.task == "regression" and d.out_features == 2 and d.y_train.shape[1] == 2

    small_ints = tmp_path / "counts.csv"
    write_csv(small_ints, ["a", "b", "y"], good_rows())
    as_reg = DatasetConfig(name="file", path=str(small_ints), target="y", task="regression")
    assert load_dataset(as_reg, seed=0).task == "regression"
    assert load_dataset(
        DatasetConfig(name="file", path=str(small_ints), target="y"), seed=0
    ).task == ("classification")


# --- errors -------------------------------------------------------------------------------------


def raises(key: str, cfg: DatasetConfig | dict, **kwargs: object) -> str:
    """load_dataset's ConfigError message, checked to be one line naming `key`."""
    kwargs.setdefault("seed", 0)
    with pytest.raises(ConfigError) as info:
        load_dataset(cfg, **kwargs)
    message = str(info.value)
    assert info.value.key == key and key in message and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("key", "cfg"),
    [
        ("dataset.name", DatasetConfig(name="mnist")),
        ("dataset.val_fraction", DatasetConfig(val_fraction=-0.1)),
        ("dataset.split_seed", DatasetConfig(split_seed=-1)),
        ("dataset.split_seed", DatasetConfig(split_seed=2**32)),
        ("dataset.split_seed", DatasetConfig(split_seed=0.5)),  # type: ignore[arg-type]
        ("dataset.stratify", DatasetConfig(stratify="no")),  # type: ignore[arg-type]
        ("dataset.val_fraction", DatasetConfig(val_fraction=float("nan"))),
        ("dataset.test_fraction", DatasetConfig(test_fraction=1.2)),
        ("dataset.test_fraction", DatasetConfig(test_fraction=-0.1)),
        ("dataset.val_fraction", DatasetConfig(val_fraction=0.5, test_fraction=0.5)),
        ("dataset.val_fraction", DatasetConfig(val_fraction="0.1")),  # type: ignore[arg-type]
        ("dataset.standardize", DatasetConfig(standardize=1)),  # type: ignore[arg-type]
        ("dataset.n_samples", DatasetConfig(name="moons", n_samples=5)),
        ("dataset.n_samples", DatasetConfig(name="mnist1d", n_samples=50)),
        ("dataset.n_samples", DatasetConfig(name="blobs", n_samples=20, n_classes=10)),
        ("dataset.noise", DatasetConfig(name="regression", noise=-0.1)),
        ("dataset.noise", DatasetConfig(name="moons", noise=float("inf"))),
        ("dataset.function", DatasetConfig(name="regression", function="cubic")),
        ("dataset.n_features", DatasetConfig(name="regression", function="friedman")),
        ("dataset.n_features", DatasetConfig(name="blobs", n_features=0)),
        ("dataset.n_classes", DatasetConfig(name="spirals", n_classes=1)),
        ("dataset.task", DatasetConfig(task="clustering")),
        ("dataset.task", DatasetConfig(name="digits", task="regression")),
        ("dataset.path", DatasetConfig(name="digits", path="data.csv")),
        ("dataset.val_fraction", DatasetConfig(name="iris", val_fraction=0.01)),
        ("dataset.test_fraction", DatasetConfig(name="iris", test_fraction=0.01)),
        ("dataset.val_fraction", DatasetConfig(name="iris", val_fraction=0.5, test_fraction=0.49)),
        ("dataset.path", DatasetConfig(name="file")),
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(key: str, cfg: DatasetConfig) -> None:
    raises(key, cfg)


def test_unknown_name_lists_the_choices() -> None:
    message = raises("dataset.name", DatasetConfig(name="mnist"))
    assert ", ".join(sorted(DATASETS)) in message


def test_bad_call_arguments_are_config_errors() -> None:
    raises("seed", DatasetConfig(name="iris"), seed=-1)
    raises("seed", DatasetConfig(name="iris"), seed=1.5)
    raises("dtype", DatasetConfig(name="iris"), dtype=torch.int64)
    raises("device", DatasetConfig(name="iris"), device="gpu0")
    raises("dataset.n_layers", {"name": "iris", "n_layers": 3})


def test_a_mapping_or_dictconfig_is_accepted() -> None:
    d = load_dataset({"name": "iris", "test_fraction": 0.3}, seed=0)
    assert d.n_test == 45
    structured = OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"name": "wine"})
    assert load_dataset(structured, seed=0).name == "wine"


def file_cfg(path: Path, target: str | None = "y", **kw: object) -> DatasetConfig:
    """name=file on `path`."""
    return DatasetConfig(name="file", path=str(path), target=target, **kw)


def test_file_path_errors(tmp_path: Path) -> None:
    assert "no such file" in raises("dataset.path", file_cfg(tmp_path / "missing.csv"))
    (tmp_path / "data.txt").write_text("a,y\n1,2\n")
    assert ".csv or .npz" in raises("dataset.path", file_cfg(tmp_path / "data.txt"))
    (tmp_path / "dir.csv").mkdir()
    raises("dataset.path", file_cfg(tmp_path / "dir.csv"))


def test_csv_target_errors_list_the_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "b", "y"], good_rows())
    assert "a, b, y" in raises("dataset.target", file_cfg(path, target="label"))
    assert "a, b, y" in raises("dataset.target", file_cfg(path, target=None))


@pytest.mark.parametrize(
    ("rows", "key", "words"),
    [
        ([[1.0, "red", 0], *good_rows()], "dataset.path", "'b' holds text 'red'"),
        ([[float("nan"), 1.0, 0], *good_rows()], "dataset.path", "nan"),
        ([[1.0, 2.0, "inf"], *good_rows()], "dataset.path", "inf"),
        ([[1.0, "", 0], *good_rows()], "dataset.path", "empty"),
        ([[1.0, 2.0], *good_rows()], "dataset.path", "line 2 has 2"),
        ([[0.5, 1.0, 1.5], *good_rows()], "dataset.target", "integer or text class labels"),
        ([[0.5, 1.0, "n/a"], *good_rows()], "dataset.target", "'n/a' on line 2"),
        (good_rows(8), "dataset.path", "at least"),  # too few to split into 3 x 3 classes
        ([[0.5, 1.0, 7], *good_rows()], "dataset.path", "class 7 has 1"),  # can't stratify
        ([[i, i, 1] for i in range(30)], "dataset.target", "at least 2 distinct classes"),
        ([], "dataset.path", "data rows"),
    ],
)
def test_bad_csv_content_is_a_config_error(
    tmp_path: Path, rows: list[list[object]], key: str, words: str
) -> None:
    path = write_csv(tmp_path / "bad.csv", ["a", "b", "y"], rows)
    task = "classification" if words.startswith("integer") else None
    assert words in raises(key, file_cfg(path, task=task))


def test_csv_task_and_encoding_errors(tmp_path: Path) -> None:
    rows = [[i, i % 2, ["cat", "dog"][i % 2]] for i in range(20)]
    text = write_csv(tmp_path / "text.csv", ["a", "b", "y"], rows)
    assert "holds text" in raises("dataset.task", file_cfg(text, task="regression"))
    (tmp_path / "empty.csv").write_text("")
    assert "empty" in raises("dataset.path", file_cfg(tmp_path / "empty.csv"))
    (tmp_path / "latin1.csv").write_bytes("a,y\ncaf\xe9,1\n".encode("latin-1"))
    assert "UTF-8" in raises("dataset.path", file_cfg(tmp_path / "latin1.csv"))
    only_target = write_csv(tmp_path / "only.csv", ["y"], [[i % 2] for i in range(20)])
    assert "feature column" in raises("dataset.path", file_cfg(only_target))


def test_bad_npz_is_a_config_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    assert "readable .npz" in raises("dataset.path", file_cfg(garbage, target=None))
    no_x = tmp_path / "no_x.npz"
    np.savez(no_x, features=np.zeros((10, 2)), y=np.zeros(10))
    assert "features" in raises("dataset.path", file_cfg(no_x, target=None))
    xy = tmp_path / "xy.npz"
    np.savez(xy, x=np.zeros((10, 2)), y=np.zeros(10))
    assert "x, y" in raises("dataset.target", file_cfg(xy, target="label"))
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, x=np.zeros((10, 2)), y=np.zeros(9))
    assert "10, 9" in raises("dataset.path", file_cfg(uneven, target=None))
    nan_x = tmp_path / "nan.npz"
    np.savez(nan_x, x=np.array([[np.nan, 1.0]] * 10), y=np.arange(10.0))
    assert "nan" in raises("dataset.path", file_cfg(nan_x, target=None))
    text_x = tmp_path / "text_x.npz"
    np.savez(text_x, x=np.array([["a"]] * 10), y=np.arange(10.0))
    assert "numeric x" in raises("dataset.path", file_cfg(text_x, target=None))
    single = tmp_path / "single.npz"
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(single)
    raises("dataset.path", file_cfg(single, target=None))


# --- conf/dataset -------------------------------------------------------------------------------


def test_conf_has_exactly_one_file_per_dataset() -> None:
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(DATASETS)
    assert not [p for p in CONF.iterdir() if p.suffix != ".yaml"]


@pytest.mark.parametrize(
    "path",
    [  # mnist1d's 5000 samples take seconds to generate: with the slow tests
        pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem == "mnist1d" else [])
        for p in sorted(CONF.glob("*.yaml"))
    ],
)
def test_every_conf_file_merges_onto_the_schema_and_loads(path: Path, tmp_path: Path) -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(path))
    assert cfg.name == path.stem
    if cfg.name == "file":  # shipped without a path: loading says which key to set
        raises("dataset.path", OmegaConf.to_object(cfg))
        cfg.path = str(write_csv(tmp_path / "d.csv", ["a", "b", "y"], good_rows()))
        cfg.target = "y"
    d = load_dataset(OmegaConf.to_object(cfg), seed=0)
    assert d.name == path.stem and d.n_train > d.n_test > 0
