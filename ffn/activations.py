"""The activation table: name -> forward g, its derivative g', and torch's own op to check against.

Adding an activation is one entry in `ACTIVATIONS`; every test that loops over the table covers
it. Derivatives are written in terms of the forward's *output* h = g(z) wherever the notes allow
(sigm' = h(1 - h), tanh' = 1 - h^2, relu' = 1{h > 0}), so backward keeps h and not z; ELU
(whose h + alpha cancels in the tail) and GELU keep z. Every derivative is made of torch ops, so
it is differentiated again for second derivatives, and the entry pickles by its name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ffn.errors import ConfigError
from ffn.functions import Apply, Elementwise, make_elementwise_function


@dataclass(frozen=True)
class Activation:
    """One table entry.  All callables are elementwise: z, h: (...) -> (...)."""

    name: str
    formula: str  # g and g', as a reader would write them
    forward: Elementwise  # h = g(z; param)
    derivative: Elementwise  # g'(z) from the saved tensor (h or z, as `saves` says)
    saves: Literal["output", "input"]
    native: Elementwise  # torch's own op, for the autograd twin and the tests
    init: Literal["he", "glorot"]  # He for the ReLU family, Glorot for saturating ones
    health: Literal["dead", "saturated", "none"] = "none"  # what the logger watches per unit
    param_name: str | None = None  # e.g. leaky_relu's negative_slope
    param_default: float = 0.0
    # The graph-free step's in-place kernels, where one exists (`forward_in_place`,
    # `times_derivative_`): the same values, fewer passes over a layer's (n, H) tensors.
    forward_: Elementwise | None = None  # g(z) written into z; only where g' reads h, not z
    times_derivative_of: Callable[[Tensor, Tensor, Any], Tensor] | None = None  # dh * g', into dh
    function: type[torch.autograd.Function] = field(init=False, repr=False, compare=False)
    apply: Apply = field(init=False, repr=False, compare=False)  # the Function's, or its twin's

    def __post_init__(self) -> None:
        if self.forward_ is not None and self.saves != "output":
            raise ValueError(f"{self.name}: an in-place forward overwrites the z g' needs")
        class_name = "".join(part.capitalize() for part in self.name.split("_")) + "Function"
        doc = f"{self.name}: {self.formula}"
        function = make_elementwise_function(
            class_name, doc, self.forward, self.derivative, self.saves
        )
        object.__setattr__(self, "function", function)
        object.__setattr__(self, "apply", Apply(function))

    def __reduce__(self) -> tuple:
        # Pickled by name: the entry holds lambdas and a generated class, which pickle cannot
        # store; a model pickled (torch.save, joblib) finds the table's entry again on loading.
        return get_activation, (self.name,)

    def __call__(self, z: Tensor, param: float | None = None) -> Tensor:
        """h = g(z) through the hand-written Function.  z: (...) -> (...)."""
        return self.apply(z, self.param_default if param is None else param)

    def forward_in_place(self, z: Tensor, param: Any) -> Tensor:
        """h = g(z), into z's memory where the entry has a kernel for it (z is the caller's
        own, and g' needs only h).  z: (...) -> (...)."""
        if self.forward_ is None:
            return self.forward(z, param)
        return self.forward_(z, param)

    def times_derivative_(self, grad_h: Tensor, saved: Tensor, param: Any) -> Tensor:
        """dz = dh * g'(saved), written into dh (the caller's own).  (...) -> (...)."""
        if self.times_derivative_of is None:
            return grad_h.mul_(self.derivative(saved, param))
        return self.times_derivative_of(grad_h, saved, param)

    def check_param(self, param: float | None, key: str = "model.activation_param") -> float:
        """Resolve None to the default; refuse values that would make g decreasing."""
        if param is None:
            return self.param_default
        if self.param_name is None:
            raise ConfigError(key, param, f"null: {self.name} takes no parameter")
        if not (isinstance(param, (int, float)) and math.isfinite(param) and param >= 0):
            raise ConfigError(key, param, f"a finite {self.param_name} >= 0 for {self.name}")
        return float(param)


_threshold_backward = torch.ops.aten.threshold_backward.grad_input  # its out= form


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))


def _normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))


