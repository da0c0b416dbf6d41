"""The penalty table: name -> g(w) = lambda pen(w), its gradient and its proximal step, together.

- ``l2`` (ridge):   lambda ||W||_2^2,                   gradient 2 lambda W
- ``l1`` (lasso):   lambda ||W||_1,                     subgradient lambda sign(W), or proximal
- ``elastic_net``:  lambda (r ||W||_1 + (1 - r) ||W||_2^2)

Each entry splits pen into a smooth part, which the gradient sees, and a non-smooth part. With
``method=proximal`` the non-smooth part is left out of the gradient and, after each optimizer step
with step size eta, its proximal map is applied: for l1 the soft-threshold
w <- sign(w) max(|w| - eta lambda r, 0), which yields the lasso's exact zeros; the subgradient
method only makes weights oscillate around zero. With plain SGD (and gd) this is proximal gradient
descent, whose fixed points are the lasso's solutions. With momentum mu the fixed point solves the
lasso at lambda (1 - mu), and with Adam it is no lasso at all: still sparse, but use sgd or gd
where the exact lasso solution matters.

Adding a penalty is one `PenaltyEntry` in `PENALTIES` (and its conf/penalty/NAME.yaml): `Penalty`
and both training steps use only what the entry says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ffn.errors import ConfigError

L1_METHODS = ("proximal", "subgradient")  # how the non-smooth part is handled

Norm = Callable[[Tensor], Tensor]  # w: (...) -> ()
Elementwise = Callable[[Tensor], Tensor]  # w: (...) -> (...)
Prox = Callable[[Tensor, float], Tensor]  # (w, t): w <- argmin_v ||v - w||^2 / 2 + t r(v), in place


@dataclass(frozen=True)
class PenaltyEntry:
    """One table entry: pen(w) = s(w) + r(w), a smooth part s and a non-smooth part r.

    `split(lam, l1_ratio)` gives the coefficients (of s, of r) in g = lam pen; by default lam for
    each part the entry has. A non-smooth part comes with a subgradient and a proximal map.
    """

    name: str
    formula: str  # pen(w), as a reader would write it
    smooth: Norm | None = None  # s(w)
    smooth_gradient: Elementwise | None = None  # ds/dw
    nonsmooth: Norm | None = None  # r(w)
    subgradient: Elementwise | None = None  # an element of dr(w), for method=subgradient
    prox_: Prox | None = None  # the proximal map of t r, for method=proximal
    split: Callable[[float, float], tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if (self.smooth is None) != (self.smooth_gradient is None):
            raise ValueError(f"{self.name}: a smooth part needs its gradient")
        parts = (self.nonsmooth, self.subgradient, self.prox_)
        if any(p is None for p in parts) and any(p is not None for p in parts):
            raise ValueError(f"{self.name}: a non-smooth part needs a subgradient and a prox")

    def coefficients(self, lam: float, l1_ratio: float) -> tuple[float, float]:
        """(coefficient of s, coefficient of r) in g; 0 for a part the entry lacks."""
        smooth, nonsmooth = (lam, lam) if self.split is None else self.split(lam, l1_ratio)
        return (
            smooth if self.smooth is not None else 0.0,
            nonsmooth if self.nonsmooth is not None else 0.0,
        )


# --- the formulas, each once --------------------------------------------------------------------


def squared_norm(w: Tensor) -> Tensor:
    """||w||_2^2.  -> ()."""
    return w.square().sum()


def squared_norm_gradient(w: Tensor) -> Tensor:
    """d ||w||_2^2 / dw = 2 w."""
    return 2.0 * w


def abs_norm(w: Tensor) -> Tensor:
    """||w||_1.  -> ()."""
    return w.abs().sum()


def soft_threshold_(w: Tensor, threshold: float) -> Tensor:
    """w <- sign(w) max(|w| - threshold, 0), in place: the proximal map of threshold ||.||_1."""
    return w.copy_(torch.sign(w) * (w.abs() - threshold).clamp_min_(0))


PENALTIES: dict[str, PenaltyEntry] = {
    entry.name: entry
    for entry in (
        PenaltyEntry("none", "0"),
        PenaltyEntry(
            "l1", "||W||_1", nonsmooth=abs_norm, subgradient=torch.sign, prox_=soft_threshold_
        ),
        PenaltyEntry("l2", "||W||_2^2", smooth=squared_norm, smooth_gradient=squared_norm_gradient),
        PenaltyEntry(
            "elastic_net",
            "r ||W||_1 + (1 - r) ||W||_2^2",
            smooth=squared_norm,
            smooth_gradient=squared_norm_gradient,
            nonsmooth=abs_norm,
            subgradient=torch.sign,
            prox_=soft_threshold_,
            split=lambda lam, r: (lam * (1.0 - r), lam * r),
        ),
    )
}


@dataclass(frozen=True)
class Penalty:
    """g(w) = lam * pen(w) over the weight matrices (and the biases if `include_bias`)."""

    name: str = "none"
    lam: float = 0.0
    method: str = "proximal"  # how the non-smooth part is handled
    l1_ratio: float = 0.5  # elastic_net's r; l1 is r = 1, l2 is r = 0
    include_bias: bool = False
    # From the table entry, in __post_init__: the coefficients of s and r in g
    entry: PenaltyEntry = field(init=False, repr=False, compare=False)
    smooth_weight: float = field(init=False, repr=False, compare=False)
    nonsmooth_weight: float = field(init=False, repr=False, compare=False)

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
        entry = PENALTIES[self.name]
        object.__setattr__(self, "entry", entry)
        smooth, nonsmooth = entry.coefficients(float(self.lam), float(self.l1_ratio))
        object.__setattr__(self, "smooth_weight", smooth)
        object.__setattr__(self, "nonsmooth_weight", nonsmooth)

    @property
    def active(self) -> bool:
        """Whether g is not identically zero: the only thing the training steps ask."""
        return self.smooth_weight > 0 or self.nonsmooth_weight > 0

    @property
    def proximal(self) -> bool:
        """Whether a proximal step follows each optimizer step."""
        return self.method == "proximal" and self.nonsmooth_weight > 0

    @property
    def _has_gradient(self) -> bool:
        return self.smooth_weight > 0 or (self.nonsmooth_weight > 0 and not self.proximal)

    def parameters(self, model: nn.Module) -> list[Tensor]:
        """The penalised tensors: every weight matrix, and the biases only if asked."""
        return [p for p in model.parameters() if p.ndim >= 2 or self.include_bias]

    def value(self, params: Iterable[Tensor]) -> Tensor:
        """g(w), the whole penalty as it enters the objective.  -> ()."""
        return self._value(params, with_nonsmooth=True)

    def smooth_value(self, params: Iterable[Tensor]) -> Tensor:
        """The part of g that gradients see: all of it, minus r when proximal."""
        return self._value(params, with_nonsmooth=not self.proximal)

    def _value(self, params: Iterable[Tensor], with_nonsmooth: bool) -> Tensor:
        entry = self.entry
        total = torch.zeros(())
        for p in params:
            term = p.new_zeros(())
            if self.smooth_weight:
                term = term + self.smooth_weight * entry.smooth(p)
            if with_nonsmooth and self.nonsmooth_weight:
                term = term + self.nonsmooth_weight * entry.nonsmooth(p)
            total = term + total.to(term)
        return total

    def gradient(self, w: Tensor) -> Tensor:
        """d smooth_value / d w: the smooth part's gradient (+ r's subgradient unless proximal)."""
        entry = self.entry
        grad = torch.zeros_like(w)
        if self.smooth_weight:
            grad = grad + self.smooth_weight * entry.smooth_gradient(w)
        if self.nonsmooth_weight and not self.proximal:
            grad = grad + self.nonsmooth_weight * entry.subgradient(w)
        return grad

    @torch.no_grad()
    def add_gradient_(self, params: Iterable[Tensor]) -> None:
        """p.grad += gradient(p) for every penalised p (after the loss's backward)."""
        if not self._has_gradient:
            return
        for p in params:
            if p.grad is None:
                p.grad = self.gradient(p)
            else:
                p.grad.add_(self.gradient(p))

    @torch.no_grad()
    def proximal_step_(self, optimizer: torch.optim.Optimizer, params: Iterable[Tensor]) -> None:
        """After `optimizer.step()`: the prox of eta lam_r r on each penalised p (eta: its lr)."""
        if not self.proximal:
            return
        penalised = {id(p) for p in params}
        prox_ = self.entry.prox_
        for group in optimizer.param_groups:
            threshold = float(group["lr"]) * self.nonsmooth_weight
            for p in group["params"]:
                if id(p) in penalised:
                    prox_(p, threshold)
