"""The Functions as PyTorch citizens: torch.func against the autograd twin, whole-network Hessians,
compile, autocast, pickling, and the edge cases torch's own losses define.

Finite-difference checks of every mode (gradcheck with forward AD and vmap, gradgradcheck) are in
test_functions.py; here the same derivatives meet torch's transforms on whole networks. Every
test loops over `ACTIVATIONS` and the tasks, so a new table entry is covered.
"""

from __future__ import annotations

import ast
import io
import pickle
from pathlib import Path

import joblib
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, stack_module_state, vmap

from ffn.activations import ACTIVATIONS
from ffn.functional import linear, mse, softmax_cross_entropy
from ffn.losses import loss_function
from ffn.model import FeedForward
from ffn.penalties import Penalty

F64 = torch.float64
TASKS = ("classification", "regression")
# The smooth penalties (l1's second derivative is taken to be 0, see README): the Hessian of
# loss + penalty.smooth_value; elastic_net-proximal's smooth part is its l2 term.
SMOOTH_PENALTIES = {
    "none": Penalty(),
    "l2": Penalty("l2", lam=0.1),
    "elastic_net-proximal": Penalty("elastic_net", 0.1, "proximal", l1_ratio=0.3),
}
CLOSE = {"rtol": 1e-10, "atol": 1e-12}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def make_data(task: str, n: int = 9, d: int = 3, m: int = 2, seed: int = 0):
    """x: (n, d) float64; y: (n,) int64 labels or (n, m) float64 targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64) * 1.5
    if task == "classification":
        return x, torch.randint(m, (n,), generator=g)
    return x, torch.randn(n, m, generator=g, dtype=F64)


def tiny_model(activation: str, seed: int = 3, **kwargs) -> FeedForward:
    return FeedForward(3, [4, 3], 2, activation=activation, seed=seed, dtype=F64, **kwargs)


def objective(model: FeedForward, task: str, penalty: Penalty, x, y):
    """theta (flat) -> training loss + smooth penalty, through `model`'s own backend."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [s.numel() for s in shapes]
    loss_fn = loss_function(task, model.backend)
    penalised = {name for name, p in model.named_parameters() if p.ndim >= 2}

    def f(theta: torch.Tensor) -> torch.Tensor:
        parts = [t.reshape(s) for t, s in zip(theta.split(sizes), shapes, strict=True)]
        params = dict(zip(names, parts, strict=True))
        out = functional_call(model, params, (x,))
        return loss_fn(out, y) + penalty.smooth_value([params[n] for n in names if n in penalised])

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return f, theta


# --- whole-network second derivatives against the autograd twin ---------------------------------


@pytest.mark.parametrize("penalty_name", list(SMOOTH_PENALTIES))
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_network_hessian_equals_autograd_twin(activation, task, penalty_name):
    penalty = SMOOTH_PENALTIES[penalty_name]
    x, y = make_data(task)
    model = tiny_model(activation)
    f, theta = objective(model, task, penalty, x, y)
    f_twin, _ = objective(model.with_backend("autograd"), task, penalty, x, y)
    hessian = torch.autograd.functional.hessian(f, theta)
    expected = torch.autograd.functional.hessian(f_twin, theta)
    assert expected.abs().max() > 1e-3  # a real curvature, not two matching zeros
    torch.testing.assert_close(hessian, expected, **CLOSE)
    # Hessian-vector products both ways: reverse over reverse, and forward over reverse.
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    _, hvp = torch.autograd.functional.hvp(f, theta, v)
    torch.testing.assert_close(hvp, expected @ v, **CLOSE)
    _, hvp_fwd = jvp(grad(f), (theta,), (v,))
    torch.testing.assert_close(hvp_fwd, expected @ v, **CLOSE)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_torch_func_hessian_and_jvp_equal_autograd_twin(activation):
    """torch.func.hessian (jacfwd over jacrev) and a jvp of the forward, on one task each."""
    x, y = make_data("classification")
    model = tiny_model(activation)
    f, theta = objective(model, "classification", Penalty(), x, y)
    f_twin, _ = objective(model.with_backend("autograd"), "classification", Penalty(), x, y)
    torch.testing.assert_close(torch.func.hessian(f)(theta), torch.func.hessian(f_twin)(theta))
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    value, tangent = jvp(f, (theta,), (v,))
    value_twin, tangent_twin = jvp(f_twin, (theta,), (v,))
    torch.testing.assert_close(value, value_twin, **CLOSE)
    torch.testing.assert_close(tangent, tangent_twin, **CLOSE)


