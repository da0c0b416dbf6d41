"""The feed-forward network: hidden layers h = g(x W + b), then a linear output layer."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ffn.activations import Activation, get_activation
from ffn.errors import ConfigError
from ffn.functional import linear
from ffn.functions import linear_forward

Backend = Literal["manual", "autograd"]
BACKENDS = ("manual", "autograd")


class Dense(nn.Module):
    """Affine layer with W stored as (in_features, out_features), as the notes write it."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def extra_repr(self) -> str:
        d, h = self.weight.shape
        return f"in_features={d}, out_features={h}, bias={self.bias is not None}"


class FeedForward(nn.Module):
    """x: (n, in_features) -> (n, out_features): logits for classification, predictions otherwise.

    `hidden=[]` is the notes' single neuron: multinomial logistic or linear regression once the
    loss is chosen. `backend="manual"` runs the hand-written Functions; `"autograd"` is a twin
    made of torch's own ops, for comparing gradients and speed on the same parameters.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
        activation_param: float | None = None,
        bias: bool = True,
        backend: Backend = "manual",
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        hidden = list(hidden)
        for key, value in (
            ("model.in_features", in_features),
            ("model.out_features", out_features),
        ):
            if not (isinstance(value, int) and value > 0):
                raise ConfigError(key, value, "a positive integer")
        self.activation: Activation = check_options(hidden, activation, backend)
        self.activation_param = self.activation.check_param(activation_param)
        self.backend: Backend = backend
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(Dense(d, h, bias) for d, h in itertools.pairwise(sizes))
        # Cast first, then draw: drawing into the float32 tensors Dense creates and casting after
        # would round a float64 network's float64 draws to float32 precision.
        self.to(device=device, dtype=dtype)
        self.reset_parameters(seed)

    def layer_parameters(self) -> list[tuple[Tensor, Tensor | None]]:
        """(weight (d_l, H_l), bias (H_l,) or None) of every layer, in order.

        Read from each layer's registry on every call, never cached: `.to()`, load_state_dict and
        torch.func's functional_call / stack_module_state put other tensors there, and a cached
        list would silently miss them. The registries are read directly because
        nn.Module.__getattr__ is a Python-level lookup that costs as much as a small kernel (ten
        of them a tiny step).
        """
        return [
            (layer._parameters["weight"], layer._parameters.get("bias"))
            for layer in self._modules["layers"]._modules.values()
        ]

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """He (ReLU family) or Glorot (saturating) for hidden layers, Glorot for the output.

        Drawn in float64 on the CPU from one seeded generator, then cast, so a seed gives the same
        network on every device and dtype.
        """
        generator = torch.Generator().manual_seed(seed)
        for i, layer in enumerate(self.layers):
            d, h = layer.weight.shape
            is_output = i == len(self.layers) - 1
            if self.activation.init == "he" and not is_output:
                w = torch.randn(d, h, generator=generator, dtype=torch.float64) * math.sqrt(2 / d)
            else:
                bound = math.sqrt(6 / (d + h))
                w = (torch.rand(d, h, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            layer.weight.copy_(w)
            if layer.bias is not None:
                layer.bias.zero_()

    @property
    def hidden(self) -> list[int]:
        return [layer.weight.shape[1] for layer in self.layers[:-1]]

    def forward(self, x: Tensor) -> Tensor:
        """x: (n, d) -> (n, M)."""
        return self.forward_with_preactivations(x)[0]

    def forward_with_preactivations(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Output (n, M) and each hidden layer's pre-activation z (n, H_l), for diagnostics."""
        manual = self.backend == "manual"
        act, param = self.activation, self.activation_param
        # autograd: the same formula through torch's ops (addmm), which autograd differentiates
        affine = linear if manual else linear_forward
        g = act if manual else act.native
        *hidden, (out_weight, out_bias) = self.layer_parameters()
        preactivations = []
        h = x
        for weight, bias in hidden:
            z = affine(h, weight, bias)
            h = g(z, param)
            preactivations.append(z)
        return affine(h, out_weight, out_bias), preactivations

    def with_backend(self, backend: Backend) -> FeedForward:
        """A copy with identical parameters running on the other backend."""
        twin = copy.deepcopy(self)
        if backend not in BACKENDS:
            raise ConfigError("model.backend", backend, "one of " + ", ".join(BACKENDS))
        twin.backend = backend
        return twin

    def weights(self) -> list[Tensor]:
        """The weight matrices, one per layer: (d_l, H_l)."""
        return [weight for weight, _ in self.layer_parameters()]

    def biases(self) -> list[Tensor]:
        return [bias for _, bias in self.layer_parameters() if bias is not None]

    def extra_repr(self) -> str:
        param = "" if self.activation.param_name is None else f"({self.activation_param})"
        return f"activation={self.activation.name}{param}, backend={self.backend}"


def check_options(hidden: Sequence[int], activation: str, backend: str) -> Activation:
    """The model group's own checks, which need no data: sizes, activation, backend."""
    hidden = list(hidden)
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise ConfigError("model.hidden", hidden, "a list of positive integers, e.g. [64, 64]")
    if backend not in BACKENDS:
        raise ConfigError("model.backend", backend, "one of " + ", ".join(BACKENDS))
    return get_activation(activation)


def check_config(model: Mapping[str, Any]) -> None:
    """`validate`'s pass over the model group: what FeedForward would refuse, before any data."""
    activation = check_options(model["hidden"], model["activation"], model["backend"])
    activation.check_param(model["activation_param"])
