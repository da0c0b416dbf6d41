"""ffn.sklearn: scikit-learn's own estimator checks, its model-selection tools, and the
penalty conventions against scikit-learn's MLP (lam = alpha / (2 n) and alpha / n).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes, load_digits, load_iris, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from ffn import functions
from ffn.optimizers import OPTIMIZERS
from ffn.sklearn import FFNClassifier, FFNRegressor

CONF = Path(__file__).resolve().parents[1] / "conf"

# Small and quick: the checks fit these dozens of times. Minibatches of 32 exercise the
# shuffled-minibatch path; the classifier's checks need ~0.83 accuracy on blobs, which
# 30 Adam epochs at lr 0.01 reach.
CHECKED = [
    FFNClassifier(hidden_layer_sizes=(8,), lr=0.01, batch_size=32, max_epochs=30, random_state=0),
    FFNRegressor(hidden_layer_sizes=(8,), lr=0.01, batch_size=32, max_epochs=30, random_state=0),
    FFNRegressor(hidden_layer_sizes=(), optimizer="lbfgs", max_epochs=30, random_state=0),
]


def expected_failures(estimator) -> dict[str, str]:
    """None: every check applies (pandas and array-API checks skip themselves, saying why)."""
    return {}


@pytest.fixture(autouse=True)
def quiet_convergence():
    """The checks' short fits stop at max_epochs; that warning is expected there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failures)
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


@pytest.fixture(scope="module")
def iris():
    x, y = load_iris(return_X_y=True)
    return train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)


