"""The hand-written Functions against finite differences, torch's own ops and the seed's formulas.

Every activation test loops over `ACTIVATIONS`, so a new table entry is covered without editing
this file. Gradient checks run in float64; comparisons never use exact float equality except
where the mathematics says the value is exactly 0 or 1 (relu' at 0, saturated sigmoid/tanh).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

from ffn import functions
from ffn.activations import ACTIVATIONS, Activation
from ffn.functions import (
    LinearFunction,
    MSEFunction,
    SoftmaxCrossEntropyFunction,
    linear_backward,
    linear_forward,
)

DTYPES = [torch.float32, torch.float64]
F64 = torch.float64

# Tight tolerances for "equals torch's own op": a few ulps of the result's magnitude.
TOL = {
    torch.float32: {"rtol": 2e-6, "atol": 1e-6},
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
}
# F.softplus returns z itself for z > 20 (its `threshold`), so torch's gradient there is exactly 1,
# while ffn's derivative 1 - exp(-h) is the true sigm(z) = 1 - 2e-9 at z = 20: a float64-only gap.
EXTRA_ATOL = {("softplus", torch.float64): 3e-9}

shapes = st.tuples(st.integers(1, 8), st.integers(1, 6))  # (batch n, features d or M)
seeds = st.integers(0, 2**31 - 1)
few = settings(max_examples=12, deadline=None)
# Every mode (forward AD, vmap, second derivatives) costs a dozen gradchecks an example.
few_modes = settings(max_examples=5, deadline=None)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def randn(shape: tuple[int, ...], seed: int, dtype: torch.dtype = F64, scale: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=F64) * scale).to(dtype)


def off_kink(z: torch.Tensor, gap: float = 1e-2) -> torch.Tensor:
    """Push every value at least `gap` away from 0, where the ReLU family has its kink."""
    return torch.where(z >= 0, z + gap, z - gap)


def tol(name: str, dtype: torch.dtype) -> dict[str, float]:
    t = dict(TOL[dtype])
    t["atol"] = max(t["atol"], EXTRA_ATOL.get((name, dtype), 0.0))
    return t


def entry_params() -> list:
    """(name, param) for every table entry: its default, and a non-default for those with one."""
    cases = []
    for name, entry in ACTIVATIONS.items():
        cases.append(pytest.param(name, None, id=f"{name}-default"))
        if entry.param_name is not None:
            other = entry.param_default + 0.5
            cases.append(pytest.param(name, other, id=f"{name}-{entry.param_name}={other}"))
    return cases


def resolved(entry: Activation, param: float | None) -> float:
    return entry.param_default if param is None else param


# --- finite differences (gradcheck, float64) ---------------------------------------------------


def check_all_modes(fn, inputs: tuple) -> None:
    """First derivatives in reverse and forward mode, batched under vmap, then the second ones.

    gradcheck: backward and jvp against central differences, and both again under vmap (batched
    grad / batched forward grad); gradgradcheck: backward of backward (reverse over reverse) and
    the jvp of backward (forward over reverse, what torch.func.hessian runs).
    """
    assert gradcheck(
        fn,
        inputs,
        check_forward_ad=True,
        check_batched_grad=True,
        check_batched_forward_grad=True,
    )
    assert gradgradcheck(fn, inputs, check_fwd_over_rev=True, check_batched_grad=True)


@pytest.mark.parametrize(("name", "param"), entry_params())
@given(shape=shapes, seed=seeds)
@example(shape=(1, 1), seed=0)
@example(shape=(1, 6), seed=1)
@few_modes
def test_activation_checks_in_every_mode(name, param, shape, seed):
    entry = ACTIVATIONS[name]
    z = off_kink(randn(shape, seed, scale=2.0)).requires_grad_()
    p = resolved(entry, param)
    check_all_modes(lambda t: entry.function.apply(t, p), (z,))


@pytest.mark.parametrize(("name", "param"), entry_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_kernels_equal_the_formulas(name, param, dtype):
    """The graph-free step's in-place forward and dh * g' give the table's formulas' values
    (torch.equal: bitwise but for a zero's sign), on exact zeros and negatives, a column-major
    dh and stacked members; an entry's in-place forward writes into z itself."""
    entry, p = ACTIVATIONS[name], resolved(ACTIVATIONS[name], param)
    z = randn((3, 40, 7), 60, dtype, scale=2.0)
    z[:, ::5] = 0.0
    h = entry.forward(z, p)
    saved = h if entry.saves == "output" else z
    z_own = z.clone()
    in_place = entry.forward_in_place(z_own, p)
    assert torch.equal(in_place, h)
    assert (in_place.data_ptr() == z_own.data_ptr()) == (entry.forward_ is not None)
    for grad_h in (randn((3, 40, 7), 61, dtype), column_major(randn((3, 40, 7), 61, dtype))):
        want = grad_h * entry.derivative(saved, p)
        got = entry.times_derivative_(grad_h.clone(), saved, p)
        assert torch.equal(got, want)
        if entry.times_derivative_of is not None:  # torch's ReLU backward: autograd's value
            torch.testing.assert_close(got, torch.ops.aten.threshold_backward(grad_h, h, 0))


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@given(n_d=shapes, out=st.integers(1, 6), seed=seeds)
@example(n_d=(1, 1), out=1, seed=0)
@few_modes
def test_linear_checks_in_every_mode(with_bias, n_d, out, seed):
    n, d = n_d
    x = randn((n, d), seed).requires_grad_()
    w = randn((d, out), seed + 1).requires_grad_()
    b = randn((out,), seed + 2).requires_grad_() if with_bias else None
    check_all_modes(LinearFunction.apply, (x, w, b))


@given(shape=shapes, seed=seeds)
@example(shape=(1, 1), seed=0)
@example(shape=(1, 4), seed=0)
@few_modes
def test_softmax_cross_entropy_checks_logits_only(shape, seed):
    n, m = shape
    logits = randn(shape, seed, scale=3.0).requires_grad_()
    target = torch.randint(m, (n,), generator=torch.Generator().manual_seed(seed))
    check_all_modes(lambda z: SoftmaxCrossEntropyFunction.apply(z, target), (logits,))


@given(shape=shapes, seed=seeds)
@example(shape=(1, 1), seed=0)
@few_modes
def test_mse_checks_in_every_mode(shape, seed):
    pred = randn(shape, seed).requires_grad_()
    target = randn(shape, seed + 1).requires_grad_()
    check_all_modes(MSEFunction.apply, (pred, target))


# --- against torch's own ops -------------------------------------------------------------------


def _forward_backward(fn, z: torch.Tensor, grad_out: torch.Tensor):
    z = z.detach().clone().requires_grad_()
    h = fn(z)
    h.backward(grad_out)
    return h.detach(), z.grad


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(("name", "param"), entry_params())
def test_activation_matches_native(name, param, dtype):
    entry = ACTIVATIONS[name]
    p = resolved(entry, param)
    z = randn((64, 5), seed=3, dtype=dtype, scale=4.0)
    z[0, :3] = torch.tensor([0.0, -0.0, 1e-30])  # torch and ffn agree at the kink as well
    grad_out = randn((64, 5), seed=4, dtype=dtype)
    h, dz = _forward_backward(lambda t: entry(t, p), z, grad_out)
    h_ref, dz_ref = _forward_backward(lambda t: entry.native(t, p), z, grad_out)
    assert h.dtype == dz.dtype == dtype
    torch.testing.assert_close(h, h_ref, **tol(name, dtype))
    torch.testing.assert_close(dz, dz_ref, **tol(name, dtype))


big = st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=16)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
@given(values=big)
@example(values=[-1e4, 1e4, -1e3, 1e3, 0.0])
@settings(max_examples=25, deadline=None)
def test_activation_finite_and_native_at_large_inputs(name, dtype, values):
    entry = ACTIVATIONS[name]
    z = torch.tensor(values, dtype=dtype)
    grad_out = torch.ones_like(z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h, dz = _forward_backward(entry, z, grad_out)
    assert torch.isfinite(h).all() and torch.isfinite(dz).all()
    h_ref, dz_ref = _forward_backward(lambda t: entry.native(t, entry.param_default), z, grad_out)
    torch.testing.assert_close(h, h_ref, **tol(name, dtype))
    torch.testing.assert_close(dz, dz_ref, **tol(name, dtype))


# --- the seed's formulas, by name --------------------------------------------------------------


def test_sigmoid_backward_is_h_times_one_minus_h():
    z = randn((7, 3), seed=5, scale=3.0).requires_grad_()
    g = randn((7, 3), seed=6)
    h = ACTIVATIONS["sigmoid"](z)
    h.backward(g)
    h = h.detach()
    torch.testing.assert_close(h, 1 / (1 + torch.exp(-z.detach())), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(z.grad, g * h * (1 - h), rtol=1e-14, atol=1e-15)


def test_tanh_backward_is_one_minus_h_squared():
    z = randn((7, 3), seed=7, scale=2.0).requires_grad_()
    g = randn((7, 3), seed=8)
    h = ACTIVATIONS["tanh"](z)
    h.backward(g)
    h = h.detach()
    e = torch.exp(2 * z.detach())
    torch.testing.assert_close(h, (e - 1) / (e + 1), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(z.grad, g * (1 - h**2), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_relu_backward_is_indicator_with_zero_gradient_at_zero(dtype):
    z = torch.tensor([-2.0, -1e-30, 0.0, -0.0, 1e-30, 3.0], dtype=dtype, requires_grad=True)
    g = torch.full_like(z, 2.5)
    ACTIVATIONS["relu"](z).backward(g)
    torch.testing.assert_close(z.grad, g * (z.detach() > 0).to(dtype), rtol=0, atol=0)
    at_zero = z.detach() == 0
    assert at_zero.sum() == 2
    assert (z.grad[at_zero] == 0).all()  # relu'(0) = 1{0 > 0} = 0, exactly


def test_seed_activations_save_their_output():
    """The seed's derivatives sigm', tanh', relu' are written in h; the table must say so."""
    for name in ("sigmoid", "tanh", "relu"):
        assert ACTIVATIONS[name].saves == "output", name


def test_softplus_derivative_keeps_relative_precision_in_the_negative_tail():
    """sigm(z) from h = softplus(z) as -expm1(-h): 1 - exp(-h) would lose every digit once h is
    below 1e-16 (z < -37) and most of them well before."""
    z = torch.tensor([-20.0, -30.0, -40.0, -300.0], dtype=F64, requires_grad=True)
    ACTIVATIONS["softplus"](z).sum().backward()
    torch.testing.assert_close(z.grad, torch.sigmoid(z.detach()), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_function_saves_what_the_entry_says(name):
    entry = ACTIVATIONS[name]
    z = torch.tensor([-1.5, -0.3, 0.4, 2.0], dtype=F64, requires_grad=True)
    h = entry(z)
    (saved,) = h.grad_fn.saved_tensors
    kept = h if entry.saves == "output" else z
    other = z if entry.saves == "output" else h
    assert saved.data_ptr() == kept.data_ptr()  # the very tensor, not a copy
    assert saved.data_ptr() != other.data_ptr()
    torch.testing.assert_close(saved, kept.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_sigmoid_and_tanh_saturate_exactly_without_warnings(dtype):
    z = torch.tensor([-1000.0, 1000.0], dtype=dtype, requires_grad=True)
    for name, expected in (("sigmoid", [0.0, 1.0]), ("tanh", [-1.0, 1.0])):
        z.grad = None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            h = ACTIVATIONS[name](z)
            h.sum().backward()
        assert h.tolist() == expected, name  # exactly saturated, not merely close
        assert torch.isfinite(z.grad).all()
        assert (z.grad == 0).all(), name  # h (1 - h) and 1 - h^2 vanish exactly there


# --- softmax + cross-entropy ------------------------------------------------------------------


@st.composite
def logit_rows(draw):
    """(n, M, n*M logits in [-1e4, 1e4], n class labels)."""
    n, m = draw(shapes)
    flat = draw(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=n * m, max_size=n * m))
    labels = draw(st.lists(st.integers(0, m - 1), min_size=n, max_size=n))
    return n, m, flat, labels


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@given(case=logit_rows())
@example(case=(1, 3, [1e4, 1e4 - 1, -1e4], [1]))
@example(case=(2, 2, [-1e4, 1e4, 1e4, -1e4], [0, 1]))
@settings(max_examples=40, deadline=None)
def test_softmax_cross_entropy_matches_torch_up_to_1e4(dtype, case):
    n, m, flat, labels = case
    logits = torch.tensor(flat, dtype=dtype).reshape(n, m)
    target = torch.tensor(labels, dtype=torch.int64)
    z = logits.clone().requires_grad_()
    loss = SoftmaxCrossEntropyFunction.apply(z, target)
    (2.5 * loss).backward()  # a non-unit upstream gradient
    z_ref = logits.clone().requires_grad_()
    loss_ref = F.cross_entropy(z_ref, target)
    (2.5 * loss_ref).backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    torch.testing.assert_close(loss, loss_ref, **TOL[dtype])
    torch.testing.assert_close(z.grad, z_ref.grad, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    ("shape", "by_class", "by_classcolumn_major"),
    [
        ((300, 10), True, True),
        ((256, 3), True, True),
        ((300, 2), True, True),
        ((300, 100), False, False),
        ((64, 10), True, True),
        ((32, 10), False, True),
        ((200, 24), "float64", True),
        ((64, 2), False, True),
    ],
    ids=["300x10", "256x3", "300x2", "300x100", "64x10", "32x10", "200x24", "64x2"],
)
def test_softmax_cross_entropy_both_cpu_paths_match_torch(
    shape, by_class, by_classcolumn_major, dtype
):
    """Torch's kernel along the classes (a few classes, enough logits, or a column-major z) and
    along the rows (the rest): each gives F.cross_entropy's loss, gradient and softmax."""
    from ffn.functions import _by_class, softmax

    for layout, expected in ((lambda t: t, by_class), (column_major, by_classcolumn_major)):
        logits = layout(randn(shape, seed=5, scale=3.0).to(dtype))
        logits[0, 0], logits[1, -1] = 1e4, -1e4  # far logits stay finite and exact
        assert _by_class(logits) is (expected is True or expected == str(dtype)[6:])
        target = torch.randint(shape[1], (shape[0],), generator=torch.Generator().manual_seed(5))
        z, z_ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        (2.5 * SoftmaxCrossEntropyFunction.apply(z, target)).backward()
        (2.5 * F.cross_entropy(z_ref, target)).backward()
        torch.testing.assert_close(z.grad, z_ref.grad, **TOL[dtype])
        loss = SoftmaxCrossEntropyFunction.apply(logits, target)
        torch.testing.assert_close(loss, F.cross_entropy(logits, target), **TOL[dtype])
        torch.testing.assert_close(softmax(logits), torch.softmax(logits, -1), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["row_major", "column_major"])
@pytest.mark.parametrize("rows", [64, 32])
def test_stacked_members_softmax_cross_entropy_bitwise_as_alone(rows, layout, dtype):
    """A member's delta in a stack is bitwise its own alone, in either layout: the ensemble's
        members take the path their single runs take (digits' 64-row minibatches, the class path;
    32 rows, torch's row kernel: the size counted is a member's). Its loss, a
        mean taken over its own row in a stack, differs at rounding level only (as it did before
        the class path)."""
    from ffn.losses import task_loss

    lay = column_major if layout == "column_major" else (lambda t: t)
    stacked = lay(randn((5, rows, 10), seed=8, scale=3.0).to(dtype))
    target = torch.randint(10, (5, rows), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        loss, delta = task_loss("classification").value_and_delta(stacked.clone(), target)
        for e in range(5):
            alone_loss, alone_delta = task_loss("classification").value_and_delta(
                lay(stacked[e].contiguous()), target[e]
            )
            assert torch.equal(delta[e], alone_delta)
            torch.testing.assert_close(loss[e], alone_loss, rtol=4 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(300, 10), (300, 2), (200, 10), (4, 300, 10), (4, 64, 3)])
def test_graph_free_loss_and_delta_equal_the_formulas(shape, dtype):
    """The step's loss and delta (written over their own intermediates) are bitwise the loss
    alone and the backward of fresh probabilities (exp of ffn.functions.log_softmax), on both CPU
    paths, both layouts and stacked; logits untouched."""
    from ffn.functions import (
        log_softmax,
        softmax_cross_entropy_backward,
        softmax_cross_entropy_value,
    )
    from ffn.losses import task_loss

    for layout in (lambda t: t, column_major):
        logits = layout(randn(shape, seed=7, scale=3.0).to(dtype))
        target = torch.randint(shape[-1], shape[:-1], generator=torch.Generator().manual_seed(7))
        before = logits.clone()
        with torch.no_grad():
            loss, delta = task_loss("classification").value_and_delta(logits, target)
            assert torch.equal(logits, before)
            assert torch.equal(loss, softmax_cross_entropy_value(logits, target))
            probs = log_softmax(logits).exp()
            assert torch.equal(delta, softmax_cross_entropy_backward(probs, target))


@pytest.mark.parametrize("layout", ["row_major", "column_major"])
def test_softmax_cross_entropy_class_path_gradgradchecks(layout):
    logits = randn((256, 3), seed=6, scale=3.0)
    logits = (column_major(logits) if layout == "column_major" else logits).requires_grad_()
    from ffn.functions import _by_class

    assert _by_class(logits)
    target = torch.randint(3, (256,), generator=torch.Generator().manual_seed(6))
    fn = lambda z: SoftmaxCrossEntropyFunction.apply(z, target)  # noqa: E731
    assert gradcheck(fn, (logits,)) and gradgradcheck(fn, (logits,))


@pytest.mark.parametrize("n", [1, 5])
def test_softmax_cross_entropy_gradient_is_softmax_minus_onehot_over_n(n):
    logits = randn((n, 4), seed=11, scale=3.0).requires_grad_()
    target = torch.tensor([3, 0, 1, 1, 2][:n])
    loss = SoftmaxCrossEntropyFunction.apply(logits, target)
    (2.5 * loss).backward()
    z = logits.detach()
    p = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    onehot = F.one_hot(target, 4).to(F64)
    expected_loss = -torch.log(p[torch.arange(n), target]).mean()
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(logits.grad, 2.5 * (p - onehot) / n, rtol=1e-13, atol=1e-15)


def test_softmax_cross_entropy_gives_no_gradient_to_target():
    logits = randn((3, 4), seed=12).requires_grad_()
    target = torch.tensor([0, 3, 1])
    loss = SoftmaxCrossEntropyFunction.apply(logits, target)
    assert target.dtype == torch.int64 and not target.requires_grad
    assert loss.grad_fn.next_functions[1][0] is None  # no edge into target's graph
    loss.backward()
    assert target.grad is None
    assert logits.grad is not None


# --- mean squared error -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (6, 1), (6, 3)])
def test_mse_is_m_times_torch_mse_with_gradient_two_residual_over_n(shape, dtype):
    n, m = shape
    pred = randn(shape, seed=13, dtype=dtype, scale=2.0).requires_grad_()
    target = randn(shape, seed=14, dtype=dtype).requires_grad_()
    loss = MSEFunction.apply(pred, target)
    (2.5 * loss).backward()
    torch.testing.assert_close(loss, m * F.mse_loss(pred, target), **TOL[dtype])
    torch.testing.assert_close(loss, F.mse_loss(pred, target, reduction="sum") / n, **TOL[dtype])
    residual = (pred - target).detach()
    torch.testing.assert_close(pred.grad, 2.5 * 2 * residual / n, **TOL[dtype])
    torch.testing.assert_close(target.grad, -2.5 * 2 * residual / n, **TOL[dtype])


# --- linear -----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(("n", "d", "h"), [(1, 1, 1), (1, 4, 3), (5, 1, 2), (5, 4, 3)])
def test_linear_backward_formulas(n, d, h, with_bias):
    x = randn((n, d), seed=15).requires_grad_()
    w = randn((d, h), seed=16).requires_grad_()
    b = randn((h,), seed=17).requires_grad_() if with_bias else None
    dz = randn((n, h), seed=18)  # a random upstream gradient
    z = LinearFunction.apply(x, w, b)
    z.backward(dz)
    xd, wd = x.detach(), w.detach()
    # z_ij = sum_k x_ik W_kj + b_j, written out as sums rather than matrix products.
    z_expected = (xd[:, :, None] * wd[None, :, :]).sum(1) + (0 if b is None else b.detach())
    torch.testing.assert_close(z.detach(), z_expected, rtol=1e-13, atol=1e-14)
    # dx_ik = sum_j dz_ij W_kj (dz W^T), dW_kj = sum_i x_ik dz_ij (x^T dz), db_j = sum_i dz_ij.
    close = {"rtol": 1e-13, "atol": 1e-14}
    torch.testing.assert_close(x.grad, (dz[:, None, :] * wd[None]).sum(2), **close)
    torch.testing.assert_close(w.grad, (xd[:, :, None] * dz[:, None, :]).sum(0), **close)
    if with_bias:
        torch.testing.assert_close(b.grad, dz.sum(0), **close)


# A few outputs and many rows: where MKL takes its slower paths (functions.MKL_SLOW_PATHS), the
# product is computed transposed (functions.matmul).
NARROW = [(64, 128, 2), (200, 64, 10), (70, 120, 15)]


def column_major(t: torch.Tensor) -> torch.Tensor:
    return t.mT.contiguous().mT


@pytest.mark.parametrize(
    ("vendor", "mkl", "slow"),
    [
        ("AuthenticAMD", True, True),
        ("HygonGenuine", True, True),
        ("GenuineIntel", True, False),
        ("AuthenticAMD", False, False),
        ("", True, False),  # no vendor found: torch's products as they are
    ],
)
def test_the_products_follow_the_cpu_vendor(vendor, mkl, slow, monkeypatch):
    """The rule on a given vendor and BLAS, and the routes it then takes: a narrow product
    transposed (column-major) and the estimators' products numpy's where MKL is off Intel's
    CPUs, plain torch products elsewhere; the same values either way."""
    assert functions.mkl_slow_paths(vendor, mkl) is slow
    monkeypatch.setattr(functions, "MKL_SLOW_PATHS", functions.mkl_slow_paths(vendor, mkl))
    x, w, b = randn((200, 64), 37), randn((64, 10), 38), randn((10,), 39)
    z = linear_forward(x, w, b)
    assert z.stride() == ((1, 200) if slow else (10, 1))
    torch.testing.assert_close(z, torch.addmm(b, x, w), rtol=1e-13, atol=1e-13)
    calls = count_numpy_products(monkeypatch)
    with functions.numpy_products(functions.MKL_SLOW_PATHS):
        torch.testing.assert_close(functions.matmul(x, w), x @ w, rtol=1e-12, atol=1e-12)
    assert calls[0] == slow


def test_cpu_vendor_is_the_one_cpuinfo_names():
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    vendors = {
        line.partition(":")[2].strip()
        for line in cpuinfo.read_text().splitlines()
        if line.startswith("vendor_id")
    }
    assert functions.cpu_vendor() in (vendors or {""})
    blas_is_mkl = torch.backends.mkl.is_available()
    assert functions.mkl_slow_paths(functions.cpu_vendor(), blas_is_mkl) is functions.MKL_SLOW_PATHS


@pytest.mark.parametrize(("n", "d", "h"), NARROW)
def test_narrow_linear_is_the_transposed_product_with_the_plain_values(n, d, h, monkeypatch):
    monkeypatch.setattr(functions, "MKL_SLOW_PATHS", True)
    x, w, b = randn((n, d), 30), randn((d, h), 31), randn((h,), 32)
    z = linear_forward(x, w, b)
    assert z.stride() == (1, n)  # column-major: the transposed product ran
    close = {"rtol": 1e-13, "atol": 1e-13}
    torch.testing.assert_close(z, torch.addmm(b, x, w), **close)
    torch.testing.assert_close(linear_forward(x, w, None), x @ w, **close)
    # the upstream gradient row-major, and column-major as a narrow z's loss delta is
    for dz in (randn((n, h), 33), column_major(randn((n, h), 33))):
        grad_x, grad_w, grad_b = linear_backward(dz, x, w)
        assert grad_w.is_contiguous()  # a weight's gradient keeps the weight's layout
        torch.testing.assert_close(grad_x, dz @ w.T, **close)
        torch.testing.assert_close(grad_w, x.T @ dz, **close)
        torch.testing.assert_close(grad_b, dz.sum(0), **close)


def test_narrow_linear_checks_in_every_mode(monkeypatch):
    monkeypatch.setattr(functions, "MKL_SLOW_PATHS", True)
    monkeypatch.setattr(functions, "_TRANSPOSED_MIN_SIZE", 0)  # the path at gradcheck's size
    x = randn((64, 2), 34).requires_grad_()
    w, b = randn((2, 3), 35).requires_grad_(), randn((3,), 36).requires_grad_()
    assert LinearFunction.apply(x, w, b).stride() == (1, 64)
    check_all_modes(LinearFunction.apply, (x, w, b))


# Inside functions.numpy_products the products of CPU float matrices are numpy's (its BLAS).
NUMPY_SHAPES = [(200, 64, 64), (200, 64, 10), (64, 200, 10), (1797, 10, 64)]


def count_numpy_products(monkeypatch) -> list[int]:
    """A counter of the products numpy computes from here on (functions._numpy_matmul)."""
    calls = [0]
    numpy_matmul = functions._numpy_matmul

    def counted(a, b):
        calls[0] += 1
        return numpy_matmul(a, b)

    monkeypatch.setattr(functions, "_numpy_matmul", counted)
    return calls


@pytest.mark.parametrize(("n", "d", "h"), NUMPY_SHAPES)
def test_numpy_products_equal_torch_products(n, d, h, monkeypatch):
    x, w, b = (randn(s, seed) for s, seed in (((n, d), 40), ((d, h), 41), ((h,), 42)))
    dz = randn((n, h), 43)
    calls = count_numpy_products(monkeypatch)
    with functions.numpy_products():
        z, z_plain = linear_forward(x, w, b), linear_forward(x, w, None)
        grad_x, grad_w, grad_b = linear_backward(dz, x, w)
    assert calls[0] >= 3  # the forward with and without bias, dW (dx too where it is deep)
    assert z.is_contiguous() and grad_w.is_contiguous()
    close = {"rtol": 1e-12, "atol": 1e-11}  # another summation order over up to 1797 terms
    torch.testing.assert_close(z, torch.addmm(b, x, w), **close)
    torch.testing.assert_close(z_plain, x @ w, **close)
    torch.testing.assert_close(grad_x, dz @ w.T, **close)
    torch.testing.assert_close(grad_w, x.T @ dz, **close)
    torch.testing.assert_close(grad_b, dz.sum(0), **close)


def test_numpy_products_are_off_by_default_and_for_what_they_cannot_do(monkeypatch):
    """Off outside the context; inside, torch's products where numpy's would lose something: a
    graph to record, an outer product, stacked members, a vmap, another dtype."""
    x, w = randn((200, 64), 44), randn((64, 64), 45)
    calls = count_numpy_products(monkeypatch)
    functions.matmul(x, w)
    assert calls[0] == 0
    with functions.numpy_products():
        out = functions.matmul(x, w.clone().requires_grad_())
        assert out.grad_fn is not None and calls[0] == 0  # autograd records it
        functions.matmul(randn((5000, 1), 46), randn((1, 64), 47))  # outer product
        functions.matmul(x.float(), w.float())  # float32: MKL holds its own
        functions.matmul(x.expand(2, -1, -1), w.expand(2, -1, -1))  # stacked (E, n, d)
        with pytest.raises(RuntimeError):  # mixed dtypes: torch's own error
            functions.matmul(x.float(), w)
        torch.func.vmap(functions.matmul, in_dims=(0, None))(x.expand(2, -1, -1), w)
        with torch.autograd.forward_ad.dual_level():
            functions.matmul(x, w)
    assert calls[0] == 0
    with functions.numpy_products(), functions.numpy_products(False):
        functions.matmul(x, w)
    assert calls[0] == 0


def test_numpy_products_stay_per_context_behind_the_open_block_count(monkeypatch):
    """The process-wide count of open blocks only lets products skip the checks while none is
    open: another thread's block leaves this thread's products torch's, and a block left by an
    exception closes its count."""
    import threading

    x, w = randn((200, 64), 51), randn((64, 64), 52)
    calls = count_numpy_products(monkeypatch)
    entered, release = threading.Event(), threading.Event()

    def hold_a_block() -> None:
        with functions.numpy_products():
            entered.set()
            release.wait(10)

    other = threading.Thread(target=hold_a_block)
    other.start()
    try:
        assert entered.wait(10) and functions._numpy_blocks == 1
        functions.matmul(x, w)
        linear_forward(x, w, randn((64,), 53))
        assert calls[0] == 0
    finally:
        release.set()
        other.join()
    with pytest.raises(KeyError), functions.numpy_products():
        assert functions._numpy_blocks == 1
        functions.matmul(x, w)
        raise KeyError
    assert calls[0] == 1 and functions._numpy_blocks == 0


def test_linear_with_numpy_products_checks_in_every_mode(monkeypatch):
    """The Function's forward, backward and jvp through numpy's products, at gradcheck's size."""
    monkeypatch.setattr(functions, "_NUMPY_ALWAYS", 0)
    x = randn((16, 3), 48).requires_grad_()
    w, b = randn((3, 4), 49).requires_grad_(), randn((4,), 50).requires_grad_()
    calls = count_numpy_products(monkeypatch)
    with functions.numpy_products():
        check_all_modes(LinearFunction.apply, (x, w, b))
    assert calls[0] > 0  # forward and first backward ran numpy's (grad mode off inside them)


def test_linear_skips_gradients_nobody_asked_for():
    x = randn((4, 3), seed=19)  # data: no gradient wanted
    w = randn((3, 2), seed=20).requires_grad_()
    b = randn((2,), seed=21).requires_grad_()
    LinearFunction.apply(x, w, b).sum().backward()
    assert x.grad is None
    torch.testing.assert_close(w.grad, x.sum(0)[:, None].expand(3, 2), rtol=1e-13, atol=1e-14)


# --- the public functional API ----------------------------------------------------------------


def test_functional_api_imports_and_runs_hand_written_functions():
    from ffn.functional import (
        leaky_relu,
        linear,
        mse,
        relu,
        sigmoid,
        softmax_cross_entropy,
        tanh,
    )

    x = randn((4, 3), seed=22).requires_grad_()
    w = randn((3, 2), seed=23)
    z = linear(x, w, torch.zeros(2, dtype=F64))
    assert type(z.grad_fn).__name__ == "LinearFunctionBackward"
    torch.testing.assert_close(z, x @ w, rtol=1e-13, atol=1e-14)
    natives = {sigmoid: torch.sigmoid, tanh: torch.tanh, relu: F.relu, leaky_relu: F.leaky_relu}
    for fn, ref in natives.items():
        h = fn(z)
        assert "Function" in type(h.grad_fn).__name__
        torch.testing.assert_close(h, ref(z), rtol=1e-13, atol=1e-14)
    target = torch.tensor([0, 1, 1, 0])
    torch.testing.assert_close(
        softmax_cross_entropy(z, target), F.cross_entropy(z, target), rtol=1e-13, atol=1e-14
    )
    torch.testing.assert_close(mse(z, z.detach() + 1), torch.tensor(2.0, dtype=F64))


def test_functional_leaky_relu_uses_the_given_slope():
    from ffn.functional import leaky_relu

    z = torch.tensor([-2.0, -0.5, 1.0, 3.0], dtype=F64, requires_grad=True)
    h = leaky_relu(z, negative_slope=0.2)
    h.sum().backward()
    torch.testing.assert_close(h.detach(), torch.tensor([-0.4, -0.1, 1.0, 3.0], dtype=F64))
    torch.testing.assert_close(z.grad, torch.tensor([0.2, 0.2, 1.0, 1.0], dtype=F64))
    # the default slope is the table's, 0.01, not 0.2
    torch.testing.assert_close(
        leaky_relu(z.detach()), torch.tensor([-0.02, -0.005, 1.0, 3.0], dtype=F64)
    )


@st.composite
def mse_extremes(draw):
    """(n, M, pred values, target values), every value in [-1e4, 1e4]."""
    n, m = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    values = st.floats(-1e4, 1e4, allow_nan=False)
    pred = draw(st.lists(values, min_size=n * m, max_size=n * m))
    target = draw(st.lists(values, min_size=n * m, max_size=n * m))
    return n, m, pred, target


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@settings(max_examples=40, deadline=None)
@given(case=mse_extremes())
@example(case=(1, 1, [1e4], [-1e4]))
def test_mse_finite_and_equal_to_torch_up_to_1e4(dtype, case):
    n, m, pred_values, target_values = case
    pred = torch.tensor(pred_values, dtype=dtype).reshape(n, m).requires_grad_()
    target = torch.tensor(target_values, dtype=dtype).reshape(n, m)
    loss = MSEFunction.apply(pred, target)
    (grad,) = torch.autograd.grad(loss, pred)
    twin = pred.detach().clone().requires_grad_()
    native = F.mse_loss(twin, target, reduction="sum") / n
    (native_grad,) = torch.autograd.grad(native, twin)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # Relative to the loss's own size: values reach 4e8 per entry, so a fixed atol means nothing.
    scale = float(native.detach().abs()) + 1.0
    torch.testing.assert_close(
        loss, native, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["rtol"] * scale
    )
    torch.testing.assert_close(grad, native_grad, **TOL[dtype])
