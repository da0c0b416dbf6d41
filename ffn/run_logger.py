"""Everything a run writes to TensorBoard: scalars, per-layer diagnostics, histograms, figures."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from ffn.hparams import HParamValue, session_end_summary, session_start_summary
from ffn.model import FeedForward

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# A sigmoid unit is saturated when its output is within this of 0 or 1 (tanh: of -1 or 1):
# there g' < 0.01 (tanh: < 0.02), and gradients through it all but vanish.
SATURATION_MARGIN = 0.01


def _timed(method: Callable[..., Any]) -> Callable[..., Any]:
    """Add the call's wall time to `self.seconds` (outermost call only), to report its cost."""

    @functools.wraps(method)
    def wrapper(self: RunLogger, *args: Any, **kwargs: Any) -> Any:
        if self._in_call:
            return method(self, *args, **kwargs)
        self._in_call, start = True, time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self._in_call = False

    return wrapper


class RunLogger:
    """One SummaryWriter in the run folder itself, so the HParams dashboard links to its curves."""

    def __init__(self, log_dir: Path | str, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self.closed = False
        self.seconds = 0.0  # spent in this logger: the share of a run that logging costs
        self._in_call = False

    @_timed
    def scalars(self, values: Mapping[str, float | Tensor], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), step)

    @_timed
    @torch.no_grad()
    def layers(self, model: FeedForward, preactivations: list[Tensor], step: int) -> None:
        """Per-layer weight and gradient norms, sparsity, and activation health."""
        values: dict[str, Tensor] = {}
        for i, layer in enumerate(model.layers):
            w = layer.weight
            values[f"weight_norm/layer_{i}"] = w.norm()
            if w.grad is not None:
                values[f"grad_norm/layer_{i}"] = w.grad.norm()
            values[f"sparsity/layer_{i}"] = (w == 0).double().mean()
        for i, z in enumerate(preactivations):
            health = activation_health(model, z)
            if health is not None:
                values[f"{model.activation.health}/layer_{i}"] = health
        # One transfer for all of them, instead of one sync per scalar.
        host = torch.stack([v.double() for v in values.values()]).cpu().tolist()
        self.scalars(dict(zip(values, host, strict=True)), step)

    @_timed
    @torch.no_grad()
    def histograms(self, model: FeedForward, preactivations: list[Tensor], step: int) -> None:
        """Weights, gradients and pre-activations per layer; non-finite tensors are skipped."""
        tensors: dict[str, Tensor | None] = {}
        for i, layer in enumerate(model.layers):
            tensors[f"weights/layer_{i}"] = layer.weight
            tensors[f"grads/layer_{i}"] = layer.weight.grad
        for i, z in enumerate(preactivations):
            tensors[f"preactivations/layer_{i}"] = z
        for tag, t in tensors.items():
            if t is not None and t.numel() and bool(torch.isfinite(t).all()):
                self.writer.add_histogram(tag, t.detach().cpu().double(), step, bins="auto")

    @_timed
    def figure(self, tag: str, fig: Figure, step: int, save_to: Path | None = None) -> None:
        """Into TensorBoard, and as a PNG in the run folder when `save_to` is given."""
        if save_to is not None:
            save_to.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(save_to, dpi=100)
        self.writer.add_figure(tag, fig, step, close=True)

    @_timed
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
        """Confusion matrix or predicted-vs-true on the test split; decision regions in 2-D."""
        from ffn import figures  # matplotlib, only when figures are drawn

        folder = run_dir / "figures"
        if task == "classification":
            fig = figures.confusion_matrix_figure(out, y, out.shape[1])
            self.figure("figures/confusion_matrix", fig, step, folder / "confusion_matrix.png")
            if x.shape[1] == 2:
                fig = figures.decision_regions_figure(model, x, y)
                self.figure("figures/decision_regions", fig, step, folder / "decision_regions.png")
        else:
            fig = figures.predicted_vs_true_figure(out, y)
            self.figure("figures/predicted_vs_true", fig, step, folder / "predicted_vs_true.png")

    @_timed
    def text(self, tag: str, text: str) -> None:
        # TensorBoard renders text as markdown: indent to keep YAML as a code block.
        self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()))

    @_timed
    def hparams_start(self, hparams: Mapping[str, HParamValue]) -> None:
        self.writer.file_writer.add_summary(session_start_summary(hparams))

    @_timed
    def hparams_end(self, status: str) -> None:
        self.writer.file_writer.add_summary(session_end_summary(status))

    @_timed
    def close(self) -> None:
        if not self.closed:
            self.writer.flush()
            self.writer.close()
            self.closed = True


def activation_health(model: FeedForward, z: Tensor) -> Tensor | None:
    """Dead units (ReLU family: z <= 0 on every sample) or saturated outputs (sigmoid, tanh).

    z: (n, H) -> () fraction of units (dead) or of unit-sample pairs (saturated).
    """
    kind = model.activation.health
    if kind == "dead":
        return (z <= 0).all(0).double().mean()
    if kind == "saturated":
        h = model.activation.forward(z, model.activation_param)
        low = -1.0 if model.activation.name == "tanh" else 0.0
        near = (h - low < SATURATION_MARGIN) | (1.0 - h < SATURATION_MARGIN)
        return near.double().mean()
    return None
