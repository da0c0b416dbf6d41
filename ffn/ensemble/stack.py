"""E members' networks stacked: what `ffn.step.manual_gradients` reads of a FeedForward, batched.

Member e's layer l is `weights[l][e]` (d_l, H_l) and `biases[l][e]` (H_l,). The stack is a copy:
the members' own FeedForward modules stay the home of their parameters (checkpoints, evaluation,
logging read them), and `write_to` puts the stack's values and gradients back into them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ffn.activations import Activation
from ffn.model import FeedForward
from ffn.penalties import Penalty


class StackedNet:
    """The layers of E FeedForward networks of one architecture, stacked on a leading dim."""

    def __init__(self, models: Sequence[FeedForward]) -> None:
        first = models[0]
        self.activation: Activation = first.activation
        for model in models:
            if model.activation is not first.activation or model.hidden != first.hidden:
                raise ValueError("an ensemble's members share one architecture")
        params = [m.activation_param for m in models]
        weight = first.layer_parameters()[0][0]
        # One number when the members agree (the single run's arithmetic exactly); else each
        # member's own, a column (E, 1, 1) in the weights' dtype, as the number is cast
        self.activation_param: float | Tensor = (
            params[0]
            if len(set(params)) == 1
            else torch.tensor(params, dtype=weight.dtype, device=weight.device).view(-1, 1, 1)
        )
        with torch.no_grad():
            self.layers = [
                (
                    torch.stack([m.layer_parameters()[i][0] for m in models]),
                    None
                    if bias is None
                    else torch.stack([m.layer_parameters()[i][1] for m in models]),
                )
                for i, (_, bias) in enumerate(first.layer_parameters())
            ]

    @property
    def size(self) -> int:
        return self.layers[0][0].shape[0]

    def layer_parameters(self) -> list[tuple[Tensor, Tensor | None]]:
        """(weight (E, d_l, H_l), bias (E, H_l) or None) of every layer, as FeedForward's."""
        return self.layers

    def parameters(self) -> list[Tensor]:
        """In `FeedForward.parameters()`'s order: layer 0's weight, its bias, layer 1's, ..."""
        return [p for layer in self.layers for p in layer if p is not None]

    @torch.no_grad()
    def write_to(self, models: Sequence[FeedForward]) -> None:
        """Each member's parameters and gradients := its slice of the stack."""
        stacked = self.parameters()
        for e, model in enumerate(models):
            for p, s in zip(model.parameters(), stacked, strict=True):
                p.copy_(s[e])
                p.grad = None if s.grad is None else s.grad[e].clone()


def broadcastable(values: Sequence[float], like: Tensor) -> Tensor:
    """Per-member numbers as an (E, 1, ...) tensor that broadcasts against `like` (E, ...)."""
    column = torch.tensor(values, dtype=torch.float64, device=like.device)
    return column.view(-1, *([1] * (like.ndim - 1)))


class StackedPenalty:
    """Each member's Penalty (one table entry and method, its own lam) on the stacked tensors.

    The formulas are the table entry's (ffn.penalties.PENALTIES): its smooth gradient, its
    subgradient and its proximal map, applied with per-member coefficients; a member whose
    coefficient is 0 gets exactly its single run's nothing (w + 0, a soft-threshold at 0).
    """

    def __init__(self, penalties: Sequence[Penalty], net: StackedNet) -> None:
        first = penalties[0]
        for p in penalties:
            if (p.name, p.method, p.include_bias) != (first.name, first.method, first.include_bias):
                raise ValueError("an ensemble's members share penalty.name, method, include_bias")
        self.entry, self.method = first.entry, first.method
        self.active = any(p.active for p in penalties)
        self.penalised = [
            p for p in net.parameters() if p.ndim >= 3 or first.include_bias
        ]  # weights (E, d, H); biases (E, H) only if asked, as Penalty.parameters
        self.smooth = [
            broadcastable([p.smooth_weight for p in penalties], w) for w in self.penalised
        ]
        self.nonsmooth = [
            broadcastable([p.nonsmooth_weight for p in penalties], w) for w in self.penalised
        ]
        self.has_nonsmooth = any(p.nonsmooth_weight for p in penalties)

    @torch.no_grad()
    def add_gradient_(self) -> None:
        """grad += coefficient * the entry's gradient, per member (Penalty.add_gradient_)."""
        if not self.active:
            return
        entry = self.entry
        for w, smooth, nonsmooth in zip(self.penalised, self.smooth, self.nonsmooth, strict=True):
            if entry.smooth_gradient is not None:
                w.grad.add_(smooth.to(w.dtype) * entry.smooth_gradient(w))
            if entry.subgradient is not None and self.method != "proximal" and self.has_nonsmooth:
                w.grad.add_(nonsmooth.to(w.dtype) * entry.subgradient(w))

    @torch.no_grad()
    def proximal_step_(self, lr: Tensor) -> None:
        """The entry's prox of eta_e lam_e r on each member (Penalty.proximal_step_). lr: (E,)."""
        if self.method != "proximal" or not self.has_nonsmooth:
            return
        for w, nonsmooth in zip(self.penalised, self.nonsmooth, strict=True):
            threshold = lr.view_as(nonsmooth) * nonsmooth  # float64, as float(lr) * weight
            self.entry.prox_(w, threshold.to(w.dtype))
