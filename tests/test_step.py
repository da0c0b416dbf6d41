"""The graph-free step against the autograd Functions and the autograd twin, and optimizers.

Every activation in the table x both tasks x no / one / two hidden layers: `manual_gradients`
must give the gradients that `loss.backward()` gives through the hand-written Functions and
through torch's own ops, in float64 to 1e-10. `train_step` must equal the autograd loop it
replaces, for SGD, momentum and Adam and for every entry of the penalty table.
"""

from __future__ import annotations

import copy
import types
import warnings

import pytest
import torch
from penalty_cases import CASE_IDS, CASES

from ffn import ACTIVATIONS, ConfigError, FeedForward, Penalty, functions
from ffn.losses import TASKS, loss_function
from ffn.step import (
    autograd_train_step,
    compile_gradients,
    is_fused_adam,
    is_plain_sgd,
    manual_gradients,
    optimizer_step,
    sgd_update_,
    train_step,
)

F64 = torch.float64
CLOSE = {"rtol": 1e-10, "atol": 1e-10}
HIDDEN = {"no-hidden": [], "one-hidden": [5], "two-hidden": [5, 4]}


def problem(task: str, n: int = 7, d: int = 3, m: int = 3, seed: int = 0):
    """x: (n, d) float64; y: (n,) labels or (n, m) float64 targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    if task == "classification":
        return x, torch.randint(0, m, (n,), generator=g)
    return x, torch.randn(n, m, generator=g, dtype=F64)


def autograd_gradients(model: FeedForward, x, y, task: str) -> tuple[torch.Tensor, list]:
    """Loss and gradients from loss.backward() on the model's own backend."""
    model.zero_grad(set_to_none=True)
    loss = loss_function(task, model.backend)(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("hidden", list(HIDDEN.values()), ids=list(HIDDEN))
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_gradients_equal_functions_and_twin(name, task, hidden):
    model = FeedForward(3, hidden, 3, activation=name, dtype=F64, seed=1)
    x, y = problem(task)
    loss = manual_gradients(model, x, y, task)
    grads = [p.grad.clone() for p in model.parameters()]
    for backend in ("manual", "autograd"):
        ref_loss, ref_grads = autograd_gradients(model.with_backend(backend), x, y, task)
        torch.testing.assert_close(loss, ref_loss, **CLOSE)
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, **CLOSE)


@pytest.mark.parametrize("task", TASKS)
def test_gradients_with_narrow_outputs_equal_the_plain_layouts(task, monkeypatch):
    """200 rows, 10 outputs: products computed transposed (functions.matmul, where MKL takes
    its slower paths), same gradients."""
    monkeypatch.setattr(functions, "MKL_SLOW_PATHS", True)
    model = FeedForward(8, [64], 10, dtype=F64, seed=2)
    x, y = problem(task, n=200, d=8, m=10)
    assert functions.matmul(x.new_ones(200, 64), model.layers[1].weight).stride() == (1, 200)
    loss = manual_gradients(model, x, y, task)
    grads = [p.grad.clone() for p in model.parameters()]
    monkeypatch.setattr(functions, "_NARROW_COLUMNS", range(0))  # the plain products
    assert functions.linear_forward(x, model.layers[0].weight, None).is_contiguous()
    torch.testing.assert_close(manual_gradients(model, x, y, task), loss, **CLOSE)
    for got, p in zip(grads, model.parameters(), strict=True):
        assert got.stride() == p.stride()
        torch.testing.assert_close(got, p.grad, **CLOSE)


@pytest.mark.parametrize("name", [n for n, e in ACTIVATIONS.items() if e.param_name])
def test_gradients_with_non_default_activation_param(name):
    model = FeedForward(3, [6, 4], 2, activation=name, activation_param=0.3, dtype=F64)
    x, y = problem("classification", m=2)
    manual_gradients(model, x, y, "classification")
    _, ref = autograd_gradients(model.with_backend("autograd"), x, y, "classification")
    for p, want in zip(model.parameters(), ref, strict=True):
        torch.testing.assert_close(p.grad, want, **CLOSE)


def test_gradients_without_bias():
    model = FeedForward(3, [5], 3, bias=False, dtype=F64)
    x, y = problem("regression")
    manual_gradients(model, x, y, "regression")
    _, ref = autograd_gradients(model.with_backend("autograd"), x, y, "regression")
    assert len(ref) == 2  # weights only
    for p, want in zip(model.parameters(), ref, strict=True):
        torch.testing.assert_close(p.grad, want, **CLOSE)


