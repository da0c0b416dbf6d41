"""Penalties g(w) = lam pen(w): values, gradients, the proximal step, bad input, and the closed
forms they must reach (lasso against scikit-learn, ridge against its normal equations)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from penalty_cases import CASE_IDS, CASES, NAMES, entry

from ffn.errors import ConfigError
from ffn.functional import mse
from ffn.model import FeedForward
from ffn.penalties import PENALTIES, Penalty

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def model_with_biases(seed: int = 0) -> FeedForward:
    """A small float64 net whose biases are non-zero, so including them makes a difference."""
    model = FeedForward(4, [5], 3, activation="tanh", dtype=F64, seed=seed)
    with torch.no_grad():
        for i, b in enumerate(model.biases()):
            b.copy_(randn(*b.shape, seed=seed + 100 + i))
    return model


# --- value ---------------------------------------------------------------------------------


def l1(ts) -> float:
    return sum(t.detach().abs().sum().item() for t in ts)


def l2sq(ts) -> float:
    return sum(t.detach().square().sum().item() for t in ts)


def row_norms(ts) -> float:
    """sum over tensors and rows i of ||t_i||_2, one row at a time (a vector: one entry a row)."""
    return sum(math.sqrt(sum(v * v for v in row.flatten().tolist())) for t in ts for row in t)


# g = lam pen as the notes (and the group lasso's definition) write it, split into the part the
# gradient sees and the non-smooth part: (lam, r, tensors) -> (smooth, non-smooth). No 1/2 factors.
CLOSED_FORMS = {
    "none": lambda lam, r, ts: (0.0, 0.0),
    "l2": lambda lam, r, ts: (lam * l2sq(ts), 0.0),
    "l1": lambda lam, r, ts: (0.0, lam * l1(ts)),
    "elastic_net": lambda lam, r, ts: (lam * (1 - r) * l2sq(ts), lam * r * l1(ts)),
    "group_lasso": lambda lam, r, ts: (0.0, lam * row_norms(ts)),
}


def test_every_entry_has_a_closed_form_here_and_a_conf_file():
    assert set(CLOSED_FORMS) == set(NAMES), "write the new penalty's closed form in CLOSED_FORMS"
    files = {p.stem for p in (Path(__file__).parents[1] / "conf" / "penalty").glob("*.yaml")}
    assert files == set(PENALTIES)


@pytest.mark.usefixtures("penalty_table")
@pytest.mark.parametrize("include_bias", [False, True], ids=["weights", "with-bias"])
@pytest.mark.parametrize(("name", "method"), CASES, ids=CASE_IDS)
def test_value_is_exactly_the_closed_form(name, method, include_bias):
    model = model_with_biases()
    lam, r = 0.7, 0.3
    tensors = model.weights() + (model.biases() if include_bias else [])
    smooth, nonsmooth = CLOSED_FORMS[name](lam, r, tensors)
    penalty = Penalty(name, lam=lam, method=method, l1_ratio=r, include_bias=include_bias)
    params = penalty.parameters(model)
    assert len(params) == len(tensors)
    got = penalty.value(params)
    assert got.item() == pytest.approx(smooth + nonsmooth, rel=1e-13, abs=1e-15), name
    # smooth_value drops the non-smooth term only when the proximal step takes care of it
    want = smooth if penalty.proximal else smooth + nonsmooth
    assert penalty.smooth_value(params).item() == pytest.approx(want, rel=1e-13, abs=1e-15)
    assert penalty.proximal == (method == "proximal" and nonsmooth > 0)
    assert penalty.active == (smooth + nonsmooth > 0)
    assert not Penalty(name, lam=0.0, method=method).active  # lam = 0: nothing to apply


def test_biases_are_excluded_by_default():
    model = model_with_biases()
    penalised = {id(p) for p in Penalty("l2", lam=1.0).parameters(model)}
    assert penalised == {id(w) for w in model.weights()}
    with_bias = {id(p) for p in Penalty("l2", lam=1.0, include_bias=True).parameters(model)}
    assert with_bias == {id(p) for p in model.parameters()}


# --- gradient ---------------------------------------------------------------------------------


def torch_closed_form(name: str, lam: float, r: float, w: torch.Tensor) -> torch.Tensor:
    """CLOSED_FORMS' two parts in torch ops (differentiable): (smooth, non-smooth)."""
    rows = torch.stack([row.square().sum().sqrt() for row in w]).sum()
    parts = {
        "none": (0 * w.sum(), 0 * w.sum()),
        "l2": (lam * w.square().sum(), 0 * w.sum()),
        "l1": (0 * w.sum(), lam * w.abs().sum()),
        "elastic_net": (lam * (1 - r) * w.square().sum(), lam * r * w.abs().sum()),
        "group_lasso": (0 * w.sum(), lam * rows),
    }
    return parts[name]