_ENTRIES = [
    Activation(
        name="identity",
        formula="g(z) = z; g' = 1",
        forward=lambda z, p: z.clone(),
        derivative=lambda h, p: torch.ones_like(h),
        saves="output",
        native=lambda z, p: z,
        init="glorot",
    ),
    Activation(
        name="sigmoid",
        formula="sigm(z) = 1 / (1 + exp(-z)); sigm' = sigm (1 - sigm)",
        # torch.sigmoid never evaluates exp of a large positive number: sigm(+-1000) is exact.
        forward=lambda z, p: torch.sigmoid(z),
        derivative=lambda h, p: h * (1 - h),
        saves="output",
        native=lambda z, p: torch.sigmoid(z),
        init="glorot",
        health="saturated",
    ),
    Activation(
        name="tanh",
        formula="tanh(z) = (exp(2z) - 1) / (exp(2z) + 1); tanh' = 1 - tanh^2",
        forward=lambda z, p: torch.tanh(z),
        derivative=lambda h, p: 1 - h * h,
        saves="output",
        native=lambda z, p: torch.tanh(z),
        init="glorot",
        health="saturated",
    ),
    Activation(
        name="relu",
        formula="relu(z) = max(0, z); relu' = 1{z > 0} = 1{relu(z) > 0}",
        forward=lambda z, p: z.clamp_min(0),
        # h >= 0, so 1{h > 0} = sign(h): one kernel where the comparison and its cast take two.
        derivative=lambda h, p: h.sign(),
        saves="output",
        native=lambda z, p: F.relu(z),
        init="he",
        health="dead",
        # In the graph-free step: h into z's memory, and dh * 1{h > 0} as torch's own ReLU
        # backward (dh where h > 0, else 0) into dh's, one pass where sign and mul_ take two;
        # the same values (a zero's sign aside: +0 where dh * 0 gave -0 for a negative dh). The
        # 36 gradients of a 33-iteration L-BFGS fit on digits (1797 rows, 64 units, float64,
        # Intel Xeon, one thread): 40.7 -> 37.2 ms of CPU, the best of 9 fits.
        forward_=lambda z, p: z.clamp_min_(0),
        times_derivative_of=lambda dh, h, p: _threshold_backward(dh, h, 0, grad_input=dh),
    ),
    Activation(
        name="leaky_relu",
        formula="g(z) = z if z > 0 else a z; g' = 1 if g(z) > 0 else a  (a >= 0)",
        forward=lambda z, p: torch.where(z > 0, z, z * p),
        # p: a number, or an ensemble's per-member column (E, 1, 1) (ffn/ensemble/stack.py)
        derivative=lambda h, p: torch.where(h > 0, h.new_ones(()), p),
        saves="output",
        native=lambda z, p: F.leaky_relu(z, p),
        init="he",
        health="dead",
        param_name="negative_slope",
        param_default=0.01,
    ),
    Activation(
        name="elu",
        formula="g(z) = z if z > 0 else a (exp(z) - 1); g' = 1 if z > 0 else a exp(z)",
        # clamp_max keeps exp and expm1 away from overflow in the branch torch.where discards
        # (an inf there would make the second derivative 0 * inf = NaN).
        forward=lambda z, p: torch.where(z > 0, z, p * torch.expm1(z.clamp_max(0))),
        # From z, not h: g(z) + a = a exp(z) cancels in the tail (0 for z <= -17 in float32).
        derivative=lambda z, p: torch.where(z > 0, z.new_ones(()), p * torch.exp(z.clamp_max(0))),
        saves="input",
        native=lambda z, p: F.elu(z, p),
        init="he",
        health="dead",
        param_name="alpha",
        param_default=1.0,
    ),
    Activation(
        name="softplus",
        formula="g(z) = log(1 + exp(z)); g' = sigm(z) = 1 - exp(-g(z))",
        forward=lambda z, p: F.softplus(z),
        # 1 - exp(-h) as -expm1(-h) stays accurate where h is tiny (z very negative).
        derivative=lambda h, p: -torch.expm1(-h),
        saves="output",
        native=lambda z, p: F.softplus(z),
        init="he",
    ),
    Activation(
        name="gelu",
        formula="g(z) = z Phi(z); g' = Phi(z) + z phi(z)  (not monotone below z = -0.75)",
        forward=lambda z, p: z * _normal_cdf(z),
        derivative=lambda z, p: _normal_cdf(z) + z * _normal_pdf(z),
        saves="input",
        native=lambda z, p: F.gelu(z),
        init="he",
    ),
]

ACTIVATIONS: dict[str, Activation] = {entry.name: entry for entry in _ENTRIES}


def get_activation(name: str, key: str = "model.activation") -> Activation:
    """Look an activation up by name, or say which names exist."""
    if name not in ACTIVATIONS:
        raise ConfigError(key, name, "one of " + ", ".join(sorted(ACTIVATIONS)))
    return ACTIVATIONS[name]
