"""The graph-free training step: the hand-written formulas chained by hand, no autograd graph.

`manual_gradients` runs the same formula functions the autograd Functions run (`linear_forward`,
`activation.forward`, the loss's forward, then each backward in reverse), keeping per layer only
what the table entry says its derivative needs. Small networks spend most of an autograd step on
graph bookkeeping; here there is none, so a step is the kernels plus a thin Python loop.

`train_step` adds the penalty and the optimizer around it, in the order the runner uses, so any
`torch.optim` optimizer built from a `_target_` works. `sgd_update_` is a one-kernel plain SGD for
benchmarks and loops that own the learning rate; `compile_gradients` is the opt-in `torch.compile`
of `manual_gradients`.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.optim import optimizer as torch_optimizer

from ffn.eager_optim import eager_class
from ffn.errors import ConfigError
from ffn.functions import linear_backward, linear_forward
from ffn.lbfgs import FlatLBFGS
from ffn.losses import loss_function, task_loss
from ffn.model import FeedForward
from ffn.penalties import Penalty

STEPS = ("graph_free", "autograd")  # trainer.step
StepFunction = Callable[..., Tensor]  # (model, optimizer, penalty, x, y, task) -> loss


@contextlib.contextmanager
def flushed_subnormals() -> Iterator[None]:
    """Inside, the CPU treats subnormal floats as zero, in and out (x86's DAZ and FTZ; this
    thread only: a run, and an ensemble's stack, trains on one).

    A trained classifier's softmax underflows: probabilities below 1.2e-38 (float32) are
    subnormal, and so are its deltas, and every product with them takes a microcode assist on
    Intel. `train_step`'s gradients and an ensemble's batched ones (ffn/ensemble/group.py) are
    computed inside. Measured (Xeon, one thread): the 32-job digits ensemble's batched gradients
    1.75 ms a step in its first ten epochs, 3.6 ms in its last ninety, 1.8 ms throughout
    flushed; a single digits run at lr 0.05 (train loss 1.5e-7 at its end) 1.40 -> 0.82 s of
    steps, the same end metrics. A flushed term is below 1.2e-38 (float32; 2.2e-308 float64),
    so each gradient moves by less than its rounding does. The optimizer steps outside,
    unflushed: torch.optim's own arithmetic, on both launchers alike. Elsewhere than x86
    nothing changes; a pair of calls costs ~0.2 us.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's default, which ffn never changes elsewhere


def manual_gradients(model: FeedForward, x: Tensor, y: Tensor, task: str) -> Tensor:
    """Set p.grad = d loss / d p for every parameter (overwriting) and return the loss.

    x: (n, d); y: (n,) int64 class labels for classification, (n, M) targets for regression.
    The loss is a 0-dim tensor left on the device: no host sync happens here. The model's
    `backend` plays no part: the formulas are called directly, under `torch.no_grad()`.
    """
    loss_and_delta = task_loss(task).value_and_delta
    act, param = model.activation, model.activation_param
    keep_output = act.saves == "output"
    params = model.layer_parameters()
    with torch.no_grad():
        inputs = [x]  # the input of every layer: x, then each hidden h
        saved = []  # what each hidden layer's g' is computed from: h or z
        h = x
        for weight, bias in params[:-1]:
            # z is ours alone: g may write h into it (only an entry whose g' reads h has an
            # in-place forward, Activation.__post_init__ makes sure)
            z = linear_forward(h, weight, bias)
            h = act.forward_in_place(z, param)
            saved.append(h if keep_output else z)
            inputs.append(h)
        weight, bias = params[-1]
        loss, delta = loss_and_delta(linear_forward(h, weight, bias), y)
        for i in range(len(params) - 1, -1, -1):
            weight, bias = params[i]
            grad_x, weight.grad, grad_b = linear_backward(
                delta, inputs[i], weight, i > 0, bias is not None
            )
            if bias is not None:
                bias.grad = grad_b
            if i > 0:
                # dz = dh * g'(saved), the Function's formula; grad_x is ours to multiply in place.
                delta = act.times_derivative_(grad_x, saved[i - 1], param)
    return loss


def sgd_update_(params: Sequence[Tensor], lr: float) -> None:
    """p <- p - lr p.grad for every p with a gradient: plain SGD (no momentum) in one kernel.

    What `torch.optim.SGD(params, lr).step()` computes, without its per-step bookkeeping (on CPU
    it loops `add_` per tensor, inside a profiler range and hook checks).
    """
    params = [p for p in params if p.grad is not None]
    with torch.no_grad():
        torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)