def test_gradients_overwrite_and_build_no_graph():
    model = FeedForward(3, [5], 3, dtype=F64)
    x, y = problem("classification")
    first = manual_gradients(model, x, y, "classification")
    grads = [p.grad.clone() for p in model.parameters()]
    second = manual_gradients(model, x, y, "classification")  # overwrites, not accumulates
    for p, want in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=0, atol=0)
        assert p.grad.grad_fn is None
    assert first.ndim == 0 and not second.requires_grad and second.grad_fn is None


def test_unknown_task_is_a_config_error():
    model = FeedForward(3, [], 3)
    x, y = problem("classification")
    with pytest.raises(ConfigError, match=r"dataset\.task"):
        manual_gradients(model, x.float(), y, "ranking")


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=3e-3),
}


@pytest.mark.usefixtures("penalty_table")
@pytest.mark.parametrize(("name", "method"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("task", TASKS)
def test_train_step_equals_backward_and_optimizer_step(task, opt, name, method):
    # every table entry (and the tests' group lasso), biases penalised too: both kinds of tensor
    penalty = Penalty(name, lam=0.05, method=method, l1_ratio=0.3, include_bias=True)
    model = FeedForward(3, [5, 4], 3, activation="tanh", dtype=F64, seed=2)
    twin = copy.deepcopy(model)
    optimizer = OPTIMIZERS[opt](model.parameters())
    twin_optimizer = OPTIMIZERS[opt](twin.parameters())
    for step in range(3):  # momentum buffers and Adam's moments carry over between steps
        x, y = problem(task, seed=step)
        loss = train_step(model, optimizer, penalty, x, y, task)
        ref_loss = autograd_train_step(twin, twin_optimizer, penalty, x, y, task)
        torch.testing.assert_close(loss, ref_loss, **CLOSE)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p, q, **CLOSE)
    if penalty.proximal:  # the prox ran: some weights sit exactly at zero, as in the twin
        zeros = [(p == 0) for p in penalty.parameters(model)]
        twin_zeros = [(q == 0) for q in penalty.parameters(twin)]
        assert all(torch.equal(a, b) for a, b in zip(zeros, twin_zeros, strict=True))


@pytest.mark.usefixtures("penalty_table")
@pytest.mark.parametrize("task", TASKS)
def test_a_new_table_entry_is_applied_by_both_steps_prox_included(task):
    # The group lasso of tests/penalty_cases.py, known to ffn only as one PENALTIES entry: the
    # graph-free step must apply it as the autograd step does, down to the same zeroed rows.
    penalty = Penalty("group_lasso", lam=0.5)
    model = FeedForward(6, [5], 3, activation="tanh", dtype=F64, seed=3)
    twin = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.2)
    for step in range(5):
        x, y = problem(task, d=6, seed=step)
        train_step(model, optimizer, penalty, x, y, task)
        autograd_train_step(twin, twin_optimizer, penalty, x, y, task)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, **CLOSE)
    zero_rows = [(w == 0).all(dim=1) for w in model.weights()]
    assert sum(int(rows.sum()) for rows in zero_rows) > 0  # the prox zeroed whole rows ...
    assert all(not rows.all() for rows in zero_rows)  # ... but not every row of a layer
    for rows, w in zip(zero_rows, twin.weights(), strict=True):
        assert torch.equal(rows, (w == 0).all(dim=1))


def test_sgd_update_equals_torch_sgd():
    model = FeedForward(3, [5], 3, dtype=F64)
    twin = copy.deepcopy(model)
    x, y = problem("classification")
    manual_gradients(model, x, y, "classification")
    manual_gradients(twin, x, y, "classification")
    sgd_update_(list(model.parameters()), lr=0.1)
    torch.optim.SGD(twin.parameters(), lr=0.1).step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.slow  # tracing with torch.compile: seconds
def test_compiled_gradients_equal_eager():
    # aot_eager traces what inductor would compile (the .grad writes, the in-place ops) in about
    # a second; inductor's own code generation takes several and is timed by the benchmark.
    model = FeedForward(3, [5], 3, dtype=F64)
    x, y = problem("classification")
    loss = manual_gradients(model, x, y, "classification")
    grads = [p.grad.clone() for p in model.parameters()]
    compiled_loss = compile_gradients(backend="aot_eager")(model, x, y, "classification")
    torch.testing.assert_close(compiled_loss, loss, **CLOSE)
    for p, want in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, want, **CLOSE)


