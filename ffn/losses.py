"""The two losses of the notes, by task: the one table the runner, the metrics and the steps use.

Each entry holds the hand-written Function, torch's own twin, and the graph-free pair (loss and
d loss / d pred from the same formula functions the Function runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ffn.constants import TASKS
from ffn.errors import ConfigError
from ffn.functional import mse, softmax_cross_entropy
from ffn.functions import (
    mse_backward,
    mse_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)

Loss = Callable[[Tensor, Tensor], Tensor]


def native_mse(pred: Tensor, target: Tensor) -> Tensor:
    """(1/n) sum_i ||pred_i - target_i||^2 from torch's ops: M times `F.mse_loss`."""
    return F.mse_loss(pred, target, reduction="sum") / pred.shape[0]


def _cross_entropy_and_delta(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    loss, probs = softmax_cross_entropy_forward(logits, target)
    return loss, softmax_cross_entropy_backward(probs, target, into_probs=True)


def _mse_and_delta(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    return mse_forward(pred, target), mse_backward(pred, target)


@dataclass(frozen=True)
class TaskLoss:
    """One task's loss.  pred: (n, M); target: (n,) int64 classes or (n, M) values."""

    manual: Loss  # through the hand-written Function
    autograd: Loss  # torch's own ops
    value_and_delta: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # -> (), (n, M)


LOSSES: dict[str, TaskLoss] = {
    "classification": TaskLoss(softmax_cross_entropy, F.cross_entropy, _cross_entropy_and_delta),
    "regression": TaskLoss(mse, native_mse, _mse_and_delta),
}


def task_loss(task: str) -> TaskLoss:
    """The table entry of `task`, or a ConfigError naming dataset.task."""
    try:
        return LOSSES[task]
    except KeyError:
        raise ConfigError("dataset.task", task, "one of " + ", ".join(TASKS)) from None


def loss_function(task: str, backend: str = "manual") -> Loss:
    """Softmax cross-entropy for classification, the notes' squared error for regression."""
    entry = task_loss(task)
    return entry.manual if backend == "manual" else entry.autograd