@pytest.mark.usefixtures("penalty_table")
@pytest.mark.parametrize(("name", "method"), CASES, ids=CASE_IDS)
def test_gradient_equals_autograd_of_smooth_value(name, method):
    penalty = Penalty(name, lam=0.4, method=method, l1_ratio=0.25)
    w = randn(6, 4, seed=1)
    w[0, 0] = 0.0  # sign(0) = 0 is the subgradient both sides pick (no whole row is zero)
    w.requires_grad_()
    # `+ 0 * w.sum()` keeps the graph alive where smooth_value is a constant (proximal l1)
    (expected,) = torch.autograd.grad(penalty.smooth_value([w]) + 0 * w.sum(), w)
    torch.testing.assert_close(penalty.gradient(w.detach()), expected, rtol=1e-14, atol=1e-15)
    # explicitly: the closed form's smooth part, plus its non-smooth part unless the prox has it
    smooth, nonsmooth = torch_closed_form(name, 0.4, 0.25, w)
    (explicit,) = torch.autograd.grad(smooth + (0 if penalty.proximal else nonsmooth), w)
    torch.testing.assert_close(penalty.gradient(w.detach()), explicit, rtol=1e-14, atol=1e-15)


def test_add_gradient_adds_to_the_loss_gradient_on_penalised_tensors_only():
    model = model_with_biases()
    penalty = Penalty("l2", lam=0.5)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    penalty.add_gradient_(penalty.parameters(model))
    for w in model.weights():
        torch.testing.assert_close(w.grad, 1 + 2 * 0.5 * w.detach(), rtol=1e-14, atol=1e-15)
    for b in model.biases():
        torch.testing.assert_close(b.grad, torch.ones_like(b), rtol=0, atol=0)


# --- proximal step ----------------------------------------------------------------------------


def closed_form_prox(name: str, v: torch.Tensor, t: float) -> torch.Tensor:
    """argmin_x ||x - v||^2 / 2 + t r(x), as the textbooks write it."""
    if name in ("l1", "elastic_net"):  # soft-thresholding
        return torch.sign(v) * torch.clamp(v.abs() - t, min=0)
    if name == "group_lasso":  # block soft-thresholding, row by row
        rows = [row * max(0.0, 1 - t / row.norm().item()) for row in v.reshape(v.shape[0], -1)]
        return torch.stack(rows).reshape(v.shape)
    raise AssertionError(f"write the closed-form prox of {name}")


def prox_objective(name: str, x: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """||x - v||^2 / 2 + t r(x), which the prox of t r at v minimises."""
    return 0.5 * (x - v).square().sum() + t * entry(name).nonsmooth(x)


PROXIMAL = [name for name, method in CASES if method == "subgradient"]  # entries with an r


@pytest.mark.usefixtures("penalty_table")
@pytest.mark.parametrize("include_bias", [False, True], ids=["weights", "with-bias"])
@pytest.mark.parametrize("name", PROXIMAL)
def test_proximal_step_is_the_closed_form_with_each_groups_lr(name, include_bias):
    model = model_with_biases()
    lam, ratio = 1.5, 0.4
    penalty = Penalty(name, lam=lam, l1_ratio=ratio, include_bias=include_bias)
    share = penalty.nonsmooth_weight / lam  # r for elastic_net, 1 for the others
    assert share == pytest.approx(ratio if name == "elastic_net" else 1.0)
    first, second = model.layers
    opt = torch.optim.SGD(
        [
            {"params": list(first.parameters()), "lr": 0.3},
            {"params": list(second.parameters()), "lr": 0.1},
        ],
        lr=1.0,  # the groups' own rates must win over this default
    )
    with torch.no_grad():
        for p in model.parameters():
            p[0] = 0.001  # a row (an entry, for a bias) to zero out ...
            p.view(-1)[-1] = -2.0  # ... and one to shrink
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # so the SGD step itself moves nothing
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    penalty.proximal_step_(opt, penalty.parameters(model))
    for n, p in model.named_parameters():
        old = before[n]
        if p.ndim == 1 and not include_bias:
            torch.testing.assert_close(p.detach(), old, rtol=0, atol=0, msg=n)
            continue
        eta = 0.3 if n.startswith("layers.0") else 0.1
        threshold = eta * lam * share
        expected = closed_form_prox(name, old, threshold)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-15, msg=n)
        killed = expected == 0
        assert killed.any() and (~killed).any(), n  # the data exercise both branches
        assert (p.detach()[killed] == 0).all(), n  # exact zeros, not small numbers
        # and it is the prox: no nearby point has a smaller ||x - old||^2 / 2 + t r(x)
        best = prox_objective(name, p.detach(), old, threshold)
        for seed in range(5):
            nudged = p.detach() + 1e-4 * randn(*p.shape, seed=seed)
            assert prox_objective(name, nudged, old, threshold) > best, n


