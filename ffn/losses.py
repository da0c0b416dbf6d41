"""The two losses of the seed, by task: the hand-written Function and torch's own twin."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from ffn.errors import ConfigError
from ffn.functional import mse, softmax_cross_entropy

Loss = Callable[[Tensor, Tensor], Tensor]
TASKS = ("classification", "regression")


def native_mse(pred: Tensor, target: Tensor) -> Tensor:
    """(1/n) sum_i ||pred_i - target_i||^2 from torch's ops: M times `F.mse_loss`."""
    return F.mse_loss(pred, target, reduction="sum") / pred.shape[0]


_LOSSES: dict[str, dict[str, Loss]] = {
    "classification": {"manual": softmax_cross_entropy, "autograd": F.cross_entropy},
    "regression": {"manual": mse, "autograd": native_mse},
}


def loss_function(task: str, backend: str = "manual") -> Loss:
    """Softmax cross-entropy for classification, the seed's squared error for regression."""
    if task not in _LOSSES:
        raise ConfigError("dataset.task", task, "one of " + ", ".join(TASKS))
    return _LOSSES[task][backend]
