"""Everything a run writes to TensorBoard: scalars, per-layer diagnostics, histograms, figures."""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from torch import Tensor

from ffn import figure_arrays, figure_worker, run_record
from ffn.event_file import EventFile, text_summary
from ffn.figure_worker import Rendered
from ffn.hparams import (
    HEADLINE_TAGS,
    HParamValue,
    session_end_summary,
    session_start_summary,
)
from ffn.model import FeedForward

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# TensorBoard's own default for histogram summaries (plugins/histogram/summary_v2.py); its
# dashboards re-bin to about this many buckets anyway.
HISTOGRAM_BINS = 30

# A sigmoid unit is saturated when its output is within this of 0 or 1 (tanh: of -1 or 1):
# there g' < 0.01 (tanh: < 0.02), and gradients through it all but vanish.
SATURATION_MARGIN = 0.01


def _timed(phase: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add each call's wall time to `self.seconds[phase]` (outermost call only)."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: RunLogger, *args: Any, **kwargs: Any) -> Any:
            if self._in_call:
                return method(self, *args, **kwargs)
            self._in_call, start = True, time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
                self._in_call = False

        return wrapper

    return decorate


class RunLogger:
    """A run's TensorBoard records, in two sibling event folders of the run folder.

    TensorBoard's HParams plugin takes every scalar tag under a session's folder, subfolders
    included, as a metric column (backend_context.py, `_compute_metric_names`): a session with
    per-layer diagnostics beside it gets dead/layer_0, grad_norm/layer_1, ... as metrics. So the
    session, the headline scalars (ffn.hparams.HEADLINE_TAGS), figures and the config go to
    `metrics/`, and every other scalar and the histograms to `diagnostics/`, which no session's
    folder holds: plain `tensorboard --logdir outputs` then shows the headline metrics only,
    and Scalars still shows every curve (runs `<run>/metrics` and `<run>/diagnostics`).
    """

    def __init__(self, log_dir: Path | str, purge_step: int | None = None) -> None:
        self.run_dir = Path(log_dir)
        self.purge_step = purge_step
        # metrics/: the HParams session, headline scalars, figures, config
        self.writer = EventFile(self.run_dir / run_record.METRICS_EVENTS, purge_step=purge_step)
        self._diagnostics: EventFile | None = None  # made at its first record
        self.closed = False
        self.seconds: dict[str, float] = {}  # logging, figures: what they cost a run
        self._in_call = False

    @property
    def diagnostics(self) -> EventFile:
        """diagnostics/: every other scalar, the histograms (made at first use)."""
        if self._diagnostics is None:
            folder = self.run_dir / run_record.DIAGNOSTICS_EVENTS
            self._diagnostics = EventFile(folder, purge_step=self.purge_step)
        return self._diagnostics

    @_timed("logging")
    def scalars(self, values: Mapping[str, float | Tensor], step: int) -> None:
        """One event a folder, holding its values (add_scalar writes one event per tag)."""
        headline: list[tuple[str, float]] = []
        others: list[tuple[str, float]] = []
        for tag, value in values.items():
            into = headline if tag in HEADLINE_TAGS else others
            into.append((tag, float(value)))
        if headline:
            self.writer.add_scalars(headline, step)
        if others:
            self.diagnostics.add_scalars(others, step)

    @_timed("logging")
    def histograms(self, model: FeedForward, preactivations: list[Tensor], step: int) -> None:
        """Weights, gradients and pre-activations per layer; non-finite tensors are skipped."""
        tensors: dict[str, Tensor | None] = {}
        for i, layer in enumerate(model.layers):
            tensors[f"weights/layer_{i}"] = layer.weight
            tensors[f"grads/layer_{i}"] = layer.weight.grad
        for i, z in enumerate(preactivations):
            tensors[f"preactivations/layer_{i}"] = z
        present = {tag: t for tag, t in tensors.items() if t is not None and t.numel()}
        protos = histogram_protos(present)
        if protos:
            summary = [Summary.Value(tag=tag, histo=proto) for tag, proto in protos.items()]
            self.diagnostics.add_summary(Summary(value=summary), step)

    @_timed("figures")
    def figure(self, tag: str, fig: Figure, step: int, save_to: Path | None = None) -> None:
        """Into TensorBoard, and as a PNG in the run folder when `save_to` is given.

        Drawn once: the PNG that goes to the file is the image TensorBoard stores.
        """
        from ffn.figures import rendered

        image = rendered(fig)
        if "matplotlib.pyplot" in sys.modules:  # a pyplot figure (ffn's own are plain): free it
            sys.modules["matplotlib.pyplot"].close(fig)
        self.image(tag, image, step, save_to)

    @_timed("figures")
    def image(self, tag: str, image: Rendered, step: int, save_to: Path | None = None) -> None:
        """A drawn figure into TensorBoard, and as the same PNG in the run folder."""
        if save_to is not None:
            save_to.parent.mkdir(parents=True, exist_ok=True)
            save_to.write_bytes(image.png)
        proto = Summary.Image(
            height=image.height, width=image.width, colorspace=4, encoded_image_string=image.png
        )
        self.writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=proto)]), step)

    @_timed("figures")
    def final_figures(
        self,
        model: FeedForward,
        x: Tensor,
        y: Tensor,
        task: str,
        out: Tensor,
        step: int,
        run_dir: Path,
    ) -> None:
        """Confusion matrix or predicted-vs-true on the test split; decision regions in 2-D.

        Drawn by ffn.figure_worker (matplotlib imported while the run trained) when it runs.
        """
        if task == "classification":
            wanted = {"confusion_matrix": figure_arrays.confusion_counts(out, y)}
            if x.shape[1] == 2:
                wanted["decision_regions"] = figure_arrays.decision_grid(model, x, y)
        else:
            wanted = {"predicted_vs_true": figure_arrays.predictions(out, y)}
        for name, arrays in wanted.items():
            image = figure_worker.render(name, arrays)
            self.image(f"figures/{name}", image, step, run_dir / "figures" / f"{name}.png")

    @_timed("logging")
    def text(self, tag: str, text: str) -> None:
        # TensorBoard renders text as markdown: indent to keep YAML as a code block.
        indented = "\n".join("    " + line for line in text.splitlines())
        self.writer.add_summary(text_summary(tag, indented))

    @_timed("logging")
    def hparams_start(self, hparams: Mapping[str, HParamValue]) -> None:
        self.writer.add_summary(session_start_summary(hparams))

    @_timed("logging")
    def hparams_end(self, status: str) -> None:
        self.writer.add_summary(session_end_summary(status))

    @_timed("logging")
    def close(self) -> None:
        if not self.closed:
            for writer in (self.writer, self._diagnostics):
                if writer is not None:
                    writer.close()
            self.closed = True