@pytest.mark.usefixtures("penalty_table")
@pytest.mark.parametrize(("name", "method"), CASES, ids=CASE_IDS)
def test_proximal_step_is_a_no_op_without_a_proximal_term(name, method):
    model = model_with_biases()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    # subgradient: the non-smooth part is in the gradient; lam = 0: there is nothing to apply
    for penalty in (Penalty(name, lam=1.0, method="subgradient"), Penalty(name, method=method)):
        penalty.proximal_step_(opt, penalty.parameters(model))
        for p, old in zip(model.parameters(), before, strict=True):
            torch.testing.assert_close(p.detach(), old, rtol=0, atol=0)
    if method == "proximal" and entry(name).nonsmooth is None:  # l2, none: never a prox
        assert not Penalty(name, lam=1.0, method=method).proximal


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"name": "l2", "lam": -0.1}, "penalty.lam"),
        ({"name": "l2", "lam": float("nan")}, "penalty.lam"),
        ({"name": "l2", "lam": float("inf")}, "penalty.lam"),
        ({"name": "l2", "lam": "0.1"}, "penalty.lam"),
        ({"name": "l2", "lam": None}, "penalty.lam"),
        ({"name": "l3"}, "penalty.name"),
        ({"name": "l1", "method": "adam"}, "penalty.method"),
        ({"name": "elastic_net", "l1_ratio": -0.1}, "penalty.l1_ratio"),
        ({"name": "elastic_net", "l1_ratio": 1.5}, "penalty.l1_ratio"),
        ({"name": "elastic_net", "l1_ratio": float("nan")}, "penalty.l1_ratio"),
        ({"name": "elastic_net", "l1_ratio": "half"}, "penalty.l1_ratio"),
    ],
)
def test_bad_penalty_input_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        Penalty(**kwargs)
    assert info.value.key == key
    assert key in str(info.value)


# --- a larger lambda gives smaller weights ----------------------------------------------------


