"""Study 4, MNIST-1D: logistic regression and a 40-100-100-10 MLP against the paper's numbers.

    python experiments/mnist1d/analyze.py [SWEEP_DIR] [--out DIR]

SWEEP_DIR is a folder of `python run.py -m experiment=mnist1d` (default: the latest under
outputs/experiments/mnist1d/). Test accuracy comes from each run's metrics.json, the training
curves from its event files. hidden=[] is logistic regression whatever the activation the sweep
paired it with: one run a seed is kept (the others are the same computation). Writes the table
into DIR/README.md between the results markers, the figure into DIR (default: this folder), the
study's line into experiments/README.md when DIR is this folder, and every number into
SWEEP_DIR/analysis.json.
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
from omegaconf import DictConfig

# common.py is one folder up: `python experiments/<study>/analyze.py` puts only <study>/ on path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (
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
# Greydanus, "Scaling down deep learning with MNIST-1D" (2020/2024): test accuracy (%)
PAPER = {"logistic regression": "32", "MLP relu": "68 (paper), 65 (its notebooks)"}


# --------------------------------------------------------------------------- the study


def model_name(cfg: DictConfig) -> str:
    if not list(cfg.model.hidden):
        return "logistic regression"
    return f"MLP {cfg.model.activation}"


def analyze(sweep: Path, out: Path) -> dict:
    runs = load_runs(sweep)
    rows, seen = [], set()
    for run in runs:
        name, seed = model_name(run.cfg), run.cfg.trainer.seed
        if (name, seed) in seen:
            continue  # logistic regression again, under another activation's name
        seen.add((name, seed))
        rows.append(
            {
                "model": name,
                "seed": seed,
                "status": run.status,
                "test_accuracy": run.metrics.get("test/accuracy", math.nan),
                "train_accuracy": run.metrics.get("train/accuracy", math.nan),
                "steps": run.record.get("steps"),
                "wall_time_s": run.record.get("wall_time_s"),
                "train_loss": scalar_curve(run.path, "train/loss").tolist(),
            }
        )
    order = ["logistic regression", "MLP relu", "MLP sigmoid", "MLP tanh"]
    models = [m for m in order if any(r["model"] == m for r in rows)]
    models += sorted({r["model"] for r in rows} - set(models))
    cfg = runs[0].cfg
    sizes = {r["steps"] for r in rows}
    n_seeds = len({r["seed"] for r in rows})
    lines = [
        f"Test accuracy (%) on {round(cfg.dataset.test_fraction * cfg.dataset.n_samples)} test "
        f"signals, Adam lr {cfg.optimizer.lr:g}, batch {cfg.trainer.batch_size}, "
        f"{', '.join(str(s) for s in sorted(sizes))} steps; mean ± std over {n_seeds} seeds "
        "(each seed generates its own data set: the paper's is one draw).",
        "",
        "| model | ffn: test accuracy | ffn: train accuracy | paper: test accuracy | runs |",
        "|---|---:|---:|---:|---:|",
    ]
    texts = {}
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        test = [r["test_accuracy"] for r in mine]
        texts[m] = mean_std(test, "{:.1f}", 100)
        lines.append(
            f"| {m} | {mean_std(test, '{:.1f}', 100)} | "
            f"{mean_std([r['train_accuracy'] for r in mine], '{:.1f}', 100)} | "
            f"{PAPER.get(m, '—')} | {len(mine)} |"
        )
    lines += ["", f"The sweep: {len(runs)} runs in {sweep_minutes(sweep):.1f} min of wall time."]
    block = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(rows, models, out / "training_curves.png")
    line = (
        f"MNIST-1D test accuracy, ffn (mean ± std over {n_seeds} seeds) against the paper: "
        + ", ".join(f"{m} {texts[m]}%" for m in models)
        + "; paper: logistic regression 32%, MLP 68% (notebooks 65%)."
    )
    write_results(out, NAME, block, line)
    analysis = {"rows": rows, "line": line}
    (sweep / "analysis.json").write_text(json.dumps(analysis, indent=1, allow_nan=True))
    print(block + "\n\n" + line)
    return analysis


def plot_curves(rows, models, path):
    """Training loss per epoch, mean over seeds (band: min to max)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in models:
        curves = [r["train_loss"] for r in rows if r["model"] == m and r["train_loss"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        values = np.array([c[:n] for c in curves])
        x = np.arange(1, n + 1)
        ax.plot(x, values.mean(0), label=m)
        ax.fill_between(x, values.min(0), values.max(0), alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("epoch (40 steps of 100 signals)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main(argv=None) -> None:
    command_line(analyze, __doc__, HERE, argv)


if __name__ == "__main__":
    main()
