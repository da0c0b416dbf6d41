"""Study 1, activations and depth: gradient norms by layer, training curves, final accuracy.

    python experiments/activations_depth/analyze.py [SWEEP_DIR] [--out DIR]

SWEEP_DIR is a folder of `python run.py -m experiment=activations_depth` (default: the latest
under outputs/experiments/activations_depth/). Each layer's gradient norm ||dL/dW_l|| is that of
the full-batch training loss, at initialisation (the model rebuilt from the run's seed) and at the
end (checkpoints/last.pt). Writes the tables into DIR/README.md between the results markers, the
figures into DIR (default: this folder), the study's line into experiments/README.md when DIR is
this folder, and every number into SWEEP_DIR/analysis.json.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ffn.data import load_dataset
from ffn.step import manual_gradients
from ffn.train import DTYPES, build_model

# common.py is one folder up: `python experiments/<study>/analyze.py` puts only <study>/ on path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (
    SweepJob,
    command_line,
    load_runs,
    mean_std,
    save_figure,
    scalar_curve,
    sweep_minutes,
    write_results,
)

HERE = Path(__file__).resolve().parent
NAME = HERE.name
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu")
COLORS = {"sigmoid": "tab:blue", "tanh": "tab:orange", "relu": "tab:green", "leaky_relu": "tab:red"}


# --------------------------------------------------------------------------- the study


def layer_gradient_norms(run: SweepJob, cache: dict) -> tuple[list[float], list[float], float]:
    """Per layer ||dL/dW_l|| of the full-batch training loss at the start and at the end.

    Also returns the training loss at the start (epoch 0, which the runner does not log).
    """
    cfg = run.cfg
    dtype = DTYPES[cfg.trainer.dtype]
    key = (cfg.trainer.seed, cfg.trainer.dtype)
    if key not in cache:
        cache[key] = load_dataset(cfg.dataset, seed=cfg.trainer.seed, dtype=dtype)
    data = cache[key]
    model = build_model(cfg, data, torch.device("cpu"), dtype)
    norms, losses = [], []
    for state in (None, run.path / "checkpoints" / "last.pt"):
        if state is not None:
            if not state.exists():
                norms.append([math.nan] * len(model.layers))
                continue
            model.load_state_dict(torch.load(state, weights_only=True)["model"])
        losses.append(float(manual_gradients(model, data.x_train, data.y_train, data.task)))
        norms.append([float(layer.weight.grad.norm()) for layer in model.layers])
    return norms[0], norms[1], losses[0]


def analyze(sweep: Path, out: Path) -> dict:
    runs = load_runs(sweep)
    cache: dict = {}
    rows = []
    for run in runs:
        grad_init, grad_end, loss_init = layer_gradient_norms(run, cache)
        loss = [loss_init, *scalar_curve(run.path, "train/loss").tolist()]
        rows.append(
            {
                "activation": run.cfg.model.activation,
                "depth": len(run.cfg.model.hidden),
                "seed": run.cfg.trainer.seed,
                "status": run.status,
                "test_accuracy": run.metrics.get("test/accuracy", math.nan),
                "grad_init": grad_init,
                "grad_end": grad_end,
                "train_loss": loss,  # epochs 0 (initialisation), 1, 2, ...
            }
        )
    activations = [a for a in ACTIVATIONS if any(r["activation"] == a for r in rows)]
    depths = sorted({r["depth"] for r in rows})
    n_seeds = len({r["seed"] for r in rows})

    def pick(activation: str, depth: int) -> list[dict]:
        return [r for r in rows if r["activation"] == activation and r["depth"] == depth]

    # Table 1: test accuracy by depth and activation.
    lines = [
        f"Test accuracy (%) on digits, mean ± std over {n_seeds} seeds "
        f"({len(rows)} runs, {sum(r['status'] == 'completed' for r in rows)} completed):",
        "",
        "| depth | " + " | ".join(activations) + " |",
        "|---:|" + "---:|" * len(activations),
    ]
    for depth in depths:
        cells = [
            mean_std([r["test_accuracy"] for r in pick(a, depth)], scale=100, fmt="{:.1f}")
            for a in activations
        ]
        lines.append(f"| {depth} | " + " | ".join(cells) + " |")

    # Table 2: the gradient reaching the first layer relative to the last, at the deepest depth.
    deepest = depths[-1]
    lines += [
        "",
        f"Depth {deepest}: ||dL/dW|| of the first layer divided by that of the output layer, "
        "full-batch training loss, mean ± std over seeds:",
        "",
        "| activation | at initialisation | after training |",
        "|---|---:|---:|",
    ]
    ratios = {}
    for a in activations:
        runs_a = pick(a, deepest)
        init = [r["grad_init"][0] / r["grad_init"][-1] for r in runs_a]
        end = [r["grad_end"][0] / r["grad_end"][-1] for r in runs_a]
        ratios[a] = {"init": init, "end": end}
        lines.append(f"| {a} | {mean_std(init, '{:.2e}')} | {mean_std(end, '{:.2e}')} |")
    # Table 3: how far and how smoothly training went, at the depths the curves show.
    shown = sorted({depths[0], depths[len(depths) // 2], deepest})
    lines += [
        "",
        "Training loss after the last epoch, and the number of epochs after which the "
        "full training loss was higher than after the one before, mean ± std over seeds:",
        "",
        "| activation | "
        + " | ".join(f"depth {d}: final loss | depth {d}: rises" for d in shown)
        + " |",
        "|---|" + "---:|---:|" * len(shown),
    ]
    for a in activations:
        cells = []
        for d in shown:
            curves = [np.array(r["train_loss"]) for r in pick(a, d)]
            cells.append(mean_std([c[-1] for c in curves], "{:.2g}"))
            cells.append(mean_std([int((np.diff(c) > 0).sum()) for c in curves], "{:.1f}"))
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", f"The sweep: {len(runs)} runs in {sweep_minutes(sweep):.1f} min of wall time."]
    block = "\n".join(lines)

    out.mkdir(parents=True, exist_ok=True)
    plot_gradients(rows, activations, deepest, out / "grad_norm_by_layer.png")
    plot_curves(rows, activations, shown, out / "training_curves.png")
    plot_accuracy(rows, activations, depths, out / "accuracy_by_depth.png")

    acc = {
        a: mean_std([r["test_accuracy"] for r in pick(a, deepest)], "{:.1f}", 100)
        for a in activations
    }
    line = (
        f"At depth {deepest} on digits (plain SGD), the first layer's gradient at the start is "
        + ", ".join(f"{a} {np.mean(ratios[a]['init']):.1e}" for a in activations)
        + " of the output layer's; test accuracy "
        + ", ".join(f"{a} {acc[a]}%" for a in activations)
        + f" (mean ± std over {n_seeds} seeds)."
    )
    write_results(out, NAME, block, line)
    analysis = {"rows": rows, "ratios_first_over_last": ratios, "line": line}
    (sweep / "analysis.json").write_text(json.dumps(analysis, indent=1, allow_nan=True))
    print(block + "\n\n" + line)
    return analysis


# --------------------------------------------------------------------------- figures


def _band(ax, x, values, color, label, log=False):
    """Mean line and min-max band over seeds.  values: (n_seeds, len(x))."""
    values = np.asarray(values, dtype=float)
    mean = np.exp(np.nanmean(np.log(values), 0)) if log else np.nanmean(values, 0)
    ax.plot(x, mean, "-o", color=color, label=label, ms=3)
    ax.fill_between(x, np.nanmin(values, 0), np.nanmax(values, 0), color=color, alpha=0.2)


def plot_gradients(rows, activations, depth, path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in zip(
        axes, ("grad_init", "grad_end"), ("at initialisation", "after training"), strict=True
    ):
        for a in activations:
            values = [r[key] for r in rows if r["activation"] == a and r["depth"] == depth]
            x = np.arange(1, len(values[0]) + 1)
            _band(ax, x, values, COLORS[a], a, log=True)
        ax.set_xticks(x)
        ax.set_yscale("log")
        ax.set_xlabel("layer (1 = input side, last = output layer)")
        ax.set_title(f"depth {depth}, {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("||dL/dW_l|| (full-batch training loss)")
    axes[0].legend()
    save_figure(fig, path)


def plot_curves(rows, activations, depths, path):
    fig, axes = plt.subplots(1, len(depths), figsize=(4 * len(depths), 3.5), sharey=True)
    for ax, depth in zip(np.atleast_1d(axes), depths, strict=True):
        for a in activations:
            curves = [r["train_loss"] for r in rows if r["activation"] == a and r["depth"] == depth]
            n = min(len(c) for c in curves)
            _band(ax, np.arange(n), [c[:n] for c in curves], COLORS[a], a)
        ax.set_yscale("log")
        ax.set_title(f"depth {depth}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("training loss")
    np.atleast_1d(axes)[0].legend()
    save_figure(fig, path)


def plot_accuracy(rows, activations, depths, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for a in activations:
        values = [
            [r["test_accuracy"] * 100 for r in rows if r["activation"] == a and r["depth"] == d]
            for d in depths
        ]
        mean = [np.nanmean(v) for v in values]
        std = [np.nanstd(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
        ax.errorbar(depths, mean, yerr=std, fmt="-o", color=COLORS[a], label=a, ms=3, capsize=2)
    ax.set_xlabel("hidden layers")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(depths)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main(argv=None) -> None:
    command_line(analyze, __doc__, HERE, argv)


if __name__ == "__main__":
    main()