@pytest.mark.parametrize(("name", "param"), [(n, None) for n in ACTIVATIONS])
def test_activation_jvp_equals_native(name, param):
    entry = ACTIVATIONS[name]
    z = torch.linspace(-4, 4, 17, dtype=F64) + 0.01  # off the kink
    v = torch.randn(17, generator=torch.Generator().manual_seed(0), dtype=F64)
    h, dh = jvp(lambda t: entry(t), (z,), (v,))
    h_ref, dh_ref = jvp(lambda t: entry.native(t, entry.param_default), (z,), (v,))
    torch.testing.assert_close(h, h_ref, **CLOSE)
    torch.testing.assert_close(dh, dh_ref, **CLOSE)


# --- vmap: per-sample gradients and ensembles, against loops -----------------------------------


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_per_sample_gradients_equal_a_loop(activation, task):
    x, y = make_data(task, n=5)
    model = tiny_model(activation)
    params = {k: v.detach() for k, v in model.named_parameters()}
    loss_fn = loss_function(task)

    def sample_loss(params, xi, yi):
        return loss_fn(functional_call(model, params, (xi[None],)), yi[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, **CLOSE, msg=name)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_ensemble_by_stack_module_state_equals_a_loop(activation):
    x, _ = make_data("regression")
    models = [tiny_model(activation, seed=s) for s in range(3)]
    params, buffers = stack_module_state(models)
    base = tiny_model(activation).to("meta")

    def one(params, buffers, x):
        return functional_call(base, (params, buffers), (x,))

    outputs = vmap(one, in_dims=(0, 0, None))(params, buffers, x)
    for i, model in enumerate(models):
        torch.testing.assert_close(outputs[i], model(x), **CLOSE)


def test_vmap_of_every_function_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(4, 5, 3, generator=g, dtype=F64)  # 4 batches of (n=5, d=3)
    w = torch.randn(3, 2, generator=g, dtype=F64)
    b = torch.randn(2, generator=g, dtype=F64)
    labels = torch.randint(2, (4, 5), generator=g)
    targets = torch.randn(4, 5, 2, generator=g, dtype=F64)
    cases = {
        "linear": (lambda x: linear(x, w, b), (xs,)),
        "softmax_cross_entropy": (lambda x, t: softmax_cross_entropy(x @ w, t), (xs, labels)),
        "mse": (lambda x, t: mse(x @ w, t), (xs, targets)),
        **{name: (lambda x, e=e: e(x), (xs,)) for name, e in ACTIVATIONS.items()},
    }
    for name, (fn, args) in cases.items():
        batched = vmap(fn)(*args)
        looped = torch.stack([fn(*(a[i] for a in args)) for i in range(4)])
        torch.testing.assert_close(batched, looped, **CLOSE, msg=name)


# --- torch.compile: one graph, no break --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_compiled_forward_has_no_graph_break(activation):
    torch._dynamo.reset()
    model = FeedForward(3, [4], 2, activation=activation, seed=0)
    x = torch.randn(5, 3)
    explanation = torch._dynamo.explain(model)(x)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), (
        explanation.break_reasons
    )
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    out = compiled(x)
    torch.testing.assert_close(out, model(x))
    out.sum().backward()  # the hand-written backward runs inside the compiled graph
    assert all(p.grad is not None for p in model.parameters())