@pytest.mark.slow
def test_larger_lambda_gives_smaller_weights():
    """Train one tiny tanh net to a stationary point of loss + lam ||W||^2 for two lambdas.

    Full-batch L-BFGS on ffn's gradients (hand-written backward + Penalty.add_gradient_),
    deterministic, run until the objective's gradient vanishes, not for a fixed short budget.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g, dtype=F64)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(30, 1, generator=g, dtype=F64)
    norms = {}
    for lam in (0.03, 0.3):
        model = FeedForward(3, [6], 1, activation="tanh", dtype=F64, seed=0)
        penalty = Penalty("l2", lam=lam)
        opt = torch.optim.LBFGS(
            model.parameters(),
            max_iter=2000,
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure(model=model, penalty=penalty, opt=opt):
            opt.zero_grad()
            loss = mse(model(x), y)
            loss.backward()
            penalty.add_gradient_(penalty.parameters(model))
            return loss.detach() + penalty.value(penalty.parameters(model)).detach()

        opt.step(closure)
        closure()
        grad = max(p.grad.abs().max().item() for p in model.parameters())
        assert grad < 1e-6, f"lam={lam} did not converge (max |grad| = {grad:.2e})"
        norms[lam] = l2sq(model.weights())
    assert norms[0.3] < 0.5 * norms[0.03]


# --- closed forms on scikit-learn's diabetes data ---------------------------------------------


@pytest.fixture(scope="module")
def diabetes():
    """X standardised column-wise with the full-data mean/std; y centred and divided by its std.

    Shipped with scikit-learn: nothing is downloaded.
    """
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    return x, y


def full_batch_gd(x: np.ndarray, y: np.ndarray, penalty: Penalty, extra_l: float, tol: float):
    """Full-batch (proximal) gradient descent on a linear model, every step through ffn.

    Step 1/L with L = 2 lambda_max([X 1]^T [X 1] / n) (+ extra_l for a smooth penalty), the
    Lipschitz constant of the data term's gradient. Runs until the parameters stop moving.
    """
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    lipschitz = 2 * np.linalg.eigvalsh(design.T @ design / n).max() + extra_l
    xt, yt = torch.tensor(x), torch.tensor(y).unsqueeze(1)
    model = FeedForward(d, [], 1, activation="identity", dtype=F64, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1 / lipschitz)
    params = list(model.parameters())
    iterations, moved = 0, float("inf")
    while moved >= tol and iterations < 20_000:
        before = [p.detach().clone() for p in params]
        opt.zero_grad()
        mse(model(xt), yt).backward()
        penalty.add_gradient_(penalty.parameters(model))
        opt.step()
        penalty.proximal_step_(opt, penalty.parameters(model))
        moved = max((p - q).abs().max().item() for p, q in zip(params, before, strict=True))
        iterations += 1
    (layer,) = model.layers
    return layer.weight.detach().squeeze(1).numpy(), layer.bias.item(), iterations


def test_l1_proximal_reaches_sklearn_lasso_with_the_same_exact_zeros(diabetes):
    """sklearn's Lasso minimises (1/(2n))||y - Xw - b||^2 + alpha ||w||_1. Twice that is ours,
    (1/n)||y - Xw - b||^2 + lam ||w||_1, with lam = 2 alpha; the intercept is unpenalised in both.
    """
    from sklearn.linear_model import Lasso

    x, y = diabetes
    alpha = 0.1
    reference = Lasso(alpha=alpha, tol=1e-12, max_iter=10**6).fit(x, y)
    zeros = reference.coef_ == 0
    assert 3 <= zeros.sum() < len(zeros)  # several exact zeros, and something left to fit

    start = time.perf_counter()
    w, b, iterations = full_batch_gd(x, y, Penalty("l1", lam=2 * alpha), extra_l=0.0, tol=1e-15)
    elapsed = time.perf_counter() - start
    assert iterations < 20_000, "ISTA did not settle"
    assert elapsed < 10, f"took {elapsed:.1f} s"
    np.testing.assert_allclose(w, reference.coef_, rtol=0, atol=1e-6)
    assert b == pytest.approx(reference.intercept_, abs=1e-6)
    np.testing.assert_array_equal(w == 0, zeros)  # the very same exact zeros


def test_l1_subgradient_gives_no_exact_zeros(diabetes):
    """The contrast the proximal method exists for: subgradient steps only hover around zero."""
    x, y = diabetes
    xt, yt = torch.tensor(x), torch.tensor(y).unsqueeze(1)
    model = FeedForward(x.shape[1], [], 1, activation="identity", dtype=F64, seed=0)
    penalty = Penalty("l1", lam=0.2, method="subgradient")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        mse(model(xt), yt).backward()
        penalty.add_gradient_(penalty.parameters(model))
        opt.step()
    assert (model.layers[0].weight != 0).all()


def test_l2_reaches_the_ridge_closed_form(diabetes):
    x, y = diabetes
    n, d = x.shape
    lam = 0.1
    # Our objective: J(w, b) = (1/n)||y - Xw - b 1||^2 + lam ||w||^2  (b unpenalised).
    #   dJ/db = -(2/n) 1^T (y - Xw - b 1) = 0  =>  b = mean(y) - mean(X) w,
    #   so J = (1/n)||yc - Xc w||^2 + lam ||w||^2 with Xc, yc the centred data, and
    #   dJ/dw = -(2/n) Xc^T (yc - Xc w) + 2 lam w = 0
    #   =>  (Xc^T Xc / n + lam I) w = Xc^T yc / n.
    xc, yc = x - x.mean(0), y - y.mean()
    w_star = np.linalg.solve(xc.T @ xc / n + lam * np.eye(d), xc.T @ yc / n)
    b_star = y.mean() - x.mean(0) @ w_star

    start = time.perf_counter()
    # the penalty adds 2 lam to the gradient's Lipschitz constant
    w, b, iterations = full_batch_gd(x, y, Penalty("l2", lam=lam), extra_l=2 * lam, tol=1e-14)
    elapsed = time.perf_counter() - start
    assert iterations < 20_000 and elapsed < 10
    np.testing.assert_allclose(w, w_star, rtol=0, atol=1e-6)
    assert b == pytest.approx(b_star, abs=1e-6)
