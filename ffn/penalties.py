"""Penalties g(w) = lambda pen(w), exactly as the seed writes them, with hand-written gradients.

- ``l2`` (ridge):   lambda ||W||_2^2,                   gradient 2 lambda W
- ``l1`` (lasso):   lambda ||W||_1,                     subgradient lambda sign(W), or proximal
- ``elastic_net``:  lambda (r ||W||_1 + (1 - r) ||W||_2^2)

The proximal method leaves the l1 term out of the gradient and, after each optimizer step with
step size eta, soft-thresholds: w <- sign(w) max(|w| - eta lambda r, 0). That is what yields the
lasso's exact zeros; the subgradient method only makes weights oscillate around zero.
With plain SGD (and gd) this is proximal gradient descent, whose fixed points are the lasso's
solutions. With momentum mu the fixed point solves the lasso at lambda (1 - mu), and with Adam it
is no lasso at all: still sparse, but use sgd or gd where the exact lasso solution matters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ffn.errors import ConfigError

PENALTIES = ("none", "l1", "l2", "elastic_net")
L1_METHODS = ("proximal", "subgradient")


@dataclass(frozen=True)
class Penalty:
    """g(w) = lam * pen(w) over the weight matrices (and the biases if `include_bias`)."""

    name: str = "none"
    lam: float = 0.0
    method: str = "proximal"  # how the l1 part is handled
    l1_ratio: float = 0.5  # elastic_net's r; l1 is r = 1, l2 is r = 0
    include_bias: bool = False

    def __post_init__(self) -> None:
        if self.name not in PENALTIES:
            raise ConfigError("penalty.name", self.name, "one of " + ", ".join(PENALTIES))
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)):
            raise ConfigError("penalty.lam", self.lam, "a number >= 0")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError("penalty.lam", self.lam, "a finite number >= 0")
        if self.method not in L1_METHODS:
            raise ConfigError("penalty.method", self.method, "one of " + ", ".join(L1_METHODS))
        # Type first: text would make the comparison raise TypeError instead of ConfigError.
        ratio_is_number = isinstance(self.l1_ratio, (int, float)) and not isinstance(
            self.l1_ratio, bool
        )
        if not (ratio_is_number and 0.0 <= self.l1_ratio <= 1.0):
            raise ConfigError("penalty.l1_ratio", self.l1_ratio, "a number in [0, 1]")

    @property
    def l1_weight(self) -> float:
        """The coefficient of ||w||_1 in g."""
        ratio = {"none": 0.0, "l1": 1.0, "l2": 0.0, "elastic_net": self.l1_ratio}[self.name]
        return self.lam * ratio

    @property
    def l2_weight(self) -> float:
        """The coefficient of ||w||_2^2 in g."""
        ratio = {"none": 0.0, "l1": 0.0, "l2": 1.0, "elastic_net": 1.0 - self.l1_ratio}[self.name]
        return self.lam * ratio

    @property
    def proximal(self) -> bool:
        return self.method == "proximal" and self.l1_weight > 0

    def parameters(self, model: nn.Module) -> list[Tensor]:
        """The penalised tensors: every weight matrix, and the biases only if asked."""
        return [p for p in model.parameters() if p.ndim >= 2 or self.include_bias]

    def value(self, params: Iterable[Tensor]) -> Tensor:
        """g(w), the whole penalty as it enters the objective.  -> ()."""
        return self._value(params, with_l1=True)

    def smooth_value(self, params: Iterable[Tensor]) -> Tensor:
        """The part of g that gradients see: all of it, minus the l1 term when proximal."""
        return self._value(params, with_l1=not self.proximal)

    def _value(self, params: Iterable[Tensor], with_l1: bool) -> Tensor:
        total = torch.zeros(())
        for p in params:
            term = p.new_zeros(())
            if self.l2_weight:
                term = term + self.l2_weight * p.square().sum()
            if with_l1 and self.l1_weight:
                term = term + self.l1_weight * p.abs().sum()
            total = term + total.to(term)
        return total

    def gradient(self, w: Tensor) -> Tensor:
        """d smooth_value / d w = 2 lam_2 w (+ lam_1 sign(w) for the subgradient method)."""
        grad = (2.0 * self.l2_weight) * w
        if self.l1_weight and not self.proximal:
            grad = grad + self.l1_weight * torch.sign(w)
        return grad

    @torch.no_grad()
    def add_gradient_(self, params: Iterable[Tensor]) -> None:
        """p.grad += gradient(p) for every penalised p (after the loss's backward)."""
        if not (self.l2_weight or (self.l1_weight and not self.proximal)):
            return
        for p in params:
            if p.grad is None:
                p.grad = self.gradient(p)
            else:
                p.grad.add_(self.gradient(p))

    @torch.no_grad()
    def proximal_step_(self, optimizer: torch.optim.Optimizer, params: Iterable[Tensor]) -> None:
        """After `optimizer.step()`: soft-threshold each penalised p by eta lam_1 (eta: its lr)."""
        if not self.proximal:
            return
        penalised = {id(p) for p in params}
        for group in optimizer.param_groups:
            threshold = float(group["lr"]) * self.l1_weight
            for p in group["params"]:
                if id(p) in penalised:
                    soft_threshold_(p, threshold)


def soft_threshold_(w: Tensor, threshold: float) -> Tensor:
    """w <- sign(w) max(|w| - threshold, 0), in place: the proximal map of threshold ||.||_1."""
    return w.copy_(torch.sign(w) * (w.abs() - threshold).clamp_min_(0))