@torch.no_grad()
def layer_diagnostics(model: FeedForward, preactivations: list[Tensor]) -> dict[str, Tensor]:
    """Per-layer weight and gradient norms, sparsity, and activation health: 0-dim tensors, on
    the device (the caller moves them to the host with its other scalars, in one transfer)."""
    values: dict[str, Tensor] = {}
    weights = model.weights()
    grads = [w.grad for w in weights if w.grad is not None]  # none before a first step
    # every norm in one call (on the CPU each is the tensor's own vector_norm, bitwise): fewer
    # Python-level kernel launches an epoch
    norms = iter(torch._foreach_norm([*weights, *grads]))
    weight_norms = [next(norms) for _ in weights]
    for i, w in enumerate(weights):
        values[f"weight_norm/layer_{i}"] = weight_norms[i]
        if w.grad is not None:
            values[f"grad_norm/layer_{i}"] = next(norms)
        values[f"sparsity/layer_{i}"] = _zero_fraction(w)
    for i, z in enumerate(preactivations):
        health = activation_health(model, z)
        if health is not None:
            values[f"{model.activation.health}/layer_{i}"] = health
    return values


def activation_health(model: FeedForward, z: Tensor) -> Tensor | None:
    """Dead units (ReLU family: z <= 0 on every sample) or saturated outputs (sigmoid, tanh).

    z: (n, H) -> () fraction of units (dead) or of unit-sample pairs (saturated).
    """
    kind = model.activation.health
    if kind == "dead":
        # max over samples: 8x cheaper than all(0); the cast inside the reduction
        return (z.amax(0) <= 0).mean(dtype=torch.float64)
    if kind == "saturated":
        h = model.activation.forward(z, model.activation_param)
        low = -1.0 if model.activation.name == "tanh" else 0.0
        near = (h - low < SATURATION_MARGIN) | (1.0 - h < SATURATION_MARGIN)
        return near.mean(dtype=torch.float64)
    return None


