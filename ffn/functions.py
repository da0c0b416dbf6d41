"""The hand-written backward passes, as `torch.autograd.Function` subclasses.

Each Function's forward and backward formulas are plain functions sitting side by side
(``linear_forward`` / ``linear_backward``, ...), so that a training step can chain them directly,
without an autograd graph, and still share one source of truth with the Functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from ffn.activations import Activation


# --- linear: z = x W + b ------------------------------------------------------------------------


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """z = x W + b.  x: (n, d), weight: (d, H), bias: (H,) -> z: (n, H)."""
    if bias is None:
        return x @ weight
    return torch.addmm(bias, x, weight)


def linear_backward(
    grad_z: Tensor, x: Tensor, weight: Tensor, need_x: bool = True, need_bias: bool = True
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """dx = dz W^T, dW = x^T dz, db = sum_i dz_i.  grad_z: (n, H) -> (n, d), (d, H), (H,)."""
    grad_x = grad_z @ weight.T if need_x else None
    grad_w = x.T @ grad_z
    grad_b = grad_z.sum(0) if need_bias else None
    return grad_x, grad_w, grad_b


class LinearFunction(torch.autograd.Function):
    """Affine layer z = x W + b with W stored as (d, H), as the seed writes it."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return linear_forward(x, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x, grad_w, grad_b = linear_backward(grad_z, x, weight, need_x, need_b and ctx.has_bias)
        return grad_x, grad_w if need_w else None, grad_b


# --- activations: h = g(z), dz = dh * g'(z) -----------------------------------------------------


def make_activation_function(activation: Activation) -> type[torch.autograd.Function]:
    """Build the Function for one table entry: forward g, backward dh * g' from the saved tensor.

    The entry says whether g' is written in terms of the output h (sigmoid, tanh, relu, ...), in
    which case only h is saved, or needs the input z (softplus's sigmoid, GELU).
    """

    def forward(z: Tensor, param: float) -> Tensor:
        return activation.forward(z, param)

    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        z, param = inputs
        ctx.save_for_backward(output if activation.saves == "output" else z)
        ctx.param = param

    @once_differentiable
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor, None]:
        (saved,) = ctx.saved_tensors
        return grad_h * activation.derivative(saved, ctx.param), None

    name = "".join(part.capitalize() for part in activation.name.split("_")) + "Function"
    return type(
        name,
        (torch.autograd.Function,),
        {
            "__doc__": f"{activation.name}: {activation.formula}",
            "__module__": __name__,
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
        },
    )


# --- softmax + cross-entropy, fused ------------------------------------------------------------


def softmax_cross_entropy_forward(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of softmax(logits) through log-sum-exp, and the softmax itself.

    logits: (n, M), target: (n,) int64 -> loss: (), probs: (n, M).
    """
    # Shift by the row max *before* subtracting log-sum-exp: z - lse(z) rounds lse(z) to the ulp of
    # |z| (about 1e-3 at |z| = 1e4 in float32), which swamps a small loss; (z - max) is exact
    # for the top logit, so the loss keeps full relative precision. log_softmax computes exactly
    # (z - max) - log(sum(exp(z - max))) in one kernel, and nll_loss -(1/n) sum_i log_probs[i, y_i]
    # in one more: on a 2-16-2 net the five-kernel logsumexp and gather/mean/neg were a fifth of a
    # step. Only values come from them; the gradient is the hand-written (p - onehot) / n below.
    log_probs = torch.log_softmax(logits, dim=1)
    return F.nll_loss(log_probs, target), log_probs.exp()


def softmax_cross_entropy_backward(probs: Tensor, target: Tensor) -> Tensor:
    """d loss / d logits = (softmax(z) - onehot(y)) / n.  probs: (n, M) -> (n, M)."""
    # p / n, then -1 / n added at each label in place: two kernels, where indexing costs several.
    n = target.shape[0]  # not len(): Tensor.__len__ is a Python-level wrapper
    return (probs / n).scatter_(1, target.unsqueeze(1), -1.0 / n, reduce="add")


class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """Cross-entropy of softmax(logits) against integer classes; the output delta is p - y."""

    @staticmethod
    def forward(logits: Tensor, target: Tensor) -> Tensor:
        loss, _ = softmax_cross_entropy_forward(logits, target)
        return loss

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        logits, target = inputs
        # Recomputing softmax in backward costs one exp; saving only inputs keeps forward's output
        # a plain scalar, as autograd expects of a loss.
        ctx.save_for_backward(logits, target)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor, None]:
        logits, target = ctx.saved_tensors
        probs = torch.softmax(logits, dim=1)
        return softmax_cross_entropy_backward(probs, target) * grad_loss, None


# --- mean squared error, the seed's l_n --------------------------------------------------------


def mse_forward(pred: Tensor, target: Tensor) -> Tensor:
    """(1/n) sum_i ||pred_i - target_i||^2.  pred, target: (n, M) -> ()."""
    return (pred - target).square().sum() / pred.shape[0]


def mse_backward(pred: Tensor, target: Tensor) -> Tensor:
    """d l_n / d pred = 2 (pred - target) / n.  -> (n, M)."""
    return (pred - target).mul_(2.0 / pred.shape[0])


class MSEFunction(torch.autograd.Function):
    """Sum over outputs, mean over samples: M times torch's default `F.mse_loss`."""

    @staticmethod
    def forward(pred: Tensor, target: Tensor) -> Tensor:
        return mse_forward(pred, target)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, Tensor | None]:
        pred, target = ctx.saved_tensors
        grad_pred = mse_backward(pred, target) * grad_loss
        need_pred, need_target = ctx.needs_input_grad
        return grad_pred if need_pred else None, -grad_pred if need_target else None
