"""An epoch's evaluation of E stacked members at once: what `Run.epoch_evaluation` gives each.

A forward of the stacked net over each split (baddbmm: each member its own weights and its
own rows) a few members at a time (CHUNK_BYTES) instead of E forwards, then each member's
scalars from it with the single run's own formulas: the losses are ffn.functions' (stacked
forms), the scores and the penalty's norms are ffn.metrics' and the penalty table's, vmapped
over the members; the per-layer diagnostics are run_logger.layer_diagnostics' (its activation
health vmapped). One host transfer for all members. tests/test_ensemble.py holds every member's
values to its own epoch_scalars and layer_diagnostics (float64, 1e-10).
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


# Members per chunk of the forward: as many as keep a chunk's widest pre-activation (and the
# activation read from it) near this many bytes, so that the activation, the next layer's
# product and the activation health read them from the cache, not from memory. 32 digits
# members, one hidden layer of 128 units, train split (1168, 64), val (270, 64), float32: the
# evaluation 22.0 ms, with 1 member a chunk 22.7, 2: 19.9, 4: 19.3, 8: 20.2, 16: 21.4 (thread
# CPU, best of 6 interleaved rounds, AMD EPYC, 1 MB L2 a core, load 1.2-1.6): the train split's
# output product 3.9 -> 2.3 ms and its health (amax) 1.4 -> 0.5 at 4 members a chunk, the
# hidden product, near the core's peak, unchanged (7.5-8.5); smaller chunks pay more chunks'
# calls, ~0.1 ms each. In the digits sweep, a call 27.6-30.9 ms in one chunk, 23.1-25.2 at 4
# members a chunk (2: 24.5-25.2, 8: 26.1-28.6, 1: 29.4; two sweeps each, load 2.4-3.0). 2.5 MB
# is 4 digits members of the train split and 18 of the val split.
CHUNK_BYTES = 2_500_000


class _Members:
    """Members `members` (a slice) of a StackedNet, as formula_forward and the health read it."""

    def __init__(self, net: StackedNet, members: slice) -> None:
        self.activation = net.activation
        param = net.activation_param
        self.activation_param = param[members] if isinstance(param, Tensor) else param
        self.layers = [
            (w[members], None if b is None else b[members]) for w, b in net.layer_parameters()
        ]

    def layer_parameters(self) -> list[tuple[Tensor, Tensor | None]]:
        return self.layers


def _members_per_chunk(net: StackedNet, x: Tensor, chunk_bytes: int) -> int:
    """How many members' widest pre-activations (n, H) fit in chunk_bytes (at least one); off
    the CPU all of them (the chunks are for its cache; on a GPU each would cost launches)."""
    if not x.is_cpu:
        return net.size
    widest = max(w.shape[-1] for w, _ in net.layer_parameters())
    return max(1, chunk_bytes // (x.shape[-2] * widest * x.element_size()))


def _joined(chunks: Sequence[Tensor]) -> Tensor:
    """The chunks' outputs (c, n, M) as one (E, n, M) in their layout: a column-major one (a
    transposed product's) stays column-major, the layout a single run's loss and score read
    (and a cheaper join: 8 chunks of 32 digits members' logits 0.04 ms, 0.21 row-major)."""
    if len(chunks) == 1:
        return chunks[0]
    if chunks[0].mT.is_contiguous():
        return torch.cat([c.mT for c in chunks]).mT
    return torch.cat(list(chunks))


def _split_values(
    net: StackedNet, x: Tensor, y: Tensor, task: str, chunk_bytes: int, train: bool
) -> tuple[dict[str, Tensor], dict[str, Tensor], list[list[Tensor]]]:
    """Every member's {loss, score} (E,) on its rows x (E, n, d), y (E, n[, M])
    (ffn.metrics.evaluate, stacked); with train, also its activation health (E,) and its
    pre-activations [(n, H_l)] (else {} and [])."""
    outs, health, preactivations = [], [], []
    size = _members_per_chunk(net, x, chunk_bytes)
    for start in range(0, net.size, size):
        members = slice(start, start + size)
        part = _Members(net, members)
        out, z = formula_forward(part, x[members])
        outs.append(out)
        if train:  # while the chunk's z is in the cache
            health.append(_health_values(part, z))
            preactivations.extend([layer[e] for layer in z] for e in range(out.shape[0]))
    out = _joined(outs)
    if task == "classification":  # the softmax and max read either layout (ffn.metrics.accuracy)
        loss, score = softmax_cross_entropy_value(out, y), torch.vmap(accuracy)(out, y)
    else:  # r2's sums run in the order of the layout: row-major, as a single run's
        out = out.contiguous()
        loss, score = mse_forward(out, y), torch.vmap(r2_score)(out, y)
    healths = {k: torch.cat([h[k] for h in health]) for k in health[0]} if health else {}
    return {"loss": loss, metric_name(task): score}, healths, preactivations


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


def _weight_values(net: StackedNet) -> dict[str, Tensor]:
    """run_logger.layer_diagnostics' weight and gradient norms and sparsity: each (E,)."""
    values: dict[str, Tensor] = {}
    for i, (w, _) in enumerate(net.layer_parameters()):
        dims = tuple(range(1, w.ndim))
        values[f"weight_norm/layer_{i}"] = torch.linalg.vector_norm(w, dim=dims)
        if w.grad is not None:
            values[f"grad_norm/layer_{i}"] = torch.linalg.vector_norm(w.grad, dim=dims)
        values[f"sparsity/layer_{i}"] = (w == 0).double().mean(dims)
    return values


def _health_values(part: _Members, preactivations: Sequence[Tensor]) -> dict[str, Tensor]:
    """run_logger.layer_diagnostics' activation health of each member of a chunk: each (c,)."""
    kind, param = part.activation.health, part.activation_param
    if kind == "none":
        return {}

    def health(z: Tensor, p) -> Tensor:
        return activation_health(SimpleNamespace(activation=part.activation, activation_param=p), z)

    # a member's own activation_param, where they differ: StackedNet's (E, 1, 1) column
    per_member = torch.vmap(health, in_dims=(0, 0 if isinstance(param, Tensor) else None))
    return {f"{kind}/layer_{i}": per_member(z, param) for i, z in enumerate(preactivations)}


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
    chunk_bytes: int = CHUNK_BYTES,
) -> list[MemberEvaluation]:
    """Each member's `Run.epoch_evaluation()`: scalars and layer diagnostics on the host, and
    its train pre-activations.  train, val: x (E, n, d), y (E, n[, M]), each member its rows;
    the forward runs as many members at a time as fit in chunk_bytes (CHUNK_BYTES)."""
    first = penalties[0]
    penalised = [p for p in net.parameters() if p.ndim >= 3 or first.include_bias]
    train_m, health, preactivations = _split_values(net, *train, task, chunk_bytes, train=True)
    pen = _penalty_values(penalties, penalised).to(train_m["loss"])
    val_m = None if val is None else _split_values(net, *val, task, chunk_bytes, train=False)[0]
    scalars = scalar_table(task, train_m, pen, _gradient_norms(net), val_m)
    layers = {**_weight_values(net), **health}
    # One host transfer for every member's scalars and diagnostics: (K, E)
    columns = [*scalars.values(), *layers.values()]
    host = torch.stack([v.detach().double() for v in columns]).cpu().T.tolist()
    k = len(scalars)
    return [
        (dict(zip(scalars, row[:k], strict=True)), dict(zip(layers, row[k:], strict=True)), pre)
        for row, pre in zip(host, preactivations, strict=True)
    ]
