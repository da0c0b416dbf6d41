"""optimizer=lbfgs: torch.optim.LBFGS over ffn's hand-written gradients reaches the optimum.

Convex problems with known minimisers: binary logistic regression against scikit-learn's
LogisticRegression (with no penalty, and with l2 under the conversion below), ridge against its
closed form, and the runner end to end on diabetes. The l1 penalty is refused in one line.

Conventions (ffn minimises l_n(w) + lam ||W||^2, mean loss, biases unpenalised):
- LogisticRegression, binary: C sum_i log-loss(beta) + ||beta||^2 / 2 with one vector beta.
  ffn's two logits give beta = w_1 - w_0; at the optimum w_1 = -w_0 = beta / 2, so ffn's
  penalty is lam ||beta||^2 / 2, and dividing sklearn's objective by C n: lam = 1 / (C n).
- Ridge: (1/n) ||X w + b - y||^2 + lam ||w||^2 is minimised by w = (Xc'Xc + n lam I)^-1 Xc'yc
  (Xc, yc centred), which is sklearn's Ridge with alpha = n lam.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_ffn
from sklearn.linear_model import LogisticRegression

from ffn import ConfigError, FeedForward, Penalty
from ffn.optimizers import OPTIMIZERS
from ffn.step import lbfgs_step, manual_gradients

F64 = torch.float64


def lbfgs(model: FeedForward, **options) -> torch.optim.LBFGS:
    """conf/optimizer/lbfgs.yaml's optimizer, tolerances tight enough for 1e-5 agreement."""
    settings = OPTIMIZERS["lbfgs"].settings()
    settings |= dict(tolerance_grad=1e-12, tolerance_change=1e-15)
    return torch.optim.LBFGS(model.parameters(), **(settings | options))


def fit(model, penalty, x, y, task, iterations: int = 300) -> FeedForward:
    optimizer = lbfgs(model)
    for _ in range(iterations):
        lbfgs_step(model, optimizer, penalty, x, y, task)
    return model


@pytest.fixture(scope="module")
def overlapping_classes() -> tuple[np.ndarray, np.ndarray]:
    """Two classes drawn from a logistic model: not separable, so the MLE exists.  x: (300, 4)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    p = 1 / (1 + np.exp(-(x @ np.array([1.5, -1.0, 0.5, 0.0]) + 0.3)))
    return x, (rng.random(300) < p).astype(np.int64)


@pytest.mark.parametrize("C", [np.inf, 0.05], ids=["no-penalty", "l2"])
def test_logistic_regression_reaches_sklearns_coefficients(overlapping_classes, C: float) -> None:
    x, y = overlapping_classes
    n = len(x)
    penalty = Penalty("none") if np.isinf(C) else Penalty("l2", lam=1 / (C * n))
    model = FeedForward(4, [], 2, dtype=F64, seed=3)
    fit(model, penalty, torch.as_tensor(x), torch.as_tensor(y), "classification")
    w, b = model.layers[0].weight.detach(), model.layers[0].bias.detach()
    beta, intercept = (w[:, 1] - w[:, 0]).numpy(), float(b[1] - b[0])
    reference = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(beta, reference.coef_[0], atol=1e-5)
    assert intercept == pytest.approx(reference.intercept_[0], abs=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_ridge_reaches_its_closed_form(lam: float) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 5, generator=g, dtype=F64)
    y = x @ torch.randn(5, 2, generator=g, dtype=F64) + 0.5 * torch.randn(80, 2, generator=g)
    model = fit(FeedForward(5, [], 2, dtype=F64), Penalty("l2", lam), x, y, "regression")
    xc, yc = x - x.mean(0), y - y.mean(0)
    w = torch.linalg.solve(xc.T @ xc + len(x) * lam * torch.eye(5, dtype=F64), xc.T @ yc)
    b = y.mean(0) - x.mean(0) @ w
    torch.testing.assert_close(model.layers[0].weight.detach(), w, rtol=0, atol=1e-8)
    torch.testing.assert_close(model.layers[0].bias.detach(), b, rtol=0, atol=1e-8)


def test_each_step_reuses_the_line_searchs_last_evaluation() -> None:
    """The step's opening evaluation is the point the last line search ended on: not redone."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 3, generator=g, dtype=F64), torch.randn(50, 1, generator=g, dtype=F64)
    model = FeedForward(3, [4], 1, activation="tanh", dtype=F64)
    optimizer, calls = lbfgs(model), []

    def counted(*args):
        calls.append(1)
        return manual_gradients(*args)

    for _ in range(10):
        lbfgs_step(model, optimizer, Penalty("l2", 0.01), x, y, "regression", gradients=counted)
    evaluations = optimizer.state[optimizer.param_groups[0]["params"][0]]["func_evals"]
    assert len(calls) < evaluations  # torch counted evaluations the cache answered
    assert len(calls) >= 10  # but every iteration computed at least its line search's point


