"""The arrays each end figure of ffn.figures is drawn from, made from the model's tensors."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ffn.model import FeedForward

DECISION_GRID = 200  # points along each axis of the decision regions' plane


def confusion_counts(logits: Tensor, target: Tensor) -> dict[str, np.ndarray]:
    """counts: (C, C) of (true, predicted) classes.  logits: (n, C), target: (n,)."""
    n_classes = logits.shape[1]
    pred = logits.argmax(1).cpu()
    counts = torch.zeros(n_classes, n_classes, dtype=torch.int64)
    counts.index_put_((target.cpu(), pred), torch.ones_like(pred), accumulate=True)
    return {"counts": counts.numpy()}


def predictions(pred: Tensor, target: Tensor) -> dict[str, np.ndarray]:
    """pred and target as float64 arrays.  (n, M) each."""
    return {"pred": pred.detach().cpu().double().numpy(), "target": target.cpu().double().numpy()}


@torch.no_grad()
def decision_grid(
    model: FeedForward, x: Tensor, y: Tensor, grid: int = DECISION_GRID
) -> dict[str, np.ndarray]:
    """The predicted class over the points' plane and the points.  x: (n, 2), y: (n,)."""
    xs = x.detach().cpu().double()
    low, high = xs.min(0).values - 0.5, xs.max(0).values + 0.5
    g0 = torch.linspace(float(low[0]), float(high[0]), grid, dtype=torch.float64)
    g1 = torch.linspace(float(low[1]), float(high[1]), grid, dtype=torch.float64)
    mesh = torch.cartesian_prod(g0, g1)  # (grid^2, 2), second coordinate fastest
    param = next(model.parameters())
    classes = model(mesh.to(param)).argmax(1).reshape(grid, grid).T.cpu()
    return {
        "g0": g0.numpy(),
        "g1": g1.numpy(),
        "classes": classes.numpy(),
        "x": xs.numpy(),
        "y": y.cpu().numpy(),
    }
