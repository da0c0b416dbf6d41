"""Matplotlib figures of a trained model: confusion matrix, predicted vs true, decision regions.

Plain `Figure`s, not pyplot's: they are only saved (PNG and TensorBoard), never shown, so no
window, backend or pyplot import is needed (pyplot costs ~0.1-0.2 s more of a run), and nothing
has to be closed. `savefig(format="png")` renders through Agg.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ffn.model import FeedForward


def confusion_matrix_figure(logits: Tensor, target: Tensor, n_classes: int) -> Figure:
    """Counts of (true, predicted) classes.  logits: (n, C), target: (n,)."""
    pred = logits.argmax(1).cpu()
    counts = torch.zeros(n_classes, n_classes, dtype=torch.int64)
    counts.index_put_((target.cpu(), pred), torch.ones_like(pred), accumulate=True)
    fig = Figure(figsize=(1.6 + 0.45 * n_classes, 1.2 + 0.45 * n_classes))
    ax = fig.subplots()
    ax.imshow(counts.numpy(), cmap="Blues")
    for (i, j), c in _cells(counts):
        ax.text(j, i, str(c), ha="center", va="center", fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    ax.set_xticks(range(n_classes))
    ax.set_yticks(range(n_classes))
    _margins(fig, left=0.45, right=0.15, bottom=0.6, top=0.4)  # class labels: 1-2 digits
    return fig


def _cells(counts: Tensor) -> list[tuple[tuple[int, int], int]]:
    n = counts.shape[0]
    return [((i, j), int(counts[i, j])) for i in range(n) for j in range(n)]


def predicted_vs_true_figure(pred: Tensor, target: Tensor) -> Figure:
    """Scatter of predictions against targets, one colour per output.  (n, M) each."""
    pred, target = pred.detach().cpu().double(), target.cpu().double()
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    for m in range(pred.shape[1]):
        ax.scatter(target[:, m], pred[:, m], s=8, alpha=0.6, label=f"output {m}")
    low, high = float(min(pred.min(), target.min())), float(max(pred.max(), target.max()))
    ax.plot([low, high], [low, high], "k--", lw=1)
    ax.set(xlabel="true", ylabel="predicted", title="predicted vs true (test)")
    fig.tight_layout()
    return fig


@torch.no_grad()
def decision_regions_figure(model: FeedForward, x: Tensor, y: Tensor, grid: int = 200) -> Figure:
    """Predicted class over the plane, with the points on top.  x: (n, 2), y: (n,)."""
    xs = x.detach().cpu().double()
    low, high = xs.min(0).values - 0.5, xs.max(0).values + 0.5
    g0 = torch.linspace(float(low[0]), float(high[0]), grid, dtype=torch.float64)
    g1 = torch.linspace(float(low[1]), float(high[1]), grid, dtype=torch.float64)
    mesh = torch.cartesian_prod(g0, g1)  # (grid^2, 2), second coordinate fastest
    param = next(model.parameters())
    classes = model(mesh.to(param)).argmax(1).reshape(grid, grid).T.cpu()
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    ax.contourf(g0.numpy(), g1.numpy(), classes.numpy(), alpha=0.3, cmap="tab10")
    ax.scatter(xs[:, 0], xs[:, 1], c=y.cpu().numpy(), s=8, cmap="tab10", edgecolors="k", lw=0.2)
    ax.set(xlabel="x1", ylabel="x2", title="decision regions (test points)")
    _margins(fig, left=0.8, right=0.25, bottom=0.6, top=0.4)  # ticks up to "-10.0" wide
    return fig


def _margins(fig: Figure, left: float, right: float, bottom: float, top: float) -> None:
    """Fixed margins, in inches, where tight_layout would measure them: its measuring is a
    draw of its own (a third of a figure's cost), and these figures' labels vary little."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height
    )