@pytest.mark.parametrize("penalty", [Penalty("l1", 0.1), Penalty("elastic_net", 0.1)])
def test_l1_is_refused_in_one_line(penalty: Penalty) -> None:
    model = FeedForward(3, [], 2, dtype=F64)
    x, y = torch.randn(5, 3, dtype=F64), torch.tensor([0, 1, 0, 1, 1])
    with pytest.raises(ConfigError, match="proximal method with optimizer=gd") as error:
        lbfgs_step(model, lbfgs(model), penalty, x, y, "classification")
    assert error.value.key == "penalty.name"


@pytest.mark.slow
def test_runner_reaches_the_ridge_optimum(tmp_path: Path) -> None:
    """python run.py optimizer=lbfgs on a convex problem: its objective is the minimum's."""
    from ffn.data import DatasetConfig, load_dataset

    lam, run_dir = 0.05, tmp_path / "run"
    proc = run_ffn(
        "dataset=diabetes",
        "model=linear",
        "optimizer=lbfgs",
        "penalty=l2",
        f"penalty.lam={lam}",
        "+optimizer.tolerance_grad=1e-12",
        "+optimizer.tolerance_change=1e-15",
        "trainer.dtype=float64",
        "trainer.max_epochs=60",
        "trainer.figures=false",
        "trainer.histogram_every=0",
        "trainer.progress=false",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "schedule torch.optim.lr_scheduler.CosineAnnealingLR is not used"
        in proc.stdout + proc.stderr
    )
    record = json.loads((run_dir / "metrics.json").read_text())
    d = load_dataset(DatasetConfig(name="diabetes"), seed=0, dtype=F64)
    x, y, n = d.x_train, d.y_train, d.n_train
    xc, yc = x - x.mean(0), y - y.mean(0)
    w = torch.linalg.solve(xc.T @ xc + n * lam * torch.eye(x.shape[1], dtype=F64), xc.T @ yc)
    objective = float((xc @ w - yc).square().sum() / n + lam * w.square().sum())
    assert record["metrics"]["train/objective"] == pytest.approx(objective, rel=1e-12)


# --- ffn.lbfgs: the same iterations with the parameters in one flat buffer ---------------------


def friedman_problem(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(n, 5, generator=generator, dtype=F64)
    return x, (x[:, :1] * x[:, 1:2]).sin() + 0.1 * torch.randn(n, 1, generator=generator, dtype=F64)


def test_flatten_parameters_keeps_values_and_views_one_buffer() -> None:
    from ffn.lbfgs import flatten_parameters_

    model = FeedForward(5, [7], 2, dtype=F64, seed=4)
    before = [p.detach().clone() for p in model.parameters()]
    flat = flatten_parameters_(model)
    assert flat.shape == (sum(p.numel() for p in before),)
    for p, q in zip(model.parameters(), before, strict=True):
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad and p.is_leaf
        assert torch.equal(p, q)
    with torch.no_grad():
        flat.add_(1.0)
    for p, q in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), q + 1.0)


def digits_like_problem(n: int = 150) -> tuple[torch.Tensor, torch.Tensor]:
    """Three overlapping classes in 6 features: softmax cross-entropy, no exact fit."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(n, 6, generator=generator, dtype=F64)
    logits = x[:, :3] * 2.0 + 0.5 * torch.randn(n, 3, generator=generator, dtype=F64)
    return x, logits.argmax(1)


# (model sizes, penalty, problem, task, steps, settings beyond conf/optimizer/lbfgs.yaml's); the
# first tries lr (torch's first step length) large enough that searches zoom in over several
# points. Rounding apart (BLAS's dot and axpy against torch's), the two follow the same branches,
# and their differences grow with the iterations (1.6e-14 after 20, 1.2e-10 after 60 here).
FLAT_PROBLEMS = {
    "mlp-regression-l2": ((5, [8], 1), Penalty("l2", 1e-3), friedman_problem, "regression", 15, {}),
    "mlp-classification": ((6, [7], 3), None, digits_like_problem, "classification", 12, {}),
    "logistic": ((6, [], 3), Penalty("l2", 1e-2), digits_like_problem, "classification", 15, {}),
    # torch's defaults: 20 iterations a step, history 100, with and without the line search
    "several-iterations": (
        (5, [6], 1),
        None,
        friedman_problem,
        "regression",
        2,
        dict(max_iter=20, max_eval=None, history_size=100),
    ),
    "no-line-search": (
        (5, [6], 1),
        None,
        friedman_problem,
        "regression",
        4,
        dict(max_iter=20, max_eval=None, history_size=100, lr=0.05, line_search_fn=None),
    ),
}
FIRST_STEP = {"mlp-regression-l2": 4.0, "mlp-classification": 4.0, "logistic": 20.0}


def flat_and_torch(sizes, settings, seed: int = 5):
    """The same network twice: one in a flat buffer under FlatLBFGS, one under torch's LBFGS."""
    from ffn.lbfgs import FlatLBFGS, flatten_parameters_

    plain, flat_model = (FeedForward(*sizes, dtype=F64, seed=seed) for _ in range(2))
    flat = flatten_parameters_(flat_model)
    ours = FlatLBFGS(flat_model.parameters(), **settings)
    ours.flat = flat
    assert ours.flat_buffer() is flat
    return flat_model, ours, plain, torch.optim.LBFGS(plain.parameters(), **settings)


