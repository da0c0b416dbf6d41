"""An epoch's evaluation of E stacked members at once: what `Run.epoch_evaluation` gives each.

One forward of the stacked net over each split (baddbmm: each member its own weights and its
own rows) instead of E forwards, then each member's scalars from it with the single run's own
formulas: the losses are ffn.functions' (stacked forms), the scores and the penalty's norms are
ffn.metrics' and the penalty table's, vmapped over the members; the per-layer diagnostics are
run_logger.layer_diagnostics' (its activation health vmapped). One host transfer for all
members. tests/test_ensemble.py holds every member's values to its own epoch_scalars and
layer_diagnostics (float64, 1e-10).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch
from torch import Tensor

from ffn.ensemble.stack import StackedNet
from ffn.functions import mse_forward, softmax_cross_entropy_value
from ffn.metrics import accuracy, formula_forward, metric_name, r2_score, scalar_table
from ffn.penalties import Penalty
from ffn.run_logger import activation_health

# One member's values: scalars (train/loss, ...), layer diagnostics, pre-activations [(n, H_l)]
MemberEvaluation = tuple[dict[str, float], dict[str, float], list[Tensor]]


def _split_values(net: StackedNet, x: Tensor, y: Tensor, task: str):
    """Every member's {loss, score} (E,) on its rows x (E, n, d), y (E, n[, M]); the output
    (E, n, M) and pre-activations [(E, n, H_l)] (ffn.metrics.evaluate, stacked)."""
    out, preactivations = formula_forward(net, x)
    if task == "classification":  # the softmax and max read either layout (ffn.metrics.accuracy)
        loss, score = softmax_cross_entropy_value(out, y), torch.vmap(accuracy)(out, y)
    else:  # r2's sums run in the order of the layout: row-major, as a single run's
        out = out.contiguous()
        loss, score = mse_forward(out, y), torch.vmap(r2_score)(out, y)
    return {"loss": loss, metric_name(task): score}, preactivations


def _penalty_values(penalties: Sequence[Penalty], penalised: Sequence[Tensor]) -> Tensor:
    """g(w_e) of every member (E,), as Penalty.value: a part whose coefficient is 0 is left out
    (not 0 times an overflowed norm)."""
    entry = penalties[0].entry
    total = torch.zeros(len(penalties))
    for p in penalised:
        term = p.new_zeros(len(penalties))
        for weights, norm in (
            ([q.smooth_weight for q in penalties], entry.smooth),
            ([q.nonsmooth_weight for q in penalties], entry.nonsmooth),
        ):
            if norm is None or not any(weights):
                continue
            column = torch.tensor(weights, dtype=torch.float64).to(p)
            term = term + torch.where(column != 0, column * torch.vmap(norm)(p), 0.0)
        total = term + total.to(term)
    return total


def _layer_values(net: StackedNet, preactivations: Sequence[Tensor]) -> dict[str, Tensor]:
    """run_logger.layer_diagnostics of every member: each (E,)."""
    values: dict[str, Tensor] = {}
    for i, (w, _) in enumerate(net.layer_parameters()):
        dims = tuple(range(1, w.ndim))
        values[f"weight_norm/layer_{i}"] = torch.linalg.vector_norm(w, dim=dims)
        if w.grad is not None:
            values[f"grad_norm/layer_{i}"] = torch.linalg.vector_norm(w.grad, dim=dims)
        values[f"sparsity/layer_{i}"] = (w == 0).double().mean(dims)
    kind, param = net.activation.health, net.activation_param
    if kind == "none":
        return values

    def health(z: Tensor, p) -> Tensor:
        return activation_health(SimpleNamespace(activation=net.activation, activation_param=p), z)

    # a member's own activation_param, where they differ: StackedNet's (E, 1, 1) column
    per_member = torch.vmap(health, in_dims=(0, 0 if isinstance(param, Tensor) else None))
    for i, z in enumerate(preactivations):
        values[f"{kind}/layer_{i}"] = per_member(z, param)
    return values


def _gradient_norms(net: StackedNet) -> Tensor:
    """ffn.metrics.gradient_norm of every member: the norm of its parameters' norms.  (E,)."""
    norms = [
        torch.linalg.vector_norm(p.grad, dim=tuple(range(1, p.ndim)))
        for p in net.parameters()
        if p.grad is not None
    ]
    return torch.linalg.vector_norm(torch.stack(norms), dim=0)


@torch.no_grad()
def stacked_epoch_evaluation(
    net: StackedNet,
    task: str,
    penalties: Sequence[Penalty],
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor] | None,
) -> list[MemberEvaluation]:
    """Each member's `Run.epoch_evaluation()`: scalars and layer diagnostics on the host, and
    its train pre-activations.  train, val: x (E, n, d), y (E, n[, M]), each member its rows."""
    first = penalties[0]
    penalised = [p for p in net.parameters() if p.ndim >= 3 or first.include_bias]
    train_m, preactivations = _split_values(net, *train, task)
    pen = _penalty_values(penalties, penalised).to(train_m["loss"])
    val_m = None if val is None else _split_values(net, *val, task)[0]
    scalars = scalar_table(task, train_m, pen, _gradient_norms(net), val_m)
    layers = _layer_values(net, preactivations)
    # One host transfer for every member's scalars and diagnostics: (K, E)
    columns = [*scalars.values(), *layers.values()]
    host = torch.stack([v.detach().double() for v in columns]).cpu().T.tolist()
    k = len(scalars)
    return [
        (
            dict(zip(scalars, row[:k], strict=True)),
            dict(zip(layers, row[k:], strict=True)),
            [z[e] for z in preactivations],
        )
        for e, row in enumerate(host)
    ]
