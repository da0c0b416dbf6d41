"""Matplotlib figures of a trained model, drawn from plain arrays: confusion matrix, predicted
vs true, decision regions.

Torch-free: ffn.figure_worker draws them in a process of its own, which imports matplotlib
(half a second) while the run trains; ffn.figure_arrays makes the arrays from the model's
tensors. Plain `Figure`s, not pyplot's: they are only saved (PNG and TensorBoard), never shown,
so no window, backend or pyplot import is needed, and nothing has to be closed.
`savefig(format="png")` renders through Agg.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from matplotlib.figure import Figure

from ffn.figure_worker import Rendered

FIGURE_DPI = 100


def rendered(fig: Figure) -> Rendered:
    """The figure drawn once, as PNG at FIGURE_DPI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    width, height = (round(v) for v in fig.get_size_inches() * FIGURE_DPI)
    return Rendered(buffer.getvalue(), width, height)


def confusion_matrix_figure(counts: np.ndarray) -> Figure:
    """Counts of (true, predicted) classes.  counts: (C, C) integers, rows true."""
    n_classes = counts.shape[0]
    fig = Figure(figsize=(1.6 + 0.45 * n_classes, 1.2 + 0.45 * n_classes))
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    for i in range(n_classes):
        for j in range(n_classes):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    ax.set_xticks(range(n_classes))
    ax.set_yticks(range(n_classes))
    _margins(fig, left=0.45, right=0.15, bottom=0.6, top=0.4)  # class labels: 1-2 digits
    return fig


def predicted_vs_true_figure(pred: np.ndarray, target: np.ndarray) -> Figure:
    """Scatter of predictions against targets, one colour per output.  (n, M) each."""
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    for m in range(pred.shape[1]):
        ax.scatter(target[:, m], pred[:, m], s=8, alpha=0.6, label=f"output {m}")
    low, high = float(min(pred.min(), target.min())), float(max(pred.max(), target.max()))
    ax.plot([low, high], [low, high], "k--", lw=1)
    ax.set(xlabel="true", ylabel="predicted", title="predicted vs true (test)")
    fig.tight_layout()
    return fig


def decision_regions_figure(
    g0: np.ndarray, g1: np.ndarray, classes: np.ndarray, x: np.ndarray, y: np.ndarray
) -> Figure:
    """Predicted class over the plane, with the points on top.

    g0: (G,), g1: (G,) the grid's coordinates; classes: (G, G), rows along g1; x: (n, 2), y: (n,).
    """
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    ax.contourf(g0, g1, classes, alpha=0.3, cmap="tab10")
    ax.scatter(x[:, 0], x[:, 1], c=y, s=8, cmap="tab10", edgecolors="k", lw=0.2)
    ax.set(xlabel="x1", ylabel="x2", title="decision regions (test points)")
    _margins(fig, left=0.8, right=0.25, bottom=0.6, top=0.4)  # ticks up to "-10.0" wide
    return fig


# Each end figure by name: the arrays ffn.figure_arrays makes for it are its keyword arguments
DRAWINGS: dict[str, Callable[..., Figure]] = {
    "confusion_matrix": confusion_matrix_figure,
    "predicted_vs_true": predicted_vs_true_figure,
    "decision_regions": decision_regions_figure,
}


def render(name: str, arrays: dict[str, np.ndarray]) -> Rendered:
    """DRAWINGS[name](**arrays), drawn as PNG."""
    return rendered(DRAWINGS[name](**arrays))


def _margins(fig: Figure, left: float, right: float, bottom: float, top: float) -> None:
    """Fixed margins, in inches, where tight_layout would measure them: its measuring is a
    draw of its own (a third of a figure's cost), and these figures' labels vary little."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height
    )
