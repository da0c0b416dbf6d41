"""The public functional API: each call runs a hand-written `torch.autograd.Function`."""

from __future__ import annotations

from torch import Tensor

from ffn.activations import ACTIVATIONS
from ffn.functions import Apply, LinearFunction, MSEFunction, SoftmaxCrossEntropyFunction

__all__ = [
    "elu",
    "gelu",
    "identity",
    "leaky_relu",
    "linear",
    "mse",
    "relu",
    "sigmoid",
    "softmax_cross_entropy",
    "softplus",
    "tanh",
]

_linear = Apply(LinearFunction)
_softmax_cross_entropy = Apply(SoftmaxCrossEntropyFunction)
_mse = Apply(MSEFunction)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """z = x W + b.  x: (n, d), weight: (d, H), bias: (H,) -> (n, H)."""
    return _linear(x, weight, bias)


def identity(z: Tensor) -> Tensor:
    """g(z) = z."""
    return ACTIVATIONS["identity"](z)


def sigmoid(z: Tensor) -> Tensor:
    """sigm(z) = 1 / (1 + exp(-z)); backward sigm (1 - sigm)."""
    return ACTIVATIONS["sigmoid"](z)


def tanh(z: Tensor) -> Tensor:
    """tanh(z); backward 1 - tanh^2."""
    return ACTIVATIONS["tanh"](z)


def relu(z: Tensor) -> Tensor:
    """max(0, z); backward 1{z > 0} (0 at 0)."""
    return ACTIVATIONS["relu"](z)


def leaky_relu(z: Tensor, negative_slope: float = 0.01) -> Tensor:
    """z if z > 0 else negative_slope * z."""
    return ACTIVATIONS["leaky_relu"](z, negative_slope)


def elu(z: Tensor, alpha: float = 1.0) -> Tensor:
    """z if z > 0 else alpha (exp(z) - 1)."""
    return ACTIVATIONS["elu"](z, alpha)


def softplus(z: Tensor) -> Tensor:
    """log(1 + exp(z)); backward sigm(z)."""
    return ACTIVATIONS["softplus"](z)


def gelu(z: Tensor) -> Tensor:
    """z Phi(z), Phi the standard normal CDF."""
    return ACTIVATIONS["gelu"](z)


def softmax_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy of softmax(logits).  logits: (n, M), target: (n,) int64 -> ()."""
    return _softmax_cross_entropy(logits, target)


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """(1/n) sum_i ||pred_i - target_i||^2.  pred, target: (n, M) -> ()."""
    return _mse(pred, target)
