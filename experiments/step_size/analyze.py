"""Study 3, step size: the largest stable eta against 2/L, and the edge of stability.

    python experiments/step_size/analyze.py [SWEEP_DIR ...] [--out DIR]

Each SWEEP_DIR is a folder of `python run.py -m experiment=step_size` (linear models) or of
`experiment=step_size_eos` (a network); default: the latest of each under outputs/experiments/.

Part 1 (linear models): L is the top eigenvalue of the training loss's Hessian at the start,
computed here from each run's seed (the model rebuilt as the runner built it, the Hessian by
torch.autograd.functional.hessian on its autograd twin). A run is stable when its training loss
never rises from one step to the next (the descent that eta < 2/L guarantees); the curves are
train/loss from the event files, with the loss at the start computed here.

Part 2 (a network, `edge_of_stability.py`): each run replayed, lambda_max followed along it by
power iteration on Hessian-vector products through ffn's own second derivatives.

Writes each part's table into DIR/README.md between its results markers, the figures into DIR
(default: this folder), the study's lines into experiments/README.md when DIR is this folder,
and every number into SWEEP_DIR/analysis.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig

from ffn.data import load_dataset
from ffn.losses import loss_function
from ffn.train import DTYPES, build_model

# common.py is one folder up: `python experiments/<study>/analyze.py` puts only <study>/ on path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (
    ROOT,
    latest_sweep,
    load_runs,
    mean_std,
    save_figure,
    scalar_curve,
    sweep_minutes,
    write_results,
)
from common import (
    _between as between,
)
from edge_of_stability import EDGE, plot, replay, summarise

HERE = Path(__file__).resolve().parent
NAME = HERE.name
DATASETS = ("breast_cancer", "digits", "diabetes")


# --------------------------------------------------------------------------- the study


def hessian_at_start(cfg: DictConfig) -> dict[str, float]:
    """L (top Hessian eigenvalue of the training loss at initialisation), the loss there, and
    the global bound on L for a linear model (softmax: lambda_max(X~'X~/n)/2; MSE: 2 lambda_max).
    """
    dtype = DTYPES[cfg.trainer.dtype]
    data = load_dataset(cfg.dataset, seed=cfg.trainer.seed, dtype=dtype)
    twin = build_model(cfg, data, torch.device("cpu"), dtype).with_backend("autograd")
    names = [name for name, _ in twin.named_parameters()]
    params = tuple(p.detach() for _, p in twin.named_parameters())
    loss_fn = loss_function(data.task, "autograd")
    x, y = data.x_train, data.y_train

    def loss(*values: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(twin, dict(zip(names, values, strict=True)), (x,))
        return loss_fn(out, y)

    blocks = torch.autograd.functional.hessian(loss, params, vectorize=True)
    sizes = [p.numel() for p in params]
    matrix = torch.cat(
        [
            torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(params))], 1)
            for i in range(len(params))
        ],
        0,
    )
    top = float(torch.linalg.eigvalsh(matrix)[-1])
    ones = torch.ones(len(x), 1, dtype=x.dtype)
    gram = float(torch.linalg.eigvalsh(torch.cat([x, ones], 1).T @ torch.cat([x, ones], 1))[-1])
    scale = 0.5 if data.task == "classification" else 2.0
    return {"L": top, "loss0": float(loss(*params)), "L_global": scale * gram / len(x)}


def is_monotone(curve: np.ndarray) -> bool:
    """Finite, and never rising by more than rounding from one step to the next."""
    if curve.size < 2 or not np.all(np.isfinite(curve)):
        return False
    return bool(np.all(np.diff(curve) <= 1e-12 * np.abs(curve[:-1])))


def analyze_grid(sweep: Path, out: Path) -> tuple[str, str]:
    """The eta grid on linear models against 2/L at the start: (table, index line)."""
    runs = load_runs(sweep)
    starts: dict[tuple[str, int], dict[str, float]] = {}
    rows = []
    for run in runs:
        key = (run.cfg.dataset.name, run.cfg.trainer.seed)
        if key not in starts:
            starts[key] = hessian_at_start(run.cfg)
        start = starts[key]
        curve = np.array([start["loss0"], *scalar_curve(run.path, "train/loss")])
        complete = run.status == "completed" and curve.size == run.cfg.trainer.max_epochs + 1
        rows.append(
            {
                "dataset": key[0],
                "seed": key[1],
                "lr": float(run.cfg.optimizer.lr),
                "ratio": float(run.cfg.optimizer.lr) * start["L"] / 2,  # eta / (2/L)
                "status": run.status,
                "monotone": complete and is_monotone(curve),
                "final_over_start": float(curve[-1] / curve[0]) if complete else math.inf,
                "curve": [float(v) for v in curve],
            }
        )
    datasets = [d for d in DATASETS if d in {k[0] for k in starts}]
    steps = max(len(r["curve"]) for r in rows) - 1
    per_seed = {}
    for (dataset, seed), start in starts.items():
        mine = sorted(
            (r for r in rows if (r["dataset"], r["seed"]) == (dataset, seed)), key=lambda r: r["lr"]
        )
        # The largest eta of the grid below which every eta descended monotonically.
        stable = None
        for r in mine:
            if not r["monotone"]:
                break
            stable = r["lr"]
        first_rise = next((r["lr"] for r in mine if not r["monotone"]), math.nan)
        below_start = [r["lr"] for r in mine if r["final_over_start"] < 1]
        per_seed[f"{dataset}/{seed}"] = {
            **start,
            "two_over_L": 2 / start["L"],
            "largest_monotone_lr": math.nan if stable is None else stable,
            "first_rising_lr": first_rise,
            "largest_lr_ending_below_start": max(below_start) if below_start else math.nan,
        }

    def column(dataset: str, key: str, over_two_over_l: bool = False) -> list[float]:
        values = []
        for name, s in per_seed.items():
            if name.split("/")[0] == dataset:
                values.append(s[key] / s["two_over_L"] if over_two_over_l else s[key])
        return values

    n_seeds = len({k[1] for k in starts})
    lrs = sorted({r["lr"] for r in rows})
    lines = [
        f"Full-batch gradient descent, {steps} steps, eta on a grid of {len(lrs)} values from "
        f"{lrs[0]:g} to {lrs[-1]:g} (factors of about {lrs[1] / lrs[0]:.3g}); mean ± std over "
        f"{n_seeds} seeds (each its own split and initialisation). Stable: the training loss "
        "never rose from one step to the next.",
        "",
        "| dataset (model) | 2/L at the start | 2/L_global | largest stable eta | "
        "largest stable eta / (2/L) | first unstable eta / (2/L) | "
        "largest eta ending below the start |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    models = {
        "breast_cancer": "softmax regression",
        "digits": "softmax regression",
        "diabetes": "least squares",
    }
    for d in datasets:
        cells = [
            mean_std(column(d, "two_over_L"), "{:.3g}"),
            mean_std([2 / v for v in column(d, "L_global")], "{:.3g}"),
            mean_std(column(d, "largest_monotone_lr"), "{:.3g}"),
            mean_std(column(d, "largest_monotone_lr", True), "{:.3g}"),
            mean_std(column(d, "first_rising_lr", True), "{:.3g}"),
            mean_std(column(d, "largest_lr_ending_below_start"), "{:.3g}"),
        ]
        lines.append(f"| {d} ({models.get(d, '')}) | " + " | ".join(cells) + " |")
    lines += ["", f"The sweep: {len(runs)} runs in {sweep_minutes(sweep):.1f} min of wall time."]
    block = "\n".join(lines)

    plot_curves(rows, datasets, out / "convergence_curves.png")
    plot_edge(rows, datasets, out / "stability_edge.png")

    parts = []
    for d in datasets:
        stable = mean_std(column(d, "largest_monotone_lr", True), "{:.2g}")
        rising = mean_std(column(d, "first_rising_lr", True), "{:.2g}")
        parts.append(f"{d} ({models.get(d, '')}) {stable}, first rise at {rising}")
    line = (
        "Largest eta of the grid whose training loss never rose, in units of 2/L (L from "
        f"the Hessian at the start; mean ± std over {n_seeds} seeds): " + "; ".join(parts) + "."
    )
    analysis = {"per_seed": per_seed, "rows": rows, "line": line}
    (sweep / "analysis.json").write_text(json.dumps(analysis, indent=1, allow_nan=True))
    return block, line


def analyze_edge(sweep: Path, out: Path) -> tuple[str, str]:
    """lambda_max along gradient descent on a network against 2/eta: (table, index line)."""
    runs = load_runs(sweep)
    rows, series = [], {}
    for run in runs:
        result = replay(run.cfg)
        logged = scalar_curve(run.path, "train/loss")
        row = {"seed": int(run.cfg.trainer.seed), "status": run.status}
        row.update(summarise(float(run.cfg.optimizer.lr), result, logged))
        rows.append({**row, "series": result})
        if row["seed"] == min(int(r.cfg.trainer.seed) for r in runs):
            series[row["lr"]] = result
    lrs = sorted({r["lr"] for r in rows})
    n_seeds = len({r["seed"] for r in rows})
    steps = max(len(r["series"]["loss"]) for r in rows)
    lines = [
        f"Full-batch gradient descent on a tanh network (hidden {list(runs[0].cfg.model.hidden)}), "
        "least squares "
        f"on {runs[0].cfg.dataset.name}, {steps} steps; lambda_max every "
        f"{rows[0]['series']['steps'][1]} steps by power iteration on ffn's Hessian-vector "
        f"products; mean ± std over {n_seeds} seeds. *Reached*: the first step where lambda_max "
        f">= {EDGE:g} x 2/eta.",
        "",
        "| eta | 2/eta | lambda_max at the start | reached 2/eta at step | "
        "lambda_max / (2/eta) after (median) | max lambda_max / (2/eta) | "
        "steps the loss rose, before / after | final training loss |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lr in lrs:
        mine = [r for r in rows if r["lr"] == lr]
        reached = [r["first_edge_step"] for r in mine if r["first_edge_step"] is not None]
        never = len(mine) - len(reached)
        cells = [
            f"{lr:g}",
            f"{2 / lr:g}",
            mean_std([r["lambda_start"] for r in mine], "{:.3g}"),
            (mean_std(reached, "{:.0f}") if reached else "—")
            + (f" (never in {never})" if never else ""),
            mean_std([r["median_ratio_after"] for r in mine], "{:.3g}"),
            mean_std([r["max_ratio"] for r in mine], "{:.3g}"),
            mean_std([r["rises_before"] for r in mine], "{:.0f}")
            + " / "
            + mean_std([r["rises_after"] for r in mine], "{:.0f}"),
            mean_std([r["final_loss"] for r in mine], "{:.3g}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    gap = max(r["replay_max_rel_gap"] for r in rows)
    twin = max(abs(r["lambda_start"] / r["lambda_start_twin"] - 1) for r in rows)
    lines += [
        "",
        f"The replays matched the runs' logged training loss to a relative {gap:.1e} (the event "
        f"files store float32); lambda_max "
        f"at the start through ffn's second derivatives matched the autograd twin's to {twin:.1e}. "
        f"The sweep: {len(runs)} runs in {sweep_minutes(sweep):.1f} min of wall time.",
    ]
    plot(series, out / "edge_of_stability.png")
    hover = [r["median_ratio_after"] for r in rows if r["first_edge_step"] is not None]
    line = (
        "Edge of stability: on a tanh network, once lambda_max reached 2/eta it stayed at "
        f"{mean_std(hover, '{:.2f}')} x 2/eta (median after reaching it, "
        f"{len(hover)} of {len(rows)} runs reached it)."
    )
    analysis = {"rows": rows, "line": line}
    (sweep / "analysis.json").write_text(json.dumps(analysis, indent=1, allow_nan=True))
    return "\n".join(lines), line


# The edge-of-stability table and index line have markers of their own, so that either sweep
# can be analysed alone without erasing the other's results.
EDGE_BEGIN = "<!-- results: begin (edge of stability, written by analyze.py) -->"
EDGE_END = "<!-- results: end (edge of stability) -->"
EDGE_INDEX = ("<!-- step_size_eos: begin -->", "<!-- step_size_eos: end -->")


def write_edge_results(out: Path, block: str, line: str) -> None:
    """The block between the edge markers of out/README.md; the line into the study index."""
    readme = out / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if EDGE_BEGIN not in text:
        text += f"\n{EDGE_BEGIN}\n{EDGE_END}\n"
    readme.write_text(between(text, EDGE_BEGIN, EDGE_END, block))
    index = out.parent / "README.md"
    if index.exists() and EDGE_INDEX[0] in index.read_text():
        index.write_text(between(index.read_text(), *EDGE_INDEX, line))


def analyze(sweeps: list[Path], out: Path) -> None:
    """The grid study on a linear-model sweep, the edge of stability on a network sweep."""
    out.mkdir(parents=True, exist_ok=True)
    for sweep in sweeps:
        if list(load_runs(sweep)[0].cfg.model.hidden):
            block, line = analyze_edge(sweep, out)
            write_edge_results(out, block, line)
        else:
            block, line = analyze_grid(sweep, out)
            write_results(out, NAME, block, line)
        print(block + "\n\n" + line + "\n")


# --------------------------------------------------------------------------- figures


def plot_curves(rows, datasets, path):
    """Seed 0's training loss for every eta, coloured by log2(eta / (2/L))."""
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    cmap = plt.get_cmap("coolwarm")
    norm = matplotlib.colors.Normalize(-7, 7)
    for ax, d in zip(axes[0], datasets, strict=True):
        seed = min(r["seed"] for r in rows if r["dataset"] == d)
        mine = sorted(
            (r for r in rows if r["dataset"] == d and r["seed"] == seed), key=lambda r: r["lr"]
        )
        start = mine[0]["curve"][0]
        for r in mine:
            curve = np.array(r["curve"])
            style = "-" if r["monotone"] else "--"
            ax.plot(
                np.arange(curve.size), curve, style, color=cmap(norm(np.log2(r["ratio"]))), lw=1
            )
        finite = [v for r in mine for v in r["curve"] if np.isfinite(v) and v > 0]
        ax.set_yscale("log")
        ax.set_ylim(min(finite) * 0.5, start * 30)
        ax.set_title(f"{d}, seed {seed}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    fig.suptitle("solid: the loss never rose; dashed: it rose at some step", y=1.0)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist())
    bar.set_label("log2(eta / (2/L))")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_edge(rows, datasets, path):
    """Loss after the last step over the loss at the start, against eta / (2/L), every seed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = dict(zip(DATASETS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for d in datasets:
        mine = [r for r in rows if r["dataset"] == d]
        for monotone, marker in ((True, "o"), (False, "x")):
            pts = [r for r in mine if r["monotone"] == monotone]
            y = [min(r["final_over_start"], 1e3) for r in pts]
            label = f"{d}, {'stable' if monotone else 'loss rose'}"
            ax.scatter(
                [r["ratio"] for r in pts], y, marker=marker, color=colors.get(d), label=label, s=18
            )
    ax.axvline(1.0, color="k", lw=0.8, ls=":")
    ax.text(1.05, 2e-4, "eta = 2/L", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eta / (2/L), L at the start")
    ax.set_ylabel("loss after the last step / loss at the start (capped at 1e3)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="*", type=Path, help="sweep folders (default: latest)")
    parser.add_argument("--out", type=Path, default=HERE, help="README.md and figures")
    args = parser.parse_args(argv)
    base = ROOT / "outputs" / "experiments"
    names = [name for name in (NAME, f"{NAME}_eos") if (base / name).is_dir()]
    analyze(args.sweeps or [latest_sweep(name) for name in names], args.out)


if __name__ == "__main__":
    main()