def _step_beside_torch(fast, opt_fast, slow, opt_slow, penalty, x, y):
    """Four train_steps on `fast` beside manual gradients + torch.optim's step on `slow`, each
    under ExponentialLR(0.5) (a warning fails). train_step must call torch.optim's step once only
    (the first step), else its fast update was never taken."""
    through_torch = []
    torch_step = opt_fast.step

    def counted_step(self, *args, **kwargs):
        through_torch.append(1)
        return torch_step(*args, **kwargs)

    # A bound method, set before the scheduler wraps it (as it wraps torch's own step).
    opt_fast.step = types.MethodType(counted_step, opt_fast)
    sched_fast, sched_slow = (
        torch.optim.lr_scheduler.ExponentialLR(o, 0.5) for o in (opt_fast, opt_slow)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            train_step(fast, opt_fast, penalty, x, y, "classification")
            sched_fast.step()
            manual_gradients(slow, x, y, "classification")
            penalty.add_gradient_(penalty.parameters(slow))
            opt_slow.step()
            sched_slow.step()
    assert len(through_torch) == 1


def test_plain_sgd_fast_update_is_bitwise_sgd_with_a_schedule() -> None:
    # train_step updates plain SGD with one foreach kernel after the first step; the parameters
    # must stay bitwise those of torch.optim.SGD.step(), the learning rate must follow the
    # schedule, and the scheduler must not warn that the optimizer never stepped.
    torch.manual_seed(0)
    fast = FeedForward(4, [8], 3, seed=0, dtype=torch.float64)
    slow = copy.deepcopy(fast)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    penalty = Penalty("l2", 0.01)
    opt_fast, opt_slow = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (fast, slow))
    assert is_plain_sgd(opt_fast)
    _step_beside_torch(fast, opt_fast, slow, opt_slow, penalty, x, y)
    for a, b in zip(fast.parameters(), slow.parameters(), strict=True):
        assert torch.equal(a, b)
    momentum = torch.optim.SGD(fast.parameters(), lr=0.1, momentum=0.9)
    assert not is_plain_sgd(momentum)


@pytest.mark.parametrize("settings", [{}, {"weight_decay": 0.1}, {"decoupled_weight_decay": True}])
def test_fused_adam_fast_update_is_bitwise_torchs_with_a_schedule(settings) -> None:
    # train_step calls fused Adam's kernel directly after the first step: parameters and state
    # (moments, step counts) must stay bitwise those of torch.optim.Adam(fused=True).step().
    fast = FeedForward(4, [8], 3, seed=0, dtype=torch.float64)
    slow = copy.deepcopy(fast)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    penalty = Penalty("l2", 0.01)
    opt_fast, opt_slow = (
        torch.optim.Adam(m.parameters(), lr=0.01, fused=True, **settings) for m in (fast, slow)
    )
    assert is_fused_adam(opt_fast)
    _step_beside_torch(fast, opt_fast, slow, opt_slow, penalty, x, y)
    for a, b in zip(fast.parameters(), slow.parameters(), strict=True):
        assert torch.equal(a, b)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_fast.state[a][key], opt_slow.state[b][key])
    assert opt_fast.state_dict()["param_groups"] == opt_slow.state_dict()["param_groups"]


def test_fused_adam_fast_update_leaves_what_it_cannot_do_to_torch() -> None:
    model = FeedForward(4, [8], 3, seed=0, dtype=torch.float64)
    params = list(model.parameters())
    assert not is_fused_adam(torch.optim.Adam(params))  # foreach, not fused
    assert not is_fused_adam(torch.optim.Adam(params, fused=True, amsgrad=True))
    hooked = torch.optim.Adam(params, fused=True)
    calls = []
    hooked.register_step_post_hook(lambda *_: calls.append(1))
    assert not is_fused_adam(hooked)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    for _ in range(3):
        train_step(model, hooked, None, x, y, "classification")
    assert len(calls) == 3  # every step through torch.optim, so the hook ran every time


def _runner_config(**trainer: object):
    """The default config on iris, quick and quiet, with `trainer` keys overridden."""
    from omegaconf import OmegaConf

    from ffn.config import Config

    cfg = OmegaConf.structured(Config)
    cfg.dataset.name = "iris"
    cfg.trainer.merge_with(
        {"max_epochs": 2, "histogram_every": 0, "figures": False, "progress": False, **trainer}
    )
    return cfg


@pytest.mark.slow
def test_runner_compile_trains_like_eager(tmp_path) -> None:
    # trainer.compile=true swaps in torch.compile'd gradients (inductor, the real backend): the
    # run must end where the eager run ends, up to float32 reassociation in fused kernels.
    from ffn.train import train

    threads = torch.get_num_threads()
    try:
        eager = train(_runner_config(), tmp_path / "eager")
        compiled = train(_runner_config(compile=True), tmp_path / "compiled")
    finally:
        torch.set_num_threads(threads)
    assert compiled.steps == eager.steps
    for key, value in eager.metrics.items():
        assert compiled.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["manual", "autograd"])