# Optimizers that have taken one step through torch.optim (which LR schedulers watch for).
_STEPPED: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()


def is_plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """torch.optim.SGD without momentum, weight decay or maximize: p <- p - lr grad."""
    return type(optimizer) in (torch.optim.SGD, eager_class(torch.optim.SGD)) and all(
        not g["momentum"] and not g["weight_decay"] and not g["maximize"]
        for g in optimizer.param_groups
    )


def is_fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    """torch.optim.Adam with fused=True, float lr and betas, none of amsgrad, capturable,
    differentiable, a grad scaler or a step hook: what `fused_adam_update_` computes."""
    return (
        type(optimizer) in (torch.optim.Adam, eager_class(torch.optim.Adam))
        and not _has_step_hooks(optimizer)
        and getattr(optimizer, "grad_scale", None) is None
        and getattr(optimizer, "found_inf", None) is None
        and all(
            g["fused"]
            and not (g["amsgrad"] or g["capturable"] or g["differentiable"])
            and isinstance(g["lr"], float)
            and all(isinstance(b, float) for b in g["betas"])
            for g in optimizer.param_groups
        )
    )


def _has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Any step pre/post hook, the optimizer's own or global (torch.optim's registries)."""
    return bool(
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or torch_optimizer._global_optimizer_pre_hooks
        or torch_optimizer._global_optimizer_post_hooks
    )


def fused_adam_update_(optimizer: torch.optim.Adam) -> bool:
    """Adam's fused step on the optimizer's own state: the two calls torch.optim's `_fused_adam`
    makes (count the step, then the one kernel), without the Python around them.

    False (nothing done) if a parameter with a gradient has no state yet, or the parameters'
    devices or dtypes differ: then `optimizer.step()` must run.
    """
    state = optimizer.state
    work = []  # per param group: its tensors, gathered in one pass before anything is updated
    for group in optimizer.param_groups:
        params, grads, averages, squares, steps = [], [], [], [], []
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            p_state = state.get(p)
            if not p_state:
                return False
            params.append(p)
            grads.append(contiguous_gradient(p))
            averages.append(p_state["exp_avg"])
            squares.append(p_state["exp_avg_sq"])
            steps.append(p_state["step"])
        if params:
            first = params[0]
            kind = (first.dtype, first.device)
            if any(p.dtype != kind[0] or p.device != kind[1] for p in params[1:]):
                return False
            work.append((group, params, grads, averages, squares, steps))
    for group, params, grads, averages, squares, steps in work:
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, [_one(step.dtype, step.device) for step in steps])
        fused = torch._fused_adamw_ if group.get("decoupled_weight_decay") else torch._fused_adam_
        fused(
            params,
            grads,
            averages,
            squares,
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            grad_scale=None,
            found_inf=None,
        )
    return True


def contiguous_gradient(p: Tensor) -> Tensor:
    """p.grad, made contiguous in place if it is not: torch 2.13's CPU fused Adam reads a
    strided gradient as if it were contiguous (a transposed one steps every element with
    another element's gradient, silently), whether called directly or through torch.optim."""
    grad = p.grad
    if not grad.is_contiguous():
        grad = p.grad = grad.contiguous()
    return grad


@functools.cache
def _one(dtype: torch.dtype, device: torch.device) -> Tensor:
    """1 as a 0-dim tensor, what each of Adam's step counts gets added (the same sums as adding
    the number 1): on the CPU, `_foreach_add_` with a number wraps it into a tensor, fills and
    casts it for every count, 7.4 us for four counts against 3.0 with a list of tensors."""
    return torch.ones((), dtype=dtype, device=device)


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()`, with plain SGD's and fused Adam's updates called directly.

    The same arithmetic as torch's own step (plain SGD: p.add_(grad, alpha=-lr), one foreach
    kernel per param group; fused Adam: torch's fused kernel on the optimizer's state), without
    its per-call bookkeeping, which costs as much as a whole tiny step (Adam's: its profiler
    range, hook checks, state gathering and grouping by device, 4x the kernel's time). The
    first step still goes through torch.optim, so that an LR scheduler sees the optimizer has
    stepped and Adam's state exists; the learning rate is read from the param group every
    time, so schedules keep working. The direct updates skip the profiler's "Optimizer.step"
    range; Adam with a step hook goes through torch.optim.
    """
    if optimizer in _STEPPED:
        if is_plain_sgd(optimizer):
            for group in optimizer.param_groups:
                sgd_update_(group["params"], group["lr"])
            return
        if is_fused_adam(optimizer) and fused_adam_update_(optimizer):
            return
    if is_fused_adam(optimizer):  # torch.optim's own fused step has the same flaw
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    contiguous_gradient(p)
    optimizer.step()
    _STEPPED.add(optimizer)


def train_step(
    model: FeedForward,
    optimizer: torch.optim.Optimizer,
    penalty: Penalty | None,
    x: Tensor,
    y: Tensor,
    task: str,
    gradients: Callable[[FeedForward, Tensor, Tensor, str], Tensor] = manual_gradients,
) -> Tensor:
    """One step: gradients by hand, + penalty gradient, optimizer step, proximal l1 step.

    `gradients` is `manual_gradients` or its compiled twin (`compile_gradients()`), computed
    with subnormals flushed (`flushed_subnormals`).

    Equals `optimizer.zero_grad(); loss.backward(); penalty.add_gradient_(...); optimizer.step();
    penalty.proximal_step_(...)` on the autograd path. Returns the data loss (0-dim, on device).
    """
    with flushed_subnormals():
        loss = gradients(model, x, y, task)
    active = penalty is not None and penalty.active
    if active:
        penalised = penalty.parameters(model)
        penalty.add_gradient_(penalised)
    optimizer_step(optimizer)
    if active:
        penalty.proximal_step_(optimizer, penalised)
    return loss


def autograd_train_step(
    model: FeedForward,
    optimizer: torch.optim.Optimizer,
    penalty: Penalty,
    x: Tensor,
    y: Tensor,
    task: str,
) -> Tensor:
    """The same step through an autograd graph (`trainer.step=autograd`), the forward running
    on the model's backend: the hand-written Functions or torch's own ops."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_function(task, model.backend)(model(x), y)
    loss.backward()
    penalised = penalty.parameters(model)
    penalty.add_gradient_(penalised)
    optimizer.step()
    penalty.proximal_step_(optimizer, penalised)
    return loss.detach()


def compile_gradients(**compile_kwargs) -> Callable[[FeedForward, Tensor, Tensor, str], Tensor]:
    """Opt-in: `torch.compile(manual_gradients)`; pays only after warm-up, if at all on CPU."""
    # Static shapes: with dynamic ones the CE backward's -1/n becomes a symbolic float that
    # inductor cannot hand to scatter_ (torch 2.13). A last, smaller batch compiles once more;
    # every new model or shape adds a graph, up to dynamo's cache limit (then it runs eagerly).
    compile_kwargs.setdefault("dynamic", False)
    return torch.compile(manual_gradients, **compile_kwargs)


def check_step(step: str, backend: str, compile: bool) -> None:
    """trainer.step, trainer.compile and model.backend together: a step that can run."""
    if step not in STEPS:
        raise ConfigError("trainer.step", step, "one of " + ", ".join(STEPS))
    if compile and (step != "graph_free" or backend != "manual"):
        allowed = "false unless trainer.step=graph_free and model.backend=manual (it compiles the "
        raise ConfigError("trainer.compile", compile, allowed + "graph-free step)")
    if step == "graph_free" and backend != "manual":
        allowed = (
            "manual with trainer.step=graph_free, which runs the hand-written formulas whatever "
            "the backend; set trainer.step=autograd to train through torch's own ops"
        )
        raise ConfigError("model.backend", backend, allowed)


def choose_step(step: str, backend: str, compile: bool) -> StepFunction:
    """The runner's training step: `train_step` (graph-free, compiled if asked) or
    `autograd_train_step`."""
    check_step(step, backend, compile)
    if step == "autograd":
        return autograd_train_step
    if compile:
        return functools.partial(train_step, gradients=compile_gradients())
    return train_step


def autograd_gradients(model: FeedForward, x: Tensor, y: Tensor, task: str) -> Tensor:
    """`manual_gradients` through an autograd graph (model.backend's ops): p.grad set, loss back."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = loss_function(task, model.backend)(model(x), y)
        loss.backward()
    return loss.detach()


def check_smooth(penalty: Penalty | None, key: str = "penalty.name") -> None:
    """L-BFGS needs a differentiable objective: refuse any l1 part in one line."""
    if penalty is not None and penalty.nonsmooth_weight:
        raise ConfigError(
            key,
            penalty.name,
            "none or l2 with optimizer=lbfgs (l1 is non-smooth: use its proximal method "
            "with optimizer=gd or optimizer=sgd)",
        )


def lbfgs_step(
    model: FeedForward,
    optimizer: torch.optim.LBFGS,
    penalty: Penalty | None,
    x: Tensor,
    y: Tensor,
    task: str,
    gradients: Callable[[FeedForward, Tensor, Tensor, str], Tensor] = manual_gradients,
) -> Tensor:
    """`optimizer.step(closure)`: the closure is `gradients` plus the penalty's (smooth) gradient.

    x, y: the whole training set (L-BFGS is a full-batch method). The closure returns the
    objective l_n(w) + g(w), which the line search minimises; the step returns the data loss
    l_n at the point the step started from (0-dim), as `train_step` does.
    """
    check_smooth(penalty)
    active = penalty is not None and penalty.smooth_weight > 0
    penalised = penalty.parameters(model) if active else []
    params = [p for group in optimizer.param_groups for p in group["params"]]
    flat = optimizer.flat_buffer() if isinstance(optimizer, FlatLBFGS) else None
    point = params if flat is None else [flat]  # what the parameters' values are read from
    data = (x, y, penalty, gradients)
    cache = _LAST_EVALUATION.get(optimizer)
    losses: list[Tensor] = []

    def closure() -> Tensor:
        # torch's LBFGS starts every step by evaluating the point its last line search ended
        # on; that point was usually its last evaluation, so the cached value is reused.
        if cache is not None and cache.holds(point, params, data):
            loss, objective = cache.restore(params)
        else:
            loss = gradients(model, x, y, task)
            objective = loss
            if active:
                penalty.add_gradient_(penalised)
                with torch.no_grad():
                    objective = loss + penalty.smooth_value(penalised).to(loss)
            _LAST_EVALUATION[optimizer] = _Evaluation.of(point, params, data, loss, objective)
        losses.append(loss)
        return objective

    direct = _direct_step(optimizer)
    if direct is None:
        optimizer.step(closure)
        _STEPPED.add(optimizer)
    else:
        direct(optimizer, closure)
    return losses[0]


def _direct_step(optimizer: torch.optim.Optimizer) -> Callable | None:
    """FlatLBFGS's step without torch.optim's hook wrapper, where nothing else must see the
    call: it has stepped through torch.optim once (an LR scheduler checks that), it has no step
    hooks, and no one replaced its step on the instance but an LR scheduler's counter. The
    wrapper (its profiler range, the hook loops) cost a digits L-BFGS fit ~50 us an iteration:
    33 iterations, fits alternating in one process, medians of 30, Intel Xeon, 51.6 -> 49.8 ms
    of CPU. The profiler's "Optimizer.step" range is skipped, as for the direct Adam update."""
    if not (isinstance(optimizer, FlatLBFGS) and optimizer in _STEPPED):
        return None
    replaced = vars(optimizer).get("step")
    if replaced is not None and not getattr(replaced, "_wrapped_by_lr_sched", False):
        return None
    step = type(optimizer).step
    if _has_step_hooks(optimizer) or not getattr(step, "hooked", False):
        return None
    return step.__wrapped__


class _Evaluation:
    """A point the closure was evaluated at, on which data: gradients, loss and objective.

    The point is a copy (of the flat buffer, or of each parameter); the gradients are the
    tensors the closure left, with their version counters: an in-place change to one since
    (zero_grad(set_to_none=False)) makes the evaluation stale.
    """

    def __init__(self, point, data, grads, versions, loss: Tensor, objective: Tensor) -> None:
        self.point, self.data, self.grads, self.versions = point, data, grads, versions
        self.loss, self.objective = loss, objective

    @classmethod
    def of(cls, point: list[Tensor], params: list[Tensor], data: tuple, loss, objective):
        grads = [p.grad for p in params]
        versions = [None if g is None else g._version for g in grads]
        return cls([t.detach().clone() for t in point], data, grads, versions, loss, objective)

    def holds(self, point: list[Tensor], params: list[Tensor], data: tuple) -> bool:
        """The same x, y and gradients (objects), an equal penalty, the point bitwise the same,
        the saved gradients unchanged."""
        (x, y, penalty, gradients), (x2, y2, penalty2, gradients2) = self.data, data
        same = x is x2 and y is y2 and gradients is gradients2 and penalty == penalty2
        return (
            same
            and len(point) == len(self.point)
            and all(
                g is None or g._version == v for g, v in zip(self.grads, self.versions, strict=True)
            )
            and all(torch.equal(p, q) for p, q in zip(point, self.point, strict=True))
        )

    def restore(self, params: list[Tensor]) -> tuple[Tensor, Tensor]:
        for p, g in zip(params, self.grads, strict=True):
            p.grad = None if g is None else g.clone()
        return self.loss, self.objective


_LAST_EVALUATION: weakref.WeakKeyDictionary[torch.optim.Optimizer, _Evaluation] = (
    weakref.WeakKeyDictionary()
)