def _zero_fraction(w: Tensor) -> Tensor:
    """(w == 0).mean(dtype=float64): the fraction of exact zeros (-0.0 one, NaN not).  () ."""
    # torch's, not numpy's count (which won on the Intel Xeon: 127 against 139 us a
    # layer_diagnostics): on the AMD EPYC numpy's first call after the epoch's steps costs ~80 us
    # (6 hot), while torch's eq and mean are warm from the accuracy's; gradient_norm,
    # layer_diagnostics and the host reads after the forwards 266 -> 231 and 345 -> 283 us an
    # epoch (thread CPU, medians over 100 epochs a variant, load 2.2-3.8)
    return (w == 0).mean(dtype=torch.float64)  # exact: count / n


@torch.no_grad()
def histogram_protos(
    tensors: Mapping[str, Tensor], bins: int = HISTOGRAM_BINS
) -> dict[str, HistogramProto]:
    """TensorBoard histograms of finite tensors, binned on their device; two host transfers.

    `bins` equal-width buckets over [min, max] of each tensor (as numpy's, [v - 0.5, v + 0.5]
    when every value is v), laid out as torch's add_histogram writes them: an empty bucket
    whose right edge is the minimum, then the counts. First every tensor's min, max, sum and
    sum of squares come to the host, in one transfer; tensors with a NaN or an inf are left out
    there; the others are binned with those edges as numbers (5 kernels a tensor, not 20), in
    the tensor's dtype, so a value within rounding of an edge may land in the neighbouring
    bucket; their counts come in a second transfer.
    """
    flats = [t.detach().reshape(-1) for t in tensors.values()]
    if not flats:
        return {}
    moments = []
    for flat in flats:
        vmin, vmax = flat.aminmax()
        moments += [vmin, vmax, flat.sum(dtype=torch.float64), flat.dot(flat)]
    stats = host_values(moments)  # float64 (exact)
    binned: list[tuple[int, str, float, float]] = []  # (position, tag, low edge, high edge)
    counts = []
    for i, (tag, flat) in enumerate(zip(tensors, flats, strict=True)):
        vmin, vmax, _, squares = stats[4 * i : 4 * i + 4]
        if not math.isfinite(squares):  # a NaN or an inf anywhere makes the sum of squares so
            continue
        low, high = (vmin - 0.5, vmax + 0.5) if vmax == vmin else (vmin, vmax)
        binned.append((i, tag, low, high))
        # numpy's binning: (x - low) * (bins / (high - low)), the top edge in the last bin
        index = (flat - low).mul_(bins / (high - low)).to(torch.int32).clamp_(0, bins - 1)
        counts.append(torch.bincount(index, minlength=bins))
    if not counts:
        return {}
    counted = host_values(counts)
    protos = {}
    for (i, tag, low, high), row in zip(binned, counted, strict=True):
        vmin, vmax, total, squares = stats[4 * i : 4 * i + 4]
        width = (high - low) / bins
        protos[tag] = HistogramProto(
            min=vmin,
            max=vmax,
            num=flats[i].numel(),
            sum=total,
            sum_squares=squares,
            bucket_limit=[low, *(low + width * k for k in range(1, bins + 1))],
            bucket=[0.0, *(float(c) for c in row)],
        )
    return protos


def host_values(tensors: Sequence[Tensor]) -> list[Any]:
    """Python numbers of 0-dim or (k,) tensors of one kind (floats, or integers): on the CPU
    each read where it is (3 us for 20 values; a stack is 22), from another device in one
    stacked transfer (the stack promotes float32 to float64, as exact as .item())."""
    if all(t.is_cpu for t in tensors):
        return [t.tolist() for t in tensors]
    return torch.stack(list(tensors)).cpu().tolist()