def test_runner_autograd_step_trains_like_the_graph_free_step(tmp_path, backend) -> None:
    # trainer.step picks the step, model.backend the forward's ops: in float64 every choice
    # must end where the graph-free run ends.
    from ffn.train import train

    graph_free = train(_runner_config(dtype="float64"), tmp_path / "graph_free")
    cfg = _runner_config(dtype="float64", step="autograd")
    cfg.model.backend = backend
    through_autograd = train(cfg, tmp_path / backend)
    assert through_autograd.steps == graph_free.steps
    for key, value in graph_free.metrics.items():
        assert through_autograd.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_runner_graph_free_step_refuses_the_autograd_backend(tmp_path) -> None:
    from ffn.train import train

    cfg = _runner_config()
    cfg.model.backend = "autograd"
    with pytest.raises(ConfigError, match=r"model\.backend.*trainer\.step=autograd"):
        train(cfg, tmp_path)


def test_runner_compile_refuses_the_autograd_backend(tmp_path) -> None:
    from ffn.train import train

    cfg = _runner_config(compile=True)
    cfg.model.backend = "autograd"
    with pytest.raises(ConfigError, match=r"trainer\.compile"):
        train(cfg, tmp_path)


def test_the_loss_table_has_one_loss_per_task():
    from ffn.constants import TASKS as NAMED
    from ffn.losses import LOSSES

    assert tuple(LOSSES) == NAMED


def test_fused_adam_steps_a_strided_gradient_as_its_contiguous_copy():
    # torch 2.13's CPU fused Adam reads a strided gradient as if it were contiguous: a
    # transposed (column-major) gradient stepped each element with another's gradient. Both
    # of optimizer_step's paths (torch.optim's first step, the direct fused update after it)
    # must step as the non-fused Adam does.
    torch.manual_seed(0)
    start = torch.randn(64, 10, dtype=torch.float32)
    grads = [torch.randn(10, 64).mT for _ in range(3)]  # column-major (64, 10)
    assert not grads[0].is_contiguous()
    fused_p = torch.nn.Parameter(start.clone())
    plain_p = torch.nn.Parameter(start.clone())
    fused = torch.optim.Adam([fused_p], lr=0.1, fused=True)
    plain = torch.optim.Adam([plain_p], lr=0.1, foreach=False)
    for grad in grads:
        fused_p.grad, plain_p.grad = grad.clone().mT.contiguous().mT, grad.clone()
        assert not fused_p.grad.is_contiguous()
        optimizer_step(fused)
        plain.step()
        torch.testing.assert_close(fused_p.detach(), plain_p.detach(), rtol=1e-6, atol=1e-6)


def _flushing() -> bool:
    """Does this thread treat subnormal floats as zero now (DAZ: a subnormal input reads 0)?"""
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 1.0)[0] == 0)


def _subnormal(t: torch.Tensor) -> torch.Tensor:
    return (t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_train_step_flushes_subnormals_in_its_gradients_only(dtype) -> None:
    """A confident classifier's softmax underflows to subnormal probabilities: train_step's
    gradients are computed flushed, the optimizer steps unflushed, the thread ends as it began,
    and three steps end within float tolerance of the unflushed formulas' steps (here bitwise:
    the flushed terms vanish in the batch's sums)."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals (not x86)")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 8, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (64,), generator=g)
    model = FeedForward(8, [16], 10, seed=1, dtype=dtype)
    with torch.no_grad():  # logits tens (float32) or hundreds (float64) apart
        model.layers[-1].weight.mul_(60.0 if dtype == torch.float32 else 1000.0)
    probabilities = torch.softmax(model(x), -1)
    assert _subnormal(probabilities).any()
    reference = copy.deepcopy(model)
    flushed_during: list[bool] = []

    def recorded(*args):
        flushed_during.append(_flushing())
        return manual_gradients(*args)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    optimizer.register_step_pre_hook(lambda *_: flushed_during.append(_flushing()))
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):
        loss = train_step(model, optimizer, None, x, y, "classification", gradients=recorded)
        ref_loss = manual_gradients(reference, x, y, "classification")
        ref_optimizer.step()
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-30)
    assert flushed_during == [True, False] * 3 and not _flushing()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


def test_flushed_subnormals_ends_unflushed_on_an_error() -> None:
    from ffn.step import flushed_subnormals

    with pytest.raises(RuntimeError, match="inside"), flushed_subnormals():
        raise RuntimeError("inside")
    assert not _flushing()