def assert_same_iterate(model, reference, loss, reference_loss) -> None:
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, reference_loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FLAT_PROBLEMS)
def test_flat_lbfgs_takes_torchs_steps(name: str) -> None:
    """FlatLBFGS (its step in numpy on the flat buffer) against torch.optim.LBFGS, step by step:
    the same iterates and losses to 1e-12 in float64, the same evaluations, on problems whose
    strong Wolfe searches try several points."""
    sizes, penalty, problem, task, steps, options = FLAT_PROBLEMS[name]
    x, y = problem()
    settings = OPTIMIZERS["lbfgs"].settings() | dict(tolerance_grad=1e-12, tolerance_change=0.0)
    settings["lr"] = FIRST_STEP.get(name, 4.0)
    flat_model, ours, plain, torchs = flat_and_torch(sizes, settings | options)
    for _ in range(steps):
        reference_loss = lbfgs_step(plain, torchs, penalty, x, y, task)
        loss = lbfgs_step(flat_model, ours, penalty, x, y, task)
        assert_same_iterate(flat_model, plain, loss, reference_loss)
    state, reference = ours.state[flat_model.layers[0].weight], torchs.state[plain.layers[0].weight]
    assert (state["func_evals"], state["n_iter"]) == (reference["func_evals"], reference["n_iter"])
    if options.get("line_search_fn", "strong_wolfe"):
        # more evaluations than each step's opening one and one a search: some tried several
        assert reference["func_evals"] > steps + reference["n_iter"]


def test_lbfgs_step_skips_torchs_wrapper_only_where_nothing_needs_it(monkeypatch) -> None:
    """After its first step through torch.optim, FlatLBFGS steps without torch.optim's hook
    wrapper; a step hook or a replaced step sends every step through it again, an LR scheduler
    sees the first step (no warning) and its rates are used; the same iterates either way."""
    import warnings

    from ffn.lbfgs import FlatLBFGS

    wrapped = []  # calls of torch.optim's wrapper (it calls _optimizer_step_code once a step)
    monkeypatch.setattr(FlatLBFGS, "_optimizer_step_code", lambda self: wrapped.append(self))
    x, y = friedman_problem()
    settings = OPTIMIZERS["lbfgs"].settings() | dict(tolerance_grad=1e-12, tolerance_change=0.0)
    direct, ours, _, _ = flat_and_torch((5, [8], 1), settings)
    hooked, theirs, _, _ = flat_and_torch((5, [8], 1), settings)
    seen = []
    theirs.register_step_pre_hook(lambda opt, args, kwargs: seen.append(opt))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()"
        schedules = [torch.optim.lr_scheduler.ExponentialLR(o, 0.5) for o in (ours, theirs)]
        for _ in range(4):
            assert_same_iterate(
                direct,
                hooked,
                lbfgs_step(direct, ours, None, x, y, "regression"),
                lbfgs_step(hooked, theirs, None, x, y, "regression"),
            )
            for schedule in schedules:
                schedule.step()
    assert [o is ours for o in wrapped].count(True) == 1 and len(seen) == 4
    assert [o is theirs for o in wrapped].count(True) == 4
    assert ours.param_groups[0]["lr"] == settings["lr"] * 0.5**4
    ours.step = lambda closure: wrapped.append(ours) or FlatLBFGS.step(ours, closure)
    lbfgs_step(direct, ours, None, x, y, "regression")
    assert [o is ours for o in wrapped].count(True) == 3  # the replacement and the wrapper