def test_pipeline_grid_search_and_cross_val_score(iris) -> None:
    x_train, x_test, y_train, y_test = iris
    pipe = make_pipeline(
        StandardScaler(), FFNClassifier(hidden_layer_sizes=(16,), max_epochs=40, random_state=0)
    )
    grid = {"ffnclassifier__lr": [0.003, 0.03], "ffnclassifier__lam": [0.0, 1e-3]}
    search = GridSearchCV(pipe, grid, cv=3).fit(x_train, y_train)
    assert set(search.cv_results_["param_ffnclassifier__lr"]) == {0.003, 0.03}
    assert len(search.cv_results_["mean_test_score"]) == 4
    assert search.best_estimator_.score(x_test, y_test) > 0.85
    scores = cross_val_score(search.best_estimator_, x_train, y_train, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.7


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_pickled_estimator_predicts_and_continues_alike(iris, optimizer: str) -> None:
    x_train, x_test, y_train, _ = iris
    clf = FFNClassifier(hidden_layer_sizes=(8,), optimizer=optimizer, max_epochs=5, random_state=1)
    clf.set_params(lr=0.01 if optimizer in ("adam", "sgd", "momentum") else None)
    clf.fit(x_train, y_train)
    twin = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(twin.predict_proba(x_test), clf.predict_proba(x_test))
    # the optimizer's state came along too: one more epoch moves both the same way
    clf.partial_fit(x_train, y_train)
    twin.partial_fit(x_train, y_train)
    np.testing.assert_allclose(twin.coefs_[0], clf.coefs_[0], rtol=0, atol=1e-12)


def test_predict_proba_is_the_softmax_of_the_logits(monkeypatch) -> None:
    """300 rows, 3 classes: the logits come back column-major (functions.matmul, on a CPU where
    MKL takes its slower paths) and the probabilities from functions.softmax; both as torch's
    softmax, rows summing to one."""
    monkeypatch.setattr(functions, "MKL_SLOW_PATHS", True)
    x, y = make_classification(300, 6, n_informative=4, n_classes=3, random_state=0)
    clf = FFNClassifier(hidden_layer_sizes=(32,), max_epochs=3, random_state=0).fit(x, y)
    proba = clf.predict_proba(x)
    assert clf._forward(x).stride() == (1, 300) and proba.flags.c_contiguous
    want = torch.softmax(clf._forward(x).contiguous(), dim=1).numpy()
    np.testing.assert_allclose(proba, want, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-13)
    assert (clf.predict(x) == clf.classes_[want.argmax(1)]).all()


def test_partial_fit_and_warm_start_continue(iris) -> None:
    x_train, _, y_train, _ = iris
    clf = FFNClassifier(hidden_layer_sizes=(8,), lr=0.01, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(x_train, y_train)
    for _ in range(3):
        clf.partial_fit(x_train, y_train, classes=np.unique(y_train))
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3
    warm = FFNClassifier(hidden_layer_sizes=(8,), lr=0.01, max_epochs=5, warm_start=True)
    warm.set_params(random_state=0, n_iter_no_change=100).fit(x_train, y_train)
    first = list(warm.loss_curve_)
    warm.fit(x_train, y_train)
    assert warm.loss_curve_[:5] == first and len(warm.loss_curve_) == 10
    assert warm.loss_curve_[5] < first[0]  # it went on from the trained weights


def test_early_stopping_keeps_the_best_validation_model(iris) -> None:
    x_train, _, y_train, _ = iris
    clf = FFNClassifier(hidden_layer_sizes=(16,), lr=0.05, early_stopping=True, random_state=0)
    clf.set_params(n_iter_no_change=3, max_epochs=200).fit(x_train, y_train)
    assert clf.n_iter_ < 200 and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)


def test_mlp_conventions_lam_from_alpha() -> None:
    """Linear models, lbfgs on both sides: the same optimum once lam is converted from alpha."""
    x, y = load_diabetes(return_X_y=True)
    x, y, n, alpha = StandardScaler().fit_transform(x), (y - y.mean()) / y.std(), len(x), 5.0
    ours = FFNRegressor(hidden_layer_sizes=(), penalty="l2", lam=alpha / n, optimizer="lbfgs")
    ours.set_params(tol=0.0, max_epochs=300, random_state=0).fit(x, y)
    mlp = MLPRegressor(hidden_layer_sizes=(), alpha=alpha, solver="lbfgs", tol=1e-12)
    mlp.set_params(max_iter=5000, max_fun=100_000, random_state=0).fit(x, y)
    # scipy's ftol stops sklearn's own fits within ~1e-4 of the optimum; a wrong conversion
    # (a factor of 2 in lam) would be off by ~1e-2 here
    np.testing.assert_allclose(ours.coefs_[0], mlp.coefs_[0], atol=1e-3)
    exact = Ridge(alpha=alpha).fit(x, y)  # ridge's alpha is n lam, which is MLP's alpha
    np.testing.assert_allclose(ours.coefs_[0][:, 0], exact.coef_, atol=1e-6)
    x, y = load_iris(return_X_y=True)
    x, n = StandardScaler().fit_transform(x), len(x)
    ours = FFNClassifier(hidden_layer_sizes=(), penalty="l2", lam=alpha / (2 * n))
    ours.set_params(optimizer="lbfgs", tol=0.0, max_epochs=300, random_state=0).fit(x, y)
    mlp = MLPClassifier(hidden_layer_sizes=(), alpha=alpha, solver="lbfgs", tol=1e-12)
    mlp.set_params(max_iter=5000, max_fun=100_000, random_state=0).fit(x, y)
    np.testing.assert_allclose(ours.coefs_[0], mlp.coefs_[0], atol=1e-3)


@pytest.mark.slow
def test_lbfgs_mlp_on_digits_is_accurate() -> None:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    clf = make_pipeline(
        StandardScaler(),
        FFNClassifier((64,), penalty="l2", lam=1e-4, optimizer="lbfgs", random_state=0),
    )  # 0.984 (measured); without a penalty the train loss goes to 0 and it stops at 0.967
    assert clf.fit(x_train, y_train).score(x_test, y_test) >= 0.97


def test_bad_parameters_name_themselves() -> None:
    x, y = make_classification(40, 4, random_state=0)
    cases = {
        "penalty": FFNClassifier(penalty="l1", lam=0.1, optimizer="lbfgs"),
        "lam": FFNClassifier(penalty="l2", lam=-1.0),
        "optimizer": FFNClassifier(optimizer="rmsprop"),
        "activation": FFNClassifier(activation="swish"),
        "hidden_layer_sizes": FFNClassifier(hidden_layer_sizes=(0,)),
        "batch_size": FFNClassifier(batch_size=0),
    }
    for key, estimator in cases.items():
        with pytest.raises(ValueError, match=f"invalid value for {key}:"):
            estimator.fit(x, y)


def test_logdir_gets_the_runners_records(iris, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing import event_accumulator

    x_train, _, y_train, _ = iris
    clf = FFNClassifier(hidden_layer_sizes=(8,), max_epochs=3, early_stopping=True)
    clf.set_params(logdir=str(tmp_path), random_state=0, n_iter_no_change=50).fit(x_train, y_train)
    from ffn.run_record import EVENT_FOLDERS

    metrics, diagnostics = (
        event_accumulator.EventAccumulator(str(tmp_path / name), size_guidance={"scalars": 0})
        for name in EVENT_FOLDERS
    )
    metrics.Reload()
    diagnostics.Reload()
    expected = {"train/loss", "train/accuracy", "train/objective", "val/loss", "val/accuracy"}
    assert expected <= set(metrics.Tags()["scalars"])
    layers = {"train/lr", "weight_norm/layer_0", "grad_norm/layer_1"}
    assert layers <= set(diagnostics.Tags()["scalars"])
    assert [e.step for e in metrics.Scalars("train/loss")] == [1, 2, 3]
    assert "weights/layer_0" in diagnostics.Tags()["histograms"]
    assert "config" in "".join(metrics.Tags()["tensors"])  # the parameters, as text


def test_optimizer_table_is_the_conf_group() -> None:
    """ffn.optimizers' table is what conf/optimizer/ composes to: every file, every entry."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ffn.config import register_configs

    register_configs()  # the schema conf/config.yaml's defaults name, as run.py registers it
    files = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
    assert files == sorted(OPTIMIZERS)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name, choice in OPTIMIZERS.items():
            cfg = compose("config", overrides=[f"optimizer={name}"])
            assert OmegaConf.to_container(cfg.optimizer) == dict(choice.node), name
            assert cfg.trainer.full_batch is choice.full_batch, name


@pytest.mark.parametrize(
    ("optimizer", "cls", "settings"),
    [  # what the estimators build: the table's, with their own lr for adam, fused and tolerances
        ("gd", "SGD", {"lr": 0.5, "momentum": 0}),
        ("sgd", "SGD", {"lr": 0.05, "momentum": 0}),
        ("momentum", "SGD", {"lr": 0.05, "momentum": 0.9, "fused": True}),
        ("adam", "Adam", {"lr": 1e-3, "fused": True}),
        ("lbfgs", "LBFGS", {"lr": 1, "max_iter": 1, "max_eval": 25, "history_size": 10}),
    ],
)
def test_estimator_optimizers(iris, optimizer: str, cls: str, settings: dict) -> None:
    x_train, _, y_train, _ = iris
    clf = FFNClassifier((4,), optimizer=optimizer, max_epochs=1, random_state=0)
    built = clf.fit(x_train, y_train)._optimizer
    name = "FlatLBFGS" if optimizer == "lbfgs" else cls  # ffn.lbfgs: torch's step, in numpy
    assert isinstance(built, getattr(torch.optim, cls)) and type(built).__name__ == name
    group = built.param_groups[0]
    assert {k: group[k] for k in settings} == settings
    if optimizer == "lbfgs":
        assert group["line_search_fn"] == "strong_wolfe" and group["tolerance_grad"] == 1e-12
        assert group["tolerance_change"] == torch.finfo(torch.float64).eps


def test_lbfgs_epochs_reuse_the_last_line_search_evaluation(monkeypatch) -> None:
    """Each L-BFGS iteration starts at the point the last line search ended on; the estimator
    passes the same tensors every epoch, so the closure answers that point from its cache."""
    import ffn.step

    restored = []
    restore = ffn.step._Evaluation.restore
    monkeypatch.setattr(
        ffn.step._Evaluation, "restore", lambda self, p: restored.append(1) or restore(self, p)
    )
    x, y = load_diabetes(return_X_y=True)
    FFNRegressor((4,), optimizer="lbfgs", tol=0.0, max_epochs=6, random_state=0).fit(x, y)
    assert len(restored) >= 5  # every iteration after the first


def test_lbfgs_fit_reuses_pages_across_steps() -> None:
    """The fit runs under ffn.heap.kept_heap: the step's fresh 5000 x 64 tensors reuse the
    heap's pages instead of faulting them in anew (about 2,700 faults an iteration without)."""
    import resource

    from sklearn.datasets import make_friedman1

    from ffn.heap import _glibc

    if _glibc() is None:
        pytest.skip("not glibc: kept_heap does nothing")
    x, y = make_friedman1(n_samples=5000, n_features=10, random_state=0)
    estimator = FFNRegressor((64,), optimizer="lbfgs", tol=0.0, max_epochs=20, random_state=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    estimator.fit(x, y)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 20_000
