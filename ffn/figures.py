"""Matplotlib figures of a trained model, drawn from plain arrays: confusion matrix, predicted
vs true, decision regions.

Torch-free: ffn.figure_worker draws them in a process of its own, which imports matplotlib
(half a second) while the run trains; ffn.figure_arrays makes the arrays from the model's
tensors. Plain `Figure`s, not pyplot's: they are only saved (PNG and TensorBoard), never shown,
so no window, backend or pyplot import is needed, and nothing has to be closed.
`savefig(format="png")` renders through Agg.

A figure whose axes an earlier one in this process had (a confusion matrix of as many classes;
decision regions over the same test points) is that Figure again with its data swapped: in the
worker, a sweep's or an ensemble's members draw the same axes again and again, and building the
axes and their ticks is a quarter of a figure's cost. Its renderer, kept with it, replays the
glyph images of a text it drew before at the same place (the ticks, labels and title; a count
that recurs): a reused 10-class confusion matrix 65 -> 44 ms (thread CPU, Xeon). The PNG is the
same, byte for byte (tests/test_ensemble.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, fontManager, get_font

from ffn.figure_worker import Rendered

FIGURE_DPI = 100
KEEP_FIGURES = 8  # figures kept for reuse, the newest: a sweep draws a few kinds of axes
# The kept figures and the artists whose data a reuse swaps, by drawing and what fixes the axes
_KEPT: dict[tuple, dict[str, Any]] = {}


class _ReplayingRenderer(RendererAgg):
    """Agg's renderer, which rasterises a text it has drawn before at the same place (string,
    font, size, angle, position, antialiasing) by replaying that draw's glyph images, which
    depend on nothing else: the pixels are the same, blended with the text's colour as then.

    A kept figure drawn again (a sweep's confusion matrices: the ticks, labels and title, and
    every cell whose count recurs, mostly the zeros) spends a third of its time in Agg's text
    drawing, FreeType's layout and glyph rendering (22 of 65 ms a 10-class matrix; Xeon). Only a
    text whose drawing was glyph images alone is replayed; any other (mathtext's boxes) is
    drawn anew each time."""

    MAX_TEXTS = 4096  # kept glyph lists (a 10-class matrix: ~125 texts, a few hundred counts)

    def __init__(self, width: float, height: float, dpi: float) -> None:
        super().__init__(width, height, dpi)
        self._glyphs: dict[tuple, list[tuple]] = {}
        self._heights: dict[FontProperties, tuple[float | None, ...]] = {}

    def _get_font_height_metrics(self, prop: FontProperties) -> tuple[float | None, ...]:
        """(ascent, descent, line gap) of prop's font at this dpi, in pixels, as matplotlib's
        Text._get_layout computes them (from 3.11 on it asks a renderer that has this method;
        None, None, None: it measures instead), once a font and size: each text's layout read
        the font's tables anew, twice a draw (`python benchmarks/bench_figures.py [--tree
        <main before>]`, thread CPU, AMD EPYC: a reused 10-class confusion matrix 43 -> 33 ms,
        decision regions 27 -> 24). The same PNG, byte for byte (tests/test_ensemble.py)."""
        heights = self._heights.get(prop)
        if heights is None:
            heights = self._heights[prop.copy()] = _font_height_metrics(prop, self.dpi)
        return heights

    def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if ismath:
            return super().draw_text(gc, x, y, s, prop, angle, ismath, mtext)
        key = (
            s,
            prop.copy(),  # FontProperties compare by their hash: family, style, size, file ...
            angle,
            x,
            y,
            gc.get_antialiased(),
            None if mtext is None else (mtext.get_fontfeatures(), mtext.get_language()),
        )
        glyphs = self._glyphs.get(key)
        if glyphs is not None:
            for image, left, top, image_angle in glyphs:
                self._renderer.draw_text_image(image, left, top, image_angle, gc)
            return None
        recorder = _GlyphRecorder(self._renderer)
        self._renderer = recorder
        try:
            super().draw_text(gc, x, y, s, prop, angle, ismath, mtext)
        finally:
            self._renderer = recorder.renderer
        if recorder.glyphs_only and len(self._glyphs) < self.MAX_TEXTS:
            self._glyphs[key] = recorder.glyphs
        return None


def _font_height_metrics(prop: FontProperties, dpi: float) -> tuple[float | None, ...]:
    """matplotlib 3.11's Text._get_layout: the font's typographic ascent, descent and line gap
    (its OS/2 table, else hhea), scaled to prop's size at dpi, in pixels."""
    font = get_font(fontManager._find_fonts_by_props(prop))
    for table_name, gap, ascent, descent in (
        ("OS/2", "sTypoLineGap", "sTypoAscender", "sTypoDescender"),
        ("hhea", "lineGap", "ascent", "descent"),
    ):
        table = font.get_sfnt_table(table_name)
        if table is None:
            continue
        scale = 1 / font.get_sfnt_table("head")["unitsPerEm"] * prop.get_size_in_points() * dpi / 72
        return table[ascent] * scale, -table[descent] * scale, table[gap] * scale
    return None, None, None


class _GlyphRecorder:
    """Agg's C renderer, passing every call through; it keeps the glyph images drawn."""

    def __init__(self, renderer: Any) -> None:
        self.renderer, self.glyphs, self.glyphs_only = renderer, [], True

    def draw_text_image(self, image, left, top, angle, gc) -> None:
        self.glyphs.append((np.array(image, copy=True), left, top, angle))
        self.renderer.draw_text_image(image, left, top, angle, gc)

    def __getattr__(self, name: str) -> Any:
        self.glyphs_only = False  # anything else drawn: this text is not replayed
        return getattr(self.renderer, name)


class _Canvas(FigureCanvasAgg):
    """The Agg canvas each figure keeps (savefig would make one a call), whose renderer, reused
    from draw to draw as Agg's own is, replays texts (`_ReplayingRenderer`)."""

    def get_renderer(self) -> RendererAgg:
        w, h = self.get_width_height(physical=True)
        key = w, h, self.figure.dpi
        if self._lastKey != key:
            self.renderer = _ReplayingRenderer(w, h, self.figure.dpi)
            self._lastKey = key
        return self.renderer


def _figure(**kwargs: Any) -> Figure:
    fig = Figure(**kwargs)
    _Canvas(fig)
    return fig


def rendered(fig: Figure) -> Rendered:
    """The figure drawn once, as PNG at FIGURE_DPI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    width, height = (round(v) for v in fig.get_size_inches() * FIGURE_DPI)
    return Rendered(buffer.getvalue(), width, height)


def confusion_matrix_figure(counts: np.ndarray) -> Figure:
    """Counts of (true, predicted) classes.  counts: (C, C) integers, rows true."""
    n_classes = counts.shape[0]
    key = ("confusion_matrix", counts.shape)
    kept = _kept(key)
    if kept is not None:  # the same axes: new counts, the colours scaled to them as imshow does
        kept["image"].set_data(counts)
        kept["image"].set_clim(counts.min(), counts.max())
        for text, count in zip(kept["texts"], counts.ravel(), strict=True):
            text.set_text(str(int(count)))
        return kept["figure"]
    fig = _figure(figsize=(1.6 + 0.45 * n_classes, 1.2 + 0.45 * n_classes))
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    texts = [  # row by row, as counts.ravel()
        ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8)
        for i in range(n_classes)
        for j in range(n_classes)
    ]
    _keep(key, figure=fig, image=image, texts=texts)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    ax.set_xticks(range(n_classes))
    ax.set_yticks(range(n_classes))
    _margins(fig, left=0.45, right=0.15, bottom=0.6, top=0.4)  # class labels: 1-2 digits
    return fig


def predicted_vs_true_figure(pred: np.ndarray, target: np.ndarray) -> Figure:
    """Scatter of predictions against targets, one colour per output.  (n, M) each."""
    fig = _figure(figsize=(4, 4))
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
    key = ("decision_regions", *(a.tobytes() for a in (g0, g1, x, y)), y.dtype.str)
    kept = _kept(key)
    if kept is not None:  # the same grid and points: only the regions are drawn anew
        kept["regions"].remove()
        # below the points, as in a new figure, where the regions were added before them
        kept["regions"] = kept["axes"].contourf(
            g0, g1, classes, alpha=0.3, cmap="tab10", zorder=kept["zorder"]
        )
        return kept["figure"]
    fig = _figure(figsize=(4.5, 4))
    ax = fig.subplots()
    regions = ax.contourf(g0, g1, classes, alpha=0.3, cmap="tab10")
    ax.scatter(x[:, 0], x[:, 1], c=y, s=8, cmap="tab10", edgecolors="k", lw=0.2)
    ax.set(xlabel="x1", ylabel="x2", title="decision regions (test points)")
    _margins(fig, left=0.8, right=0.25, bottom=0.6, top=0.4)  # ticks up to "-10.0" wide
    below_points = regions.get_zorder() - 1e-6
    _keep(key, figure=fig, axes=ax, regions=regions, zorder=below_points)
    return fig


def _kept(key: tuple) -> dict[str, Any] | None:
    """The figure kept under `key`, now the newest, or None."""
    kept = _KEPT.pop(key, None)
    if kept is not None:
        _KEPT[key] = kept
    return kept


def _keep(key: tuple, **artists: Any) -> None:
    _KEPT[key] = artists
    while len(_KEPT) > KEEP_FIGURES:
        del _KEPT[next(iter(_KEPT))]


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