# --- autocast: a few bf16 steps on the CPU --------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_bf16_autocast_training_matches_the_twin(activation, task):
    x, y = make_data(task, n=16)
    x = x.float()
    y = y if task == "classification" else y.float()
    model = FeedForward(3, [8], 2, activation=activation, seed=0)
    twin = model.with_backend("autograd")
    losses = {}
    for net in (model, twin):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
        losses[net.backend] = []
        for _ in range(4):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = net(x)
                loss = loss_function(task, net.backend)(out, y)
            assert out.dtype == torch.bfloat16
            loss.backward()
            assert all(p.grad.dtype == torch.float32 for p in net.parameters())
            optimizer.step()
            losses[net.backend].append(float(loss.detach()))
    # bf16 keeps 8 bits of mantissa: the two paths round differently, agree to a few ulps.
    torch.testing.assert_close(
        torch.tensor(losses["manual"]), torch.tensor(losses["autograd"]), rtol=3e-2, atol=3e-2
    )
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=2e-2, atol=2e-2, msg=name)


# --- pickling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_model_pickles_whole(activation, tmp_path: Path):
    model = FeedForward(3, [4], 2, activation=activation, seed=1)
    x = torch.randn(5, 3)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    joblib.dump(model, tmp_path / "model.joblib")
    copies = [
        pickle.loads(pickle.dumps(model)),
        torch.load(buffer, weights_only=False),
        joblib.load(tmp_path / "model.joblib"),
    ]
    for copy in copies:
        assert copy.activation is ACTIVATIONS[activation]  # the table's entry, found by name
        torch.testing.assert_close(copy(x), model(x), rtol=0, atol=0)
        copy(x).sum().backward()
        assert type(copy(x).grad_fn).__name__ == "LinearFunctionBackward"


# --- edge cases: agree with torch, or refuse clearly -------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_elu_derivative_is_exact_in_its_negative_tail(dtype):
    z = -torch.tensor([1.0, 10.0, 17.0, 30.0, 80.0], dtype=dtype)
    for alpha in (1.0, 0.5):
        zz = z.clone().requires_grad_()
        ACTIVATIONS["elu"](zz, alpha).sum().backward()
        ref = z.clone().requires_grad_()
        F.elu(ref, alpha).sum().backward()
        assert (zz.grad > 0).all()  # alpha exp(z) > 0, never cancelled to 0
        torch.testing.assert_close(zz.grad, ref.grad, rtol=4 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("bad", [[0, -100, 1], [0, 2, 1], [0, -1, 1]], ids=["-100", "M", "-1"])
def test_cross_entropy_refuses_labels_outside_the_classes_in_forward(bad):
    logits = torch.randn(3, 2, dtype=F64, requires_grad=True)
    with pytest.raises(IndexError, match="out of bounds"):
        softmax_cross_entropy(logits, torch.tensor(bad))


def test_cross_entropy_refuses_non_int64_labels_in_forward():
    logits = torch.randn(3, 2, dtype=F64, requires_grad=True)
    for dtype in (torch.uint8, torch.int32, torch.float64):
        with pytest.raises(ValueError, match="int64 class labels"):
            softmax_cross_entropy(logits, torch.tensor([0, 1, 1], dtype=dtype))


@pytest.mark.parametrize("task", TASKS)
def test_empty_batch_gives_nan_like_torch(task):
    pred = torch.zeros(0, 2, dtype=F64, requires_grad=True)
    target = torch.zeros(0, dtype=torch.int64) if task == "classification" else torch.zeros(0, 2)
    target = target if task == "classification" else target.to(F64)
    loss = loss_function(task)(pred, target)
    native = loss_function(task, "autograd")(pred, target)
    assert torch.isnan(loss) and torch.isnan(native)
    loss.backward()
    assert pred.grad.shape == (0, 2)


def test_mse_refuses_mismatched_shapes_instead_of_broadcasting():
    pred = torch.zeros(4, 1, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=r"same shape.*\(4, 1\) and \(4,\)"):
        mse(pred, torch.zeros(4, dtype=F64))


def test_functions_module_does_not_import_the_activation_table():
    """functions.py is the formulas; activations.py builds on it, never the other way round."""
    source = (Path(__file__).parents[1] / "ffn" / "functions.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {m for m in imported if m.startswith("ffn")}, imported
