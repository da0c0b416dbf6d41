"""E members' networks stacked: what `ffn.step.manual_gradients` reads of a FeedForward, batched.

Member e's layer l is `weights[l][e]` (d_l, H_l) and `biases[l][e]` (H_l,). The stack is a copy:
the members' own FeedForward modules stay the home of their parameters (checkpoints, evaluation,
logging read them), and `write_to` puts the stack's values and gradients back into them.
"""

from __future__ import annotations

import itertools
import operator
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
        self._grads = MemberCopies()
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
        """Each member's parameters and gradients := its slice of the stack (`MemberCopies`)."""
        stacked = self.parameters()
        # layer_parameters(): parameters()'s order, without its walk of the modules
        own = [p for m in models for pair in m.layer_parameters() for p in pair if p is not None]
        torch._foreach_copy_(own, member_slices(stacked, len(models)))
        has_grad = [s.grad is not None for s in stacked] * len(models)  # as `own` lies
        for p in itertools.compress(own, [not g for g in has_grad]):
            p.grad = None
        targets = list(itertools.compress(own, has_grad))
        grads = member_slices([s.grad for s in stacked if s.grad is not None], len(models))
        own_grads = [p.grad for p in targets]
        copies = self._grads.into(own_grads, grads)
        for p, old, grad in zip(targets, own_grads, copies, strict=True):
            if grad is not old:
                p.grad = grad


def member_slices(stacked: Sequence[Tensor], members: int) -> list[Tensor]:
    """Member by member, each one's slice of every stacked tensor (E, ...): member 0's of each,
    then member 1's, ... (one unbind a tensor, not a Python index a slice)."""
    slices = [s.unbind(0) for s in stacked]
    return [per_member[e] for e in range(members) for per_member in slices]


class MemberCopies:
    """Members' own tensors that the stack's slices are copied into, write-back after write-back:
    where a member's tensor has the slice's shape, dtype, device and a contiguous layout, in
    place (as a run alone's optimizer updates its state), in one foreach copy; else (None before
    a first write-back) a fresh clone. The tensors it left last time are known by identity and
    not checked again.

    One copy_ or clone a member's tensor cost 4.5 us, 2.9 ms a write-back of 32 digits members
    (640 tensors), the checks of each tensor 1 ms more (AMD EPYC, one thread)."""

    def __init__(self) -> None:
        self.written: list[Tensor] = []  # what the last `into` left in the members

    def into(self, own: Sequence[Tensor | None], values: Sequence[Tensor]) -> list[Tensor]:
        """Copies of `values`, into `own` where they fit (see above)."""
        if len(own) == len(self.written) and all(map(operator.is_, own, self.written)):
            reused = [True] * len(own)
        else:
            reused = [
                o is not None
                and o.shape == v.shape
                and o.dtype == v.dtype
                and o.device == v.device
                and o.is_contiguous()
                for o, v in zip(own, values, strict=True)
            ]
        targets = list(itertools.compress(own, reused))
        if targets:
            torch._foreach_copy_(targets, list(itertools.compress(values, reused)))
        self.written = [o if r else v.clone() for o, v, r in zip(own, values, reused, strict=True)]
        return self.written


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
