"""Step-size schedules torch.optim.lr_scheduler lacks a class for."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


class InverseTimeLR(LambdaLR):
    """eta_k = eta_0 / (1 + decay k)^power: power 1 is inverse time, 0.5 inverse square root."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, decay: float = 0.1, power: float = 1.0, **kw
    ) -> None:
        self.decay, self.power = decay, power
        super().__init__(optimizer, lambda k: (1.0 + decay * k) ** -power, **kw)
