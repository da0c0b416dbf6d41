"""Evaluation: the loss and the task's metric (accuracy or R^2) on one split."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ffn.functions import linear_forward, mse_forward, softmax_cross_entropy_value
from ffn.losses import loss_function
from ffn.model import FeedForward

if TYPE_CHECKING:
    from ffn.penalties import Penalty


def accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """Fraction of argmax predictions equal to the class.  logits: (n, M), target: (n,) -> ()."""
    # max's indices are argmax's (the first of equal maxima, a NaN counted as the maximum:
    # tests/test_bookkeeping.py), in any layout at one speed: on (1168, 10) float32 column-major,
    # as a narrow product leaves it, 18 us hot against argmax's 135, or 10 + 28 for a row-major
    # copy and argmax; between the epoch's steps the accuracy 68 us against 103 with the copy
    # (thread CPU, one thread, Intel Xeon)
    return (logits.max(1).indices == target).mean(dtype=logits.dtype)  # the cast in the mean


def r2_score(pred: Tensor, target: Tensor) -> Tensor:
    """1 - SS_res / SS_tot, pooled over the M outputs.  pred, target: (n, M) -> ()."""
    ss_res = (target - pred).square().sum()
    ss_tot = (target - target.mean(0)).square().sum()
    return 1 - ss_res / ss_tot


@torch.no_grad()
def weight_sparsity(model: FeedForward) -> float:
    """Fraction of exact zeros over every weight matrix (the lasso's effect); biases not counted."""
    zeros = sum(int((layer.weight == 0).sum()) for layer in model.layers)
    return zeros / max(sum(layer.weight.numel() for layer in model.layers), 1)


def metric_name(task: str) -> str:
    """The headline metric of a task, as logged: `accuracy` or `r2`."""
    return "accuracy" if task == "classification" else "r2"


@torch.no_grad()
def evaluate(
    model: FeedForward, x: Tensor, y: Tensor, task: str
) -> tuple[dict[str, Tensor], Tensor, list[Tensor]]:
    """{loss, accuracy|r2} as 0-dim tensors (no sync), the output (n, M) row-major, the
    pre-activations."""
    values, out, preactivations = split_values(model, x, y, task)
    return values, out.contiguous(), preactivations


@torch.no_grad()
def split_values(
    model: FeedForward, x: Tensor, y: Tensor, task: str
) -> tuple[dict[str, Tensor], Tensor, list[Tensor]]:
    """`evaluate`'s values, its output as the forward left it (a narrow one column-major
    where functions.MKL_SLOW_PATHS), the pre-activations: what an epoch's evaluation needs."""
    loss_of = loss_function(task, model.backend)  # refuses an unknown task
    if model.backend == "manual":
        out, preactivations = formula_forward(model, x)
        if task == "classification":
            loss = softmax_cross_entropy_value(out, y)
        else:
            loss = mse_forward(out, y)
    else:
        out, preactivations = model.forward_with_preactivations(x)
        loss = loss_of(out, y)
    if task == "classification":  # accuracy reads any layout at one speed: no copy
        return {"loss": loss, "accuracy": accuracy(out, y)}, out, preactivations
    # r2's sums run in the order of the layout: the row-major copy keeps them what they were
    out = out.contiguous()
    return {"loss": loss, "r2": r2_score(out, y)}, out, preactivations


def formula_forward(model: FeedForward, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The manual backend's forward as its Functions compute it, without `Function.apply`.

    Bitwise the output and pre-activations of `model.forward_with_preactivations(x)` (the
    Functions' forward calls these same formulas); with no graph to record, the autograd
    machinery around them is a third of an evaluation's cost.  x: (n, d) -> (n, M), [z_l].
    """
    act, param = model.activation, model.activation_param
    *hidden, (out_weight, out_bias) = model.layer_parameters()
    preactivations, h = [], x
    for weight, bias in hidden:
        z = linear_forward(h, weight, bias)
        preactivations.append(z)
        h = act.forward(z, param)
    return linear_forward(h, out_weight, out_bias), preactivations


def gradient_norm(model: FeedForward) -> Tensor:
    """||grad||_2 over all parameters, as a 0-dim tensor."""
    # model.parameters()'s order (each layer's weight, then its bias), read from the layers'
    # registries: parameters() walks the modules in Python (10-25 us between the epoch's steps)
    grads = [p.grad for pair in model.layer_parameters() for p in pair if p is not None]
    grads = [g for g in grads if g is not None]
    # the norms in one call (on the CPU each is the tensor's own vector_norm, bitwise)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


@torch.no_grad()
def epoch_scalars(
    model: FeedForward,
    task: str,
    penalty: Penalty,
    penalised: list[Tensor],
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor] | None = None,
) -> tuple[dict[str, Tensor], list[Tensor]]:
    """An epoch's scalars as 0-dim tensors (no sync), and the train pass's pre-activations.

    train/loss, train/{accuracy|r2}, train/penalty, train/objective, train/grad_norm, and with a
    val part val/loss and val/{accuracy|r2}: what the runner and the estimators log each epoch.
    """
    train_m, _, preactivations = split_values(model, *train, task)
    loss = train_m["loss"]
    # no penalty: g = 0 exactly, without a zero term a tensor (50 us an epoch in the loop)
    pen = penalty.value(penalised).to(loss) if penalty.active else loss.new_zeros(())
    val_m = None if val is None else split_values(model, *val, task)[0]
    return scalar_table(task, train_m, pen, gradient_norm(model), val_m), preactivations


def scalar_table(
    task: str,
    train_m: dict[str, Tensor],
    pen: Tensor,
    grad_norm: Tensor,
    val_m: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """The epoch's scalars by tag, from a split's `evaluate` values: the one list of them.

    Each value 0-dim (one run) or (E,) (an ensemble's members, ffn/ensemble/evaluation.py).
    """
    score = metric_name(task)
    scalars = {
        "train/loss": train_m["loss"],
        f"train/{score}": train_m[score],
        "train/penalty": pen,
        "train/objective": train_m["loss"] + pen,
        "train/grad_norm": grad_norm,
    }
    if val_m is not None:
        scalars.update({"val/loss": val_m["loss"], f"val/{score}": val_m[score]})
    return scalars