def test_flat_lbfgs_state_carries_on_in_torchs_step() -> None:
    """After numpy steps, torch.optim.LBFGS loaded with FlatLBFGS's state_dict (vectors as
    tensors) takes the same next steps as FlatLBFGS, and so does FlatLBFGS falling back to
    torch's step once its parameters leave the buffer."""
    x, y = friedman_problem()
    settings = OPTIMIZERS["lbfgs"].settings() | dict(tolerance_grad=1e-12, tolerance_change=0.0)
    flat_model, ours, plain, torchs = flat_and_torch((5, [8], 1), settings)
    for _ in range(6):
        lbfgs_step(plain, torchs, None, x, y, "regression")
        lbfgs_step(flat_model, ours, None, x, y, "regression")
    saved = copy.deepcopy(ours.state_dict())  # torch's state_dict holds references, not copies
    assert all(isinstance(v, torch.Tensor) for v in saved["state"][0]["old_dirs"])
    # the entries of torch's own kinds (its scalars 0-dim tensors): torch.load's weights_only
    # unpickler, torch's default, takes the file as it takes torch's
    kinds = {k: type(v) for k, v in torchs.state_dict()["state"][0].items()}
    assert {k: type(v) for k, v in saved["state"][0].items()} == kinds
    assert {type(v) for v in saved["state"][0]["ro"]} == {torch.Tensor}
    file = io.BytesIO()
    torch.save(saved, file)
    file.seek(0)
    torch.load(file, weights_only=True)
    resumed_model = FeedForward(5, [8], 1, dtype=F64)
    resumed_model.load_state_dict(flat_model.state_dict())
    resumed = torch.optim.LBFGS(resumed_model.parameters(), **settings)
    resumed.load_state_dict(saved)
    for p in flat_model.parameters():  # out of the buffer: FlatLBFGS takes torch's step
        p.data = p.data.clone()
    assert ours.flat_buffer() is None
    for _ in range(6):
        reference_loss = lbfgs_step(plain, torchs, None, x, y, "regression")
        loss = lbfgs_step(flat_model, ours, None, x, y, "regression")
        resumed_loss = lbfgs_step(resumed_model, resumed, None, x, y, "regression")
        assert_same_iterate(flat_model, plain, loss, reference_loss)
        assert_same_iterate(resumed_model, plain, resumed_loss, reference_loss)


def test_flat_lbfgs_in_float32_follows_torchs_to_its_rounding() -> None:
    """float32: the numpy step's scalars keep the dtype (NumPy 2's promotion, torch's 0-dim
    tensors'), so the iterates stay within float32 rounding of torch's."""
    from ffn.lbfgs import FlatLBFGS, flatten_parameters_

    x, y = (t.float() for t in friedman_problem())
    settings = OPTIMIZERS["lbfgs"].settings()
    plain, flat_model = (FeedForward(5, [8], 1, seed=5) for _ in range(2))
    flat = flatten_parameters_(flat_model)
    ours = FlatLBFGS(flat_model.parameters(), **settings)
    ours.flat = flat
    torchs = torch.optim.LBFGS(plain.parameters(), **settings)
    for _ in range(5):
        lbfgs_step(plain, torchs, None, x, y, "regression")
        lbfgs_step(flat_model, ours, None, x, y, "regression")
    assert isinstance(ours.state[flat_model.layers[0].weight]["ro"][0], np.float32)
    for p, q in zip(flat_model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_flat_lbfgs_moves_each_tensor_once_they_leave_the_buffer() -> None:
    from ffn.lbfgs import FlatLBFGS, flatten_parameters_

    x, y = friedman_problem()
    model = FeedForward(5, [8], 1, dtype=F64, seed=6)
    optimizer = FlatLBFGS(model.parameters(), **OPTIMIZERS["lbfgs"].settings())
    optimizer.flat = flatten_parameters_(FeedForward(5, [8], 1, dtype=F64))  # another model's
    assert optimizer.flat_buffer() is None
    loss = [lbfgs_step(model, optimizer, None, x, y, "regression") for _ in range(10)]
    assert loss[-1] < loss[0]


def test_lbfgs_cache_is_stale_once_a_gradient_changes_in_place() -> None:
    """zero_grad(set_to_none=False) between two steps: the next step evaluates afresh."""
    x, y = friedman_problem()
    model = FeedForward(5, [8], 1, dtype=F64, seed=7)
    optimizer = lbfgs(model)
    calls = []

    def counted(*args):
        calls.append(1)
        return manual_gradients(*args)

    lbfgs_step(model, optimizer, None, x, y, "regression", gradients=counted)
    evaluations = len(calls)
    optimizer.zero_grad(set_to_none=False)
    lbfgs_step(model, optimizer, None, x, y, "regression", gradients=counted)
    assert len(calls) >= evaluations + 2  # the start point again, then the line search
