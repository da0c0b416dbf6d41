"""Study 2, lasso versus ridge: coefficient paths on diabetes, then sparsity on a digits network.

    python experiments/lasso_ridge/analyze.py [LINEAR_SWEEP NET_SWEEP] [--out DIR]

The sweeps are folders of `python run.py -m experiment=lasso_ridge` (linear model, diabetes) and
`... experiment=lasso_ridge_net` (digits network), told apart by their model; by default the
latest of each under outputs/experiments/. The weights come from each run's checkpoints/last.pt;
the references are sklearn's lasso_path at alpha = lam / 2 (tol=1e-12) and ridge's closed form
W = (X'X/n + lam I)^-1 X'y/n, on the run's own standardised train split. Writes the tables into
DIR/README.md between the results markers, the figures into DIR (default: this folder), the
study's line into experiments/README.md when DIR is this folder, and every number into each
sweep's analysis.json.
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
from sklearn.datasets import load_diabetes
from sklearn.linear_model import lasso_path

from ffn.data import load_dataset

# common.py is one folder up: `python experiments/<study>/analyze.py` puts only <study>/ on path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (
    SweepJob,
    latest_sweep,
    load_runs,
    mean_std,
    save_figure,
    sweep_minutes,
    write_results,
)

HERE = Path(__file__).resolve().parent
NAME = HERE.name
PENALTIES = {"l1": "lasso", "l2": "ridge"}


# --------------------------------------------------------------------------- part 1: paths


def final_weights(run: SweepJob) -> list[np.ndarray]:
    """The weight matrices at the end of the run, from its checkpoint.  [(d_l, H_l)]."""
    state = torch.load(run.path / "checkpoints" / "last.pt", weights_only=True)["model"]
    keys = sorted((k for k in state if k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    return [state[k].double().numpy() for k in keys]


def train_split(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    """The run's standardised train part.  x: (n, d), y: (n,)."""
    data = load_dataset(cfg.dataset, seed=cfg.trainer.seed, dtype=torch.float64)
    return data.x_train.numpy(), data.y_train.numpy().ravel()


def reference(penalty: str, lams: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact minimisers of (1/n)||y - Xw||^2 + lam pen(w), one row per lam.  -> (len(lams), d).

    x and y are centred (standardised on this very part), so the unpenalised bias is 0 and
    sklearn's path without intercept is the same problem.
    """
    n, d = x.shape
    if penalty == "l1":
        # (1/(2n))||y - Xw||^2 + alpha ||w||_1 is half of ours at alpha = lam / 2.
        alphas, coefs, _ = lasso_path(x, y, alphas=lams / 2, tol=1e-12, max_iter=1_000_000)
        # lasso_path returns the alphas sorted, largest first
        return np.stack([coefs[:, np.argmin(np.abs(alphas - lam / 2))] for lam in lams])
    gram, xty = x.T @ x / n, x.T @ y / n
    return np.stack([np.linalg.solve(gram + lam * np.eye(d), xty) for lam in lams])


def analyze_paths(sweep: Path, out: Path) -> tuple[str, str, dict]:
    runs = load_runs(sweep)
    rows = []
    splits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for run in runs:
        seed, penalty, lam = run.cfg.trainer.seed, run.cfg.penalty.name, float(run.cfg.penalty.lam)
        if seed not in splits:
            splits[seed] = train_split(run.cfg)
        w = final_weights(run)[0].ravel()
        ref = reference(penalty, np.array([lam]), *splits[seed])[0]
        rows.append(
            {
                "penalty": penalty,
                "lam": lam,
                "seed": seed,
                "status": run.status,
                "epochs": run.record.get("epochs"),
                "stop_reason": run.record.get("stop_reason"),
                "coef": w.tolist(),
                "reference": ref.tolist(),
                "max_abs_diff": float(np.abs(w - ref).max()),
                "zeros": int((w == 0).sum()),
                "reference_zeros": int((ref == 0).sum()),
                "val_mse": run.metrics.get("val/loss", math.nan),
                "test_mse": run.metrics.get("test/loss", math.nan),
            }
        )
    lams = sorted({r["lam"] for r in rows})
    penalties = [p for p in PENALTIES if any(r["penalty"] == p for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    d = len(rows[0]["coef"])

    def pick(penalty, lam):
        return [r for r in rows if r["penalty"] == penalty and r["lam"] == lam]

    header = "| lam |"
    rule = "|---:|"
    for p in penalties:
        name = PENALTIES[p]
        header += f" {name}: exact zeros (of {d}) | {name}: val MSE | {name}: max abs diff |"
        rule += "---:|---:|---:|"
    lines = [
        f"Linear model on standardised diabetes, mean ± std over {len(seeds)} seeds (each its own "
        "split). Zeros: coefficients exactly 0. MSE in units of the standardised target. Diff: "
        "max |w - w*| over the coefficients and seeds, w* = sklearn's lasso_path (alpha = lam/2, "
        "tol=1e-12) for the lasso, the closed form for ridge.",
        "",
        header,
        rule,
    ]
    for lam in lams:
        cells = []
        for p in penalties:
            mine = pick(p, lam)
            cells += [
                mean_std([r["zeros"] for r in mine], "{:.1f}"),
                mean_std([r["val_mse"] for r in mine], "{:.3f}"),
                f"{max(r['max_abs_diff'] for r in mine):.1e}",
            ]
        lines.append(f"| {lam:g} | " + " | ".join(cells) + " |")
    worst = {p: max(r["max_abs_diff"] for r in rows if r["penalty"] == p) for p in penalties}
    zeros_match = all(r["zeros"] == r["reference_zeros"] for r in rows if r["penalty"] == "l1")
    epochs = [r["epochs"] for r in rows if r["epochs"] is not None]
    reasons = sorted({str(r["stop_reason"]) for r in rows})
    how = "Every run converged (the objective's relative change stayed under trainer.rel_tol)"
    if reasons != ["converged"]:
        how = "The runs stopped on " + ", ".join(f"`{r}`" for r in reasons)
    lines += [
        "",
        f"{how} after {min(epochs)} to {max(epochs)} steps of gradient descent; the lasso's "
        f"exact zeros {'are' if zeros_match else 'are not'} those of sklearn's path in every run.",
    ]
    plot_paths(rows, penalties, seeds[0], splits[seeds[0]], out / "coefficient_paths.png")
    plot_validation(rows, penalties, lams, out / "validation_error.png")
    summary = (
        f"the diabetes paths match sklearn's lasso_path to {worst.get('l1', math.nan):.0e} and "
        f"ridge's closed form to {worst.get('l2', math.nan):.0e}"
    )
    return (
        "\n".join(lines),
        summary,
        {"rows": rows, "max_abs_diff": worst, "zeros_match": zeros_match},
    )


# --------------------------------------------------------------------------- part 2: network


def analyze_network(sweep: Path, out: Path) -> tuple[str, str, dict]:
    runs = load_runs(sweep)
    rows = []
    for run in runs:
        weights = final_weights(run) if run.status == "completed" else []
        rows.append(
            {
                "penalty": run.cfg.penalty.name,
                "lam": float(run.cfg.penalty.lam),
                "seed": run.cfg.trainer.seed,
                "status": run.status,
                "sparsity": [float((w == 0).mean()) for w in weights],
                "shapes": [list(w.shape) for w in weights],
                "test_accuracy": run.metrics.get("test/accuracy", math.nan),
            }
        )
    n_layers = max(len(r["sparsity"]) for r in rows)
    for r in rows:
        r["sparsity"] += [math.nan] * (n_layers - len(r["sparsity"]))
    penalties = [p for p in PENALTIES if any(r["penalty"] == p for r in rows)]
    lams = sorted({r["lam"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    hidden = list(runs[0].cfg.model.hidden)
    shapes = next(r["shapes"] for r in rows if len(r["shapes"]) == n_layers)
    lines = [
        f"{'-'.join(['64', *map(str, hidden), '10'])} {runs[0].cfg.model.activation} network on "
        f"digits, plain SGD, {runs[0].cfg.trainer.max_epochs} epochs; mean ± std over "
        f"{len(seeds)} seeds. Sparsity: % of the layer's weights exactly 0.",
        "",
        "| penalty | lam | "
        + " | ".join(f"sparsity W{i + 1}, {d}x{h} (%)" for i, (d, h) in enumerate(shapes))
        + " | test accuracy (%) |",
        "|---|---:|" + "---:|" * (n_layers + 1),
    ]
    for p in penalties:
        for lam in lams:
            mine = [r for r in rows if r["penalty"] == p and r["lam"] == lam]
            if not mine:
                continue
            cells = [
                mean_std([r["sparsity"][i] for r in mine], "{:.1f}", scale=100)
                for i in range(n_layers)
            ]
            cells.append(mean_std([r["test_accuracy"] for r in mine], "{:.1f}", scale=100))
            lines.append(f"| {PENALTIES[p]} | {lam:g} | " + " | ".join(cells) + " |")
    plot_sparsity(rows, lams, n_layers, out / "network_sparsity.png")
    # The summary: the largest lasso lam that costs at most one point of test accuracy.
    base = np.nanmean([r["test_accuracy"] for r in rows if r["lam"] == 0.0])
    summary = "; on digits no lasso lam of the grid kept test accuracy within 1 point"
    for lam in lams[1:]:
        mine = [r for r in rows if r["penalty"] == "l1" and r["lam"] == lam]
        drop = base - np.nanmean([r["test_accuracy"] for r in mine]) if mine else math.inf
        if drop <= 0.01:
            zeros = np.nanmean([np.mean(r["sparsity"]) for r in mine])
            summary = (
                f"; on the digits network the lasso at lam {lam:g} zeroes {100 * zeros:.0f}% of "
                f"the weights (mean of the layers' sparsities) for {100 * drop:.1f} points of "
                "test accuracy"
            )
    return "\n".join(lines), summary, {"rows": rows}


# --------------------------------------------------------------------------- figures


def plot_paths(rows, penalties, seed, split, path):
    """Seed 0's coefficients against lam: ffn's runs (dots) on the reference paths (lines)."""
    names = load_diabetes().feature_names
    fig, axes = plt.subplots(1, len(penalties), figsize=(6 * len(penalties), 4.5), squeeze=False)
    lams = np.array(sorted({r["lam"] for r in rows}))
    fine = np.geomspace(lams.min() / 2, lams.max() * 2, 200)
    colors = plt.get_cmap("tab10")
    for ax, p in zip(axes[0], penalties, strict=True):
        ref = reference(p, fine, *split)
        mine = sorted(
            (r for r in rows if r["penalty"] == p and r["seed"] == seed), key=lambda r: r["lam"]
        )
        coefs = np.array([r["coef"] for r in mine])
        for j in range(ref.shape[1]):
            ax.plot(fine, ref[:, j], "-", color=colors(j), lw=1, label=names[j])
            ax.plot([r["lam"] for r in mine], coefs[:, j], "o", color=colors(j), ms=4)
        ax.set_xscale("log")
        ax.set_xlabel("lam")
        ax.set_title(
            f"{PENALTIES[p]}: ffn (dots) on "
            + ("sklearn's lasso_path" if p == "l1" else "the closed form")
            + f" (lines), seed {seed}"
        )
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("coefficient (standardised units)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def plot_validation(rows, penalties, lams, path):
    fig, (ax, az) = plt.subplots(1, 2, figsize=(10, 4))
    for p, color in zip(penalties, ("tab:blue", "tab:orange"), strict=False):
        mse = [
            [r["val_mse"] for r in rows if r["penalty"] == p and r["lam"] == lam] for lam in lams
        ]
        zeros = [
            [r["zeros"] for r in rows if r["penalty"] == p and r["lam"] == lam] for lam in lams
        ]
        for axis, values in ((ax, mse), (az, zeros)):
            mean = [np.nanmean(v) for v in values]
            std = [np.nanstd(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
            axis.errorbar(
                lams, mean, yerr=std, fmt="-o", ms=3, capsize=2, color=color, label=PENALTIES[p]
            )
    ax.set_ylabel("validation MSE (standardised target)")
    az.set_ylabel("coefficients exactly 0")
    for axis in (ax, az):
        axis.set_xscale("log")
        axis.set_xlabel("lam")
        axis.grid(alpha=0.3)
        axis.legend()
    save_figure(fig, path)


def plot_sparsity(rows, lams, n_layers, path):
    """Each layer's sparsity against test accuracy, one line per layer, lasso and ridge."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab10")

    def series(penalty, sparsity):
        xs, ys = [], []
        for lam in lams:
            mine = [r for r in rows if r["penalty"] == penalty and r["lam"] == lam]
            if mine:
                xs.append(100 * np.nanmean([sparsity(r) for r in mine]))
                ys.append(100 * np.nanmean([r["test_accuracy"] for r in mine]))
        return xs, ys

    for i in range(n_layers):
        xs, ys = series("l1", lambda r, i=i: r["sparsity"][i])
        ax.plot(xs, ys, "o-", color=colors(i), ms=4, label=f"lasso, W{i + 1}")
    xs, ys = series("l2", lambda r: np.nanmax(r["sparsity"]))
    ax.plot(xs, ys, "s", color="k", ms=4, label="ridge, every layer (no exact zeros)")
    ax.set_xlabel("sparsity of the layer (% of weights exactly 0)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("digits network, one point per lam (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def analyze(sweeps: list[Path], out: Path) -> dict:
    linear = [s for s in sweeps if not list(load_runs(s)[0].cfg.model.hidden)]
    network = [s for s in sweeps if list(load_runs(s)[0].cfg.model.hidden)]
    if len(linear) != 1 or len(network) != 1:
        raise SystemExit("give one lasso_ridge sweep (hidden=[]) and one lasso_ridge_net sweep")
    out.mkdir(parents=True, exist_ok=True)
    table1, line1, part1 = analyze_paths(linear[0], out)
    table2, line2, part2 = analyze_network(network[0], out)
    block = "### Part 1: paths of a linear model\n\n" + table1
    block += "\n\n### Part 2: a hidden-layer network\n\n" + table2
    runs = [len(load_runs(s)) for s in (linear[0], network[0])]
    block += (
        f"\n\nThe sweeps: {runs[0]} runs in {sweep_minutes(linear[0]):.1f} min and {runs[1]} runs"
        f" in {sweep_minutes(network[0]):.1f} min of wall time."
    )
    line = line1[0].upper() + line1[1:] + line2 + "."
    write_results(out, NAME, block, line)
    (linear[0] / "analysis.json").write_text(json.dumps({**part1, "line": line}, indent=1))
    (network[0] / "analysis.json").write_text(json.dumps({**part2, "line": line}, indent=1))
    print(block + "\n\n" + line)
    return {"paths": part1, "network": part2, "line": line}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="*", type=Path, help="the two sweep folders")
    parser.add_argument(
        "--out", type=Path, default=HERE, help="README.md and figures (default: here)"
    )
    args = parser.parse_args(argv)
    sweeps = args.sweeps or [latest_sweep(NAME), latest_sweep(f"{NAME}_net")]
    analyze(sweeps, args.out)


if __name__ == "__main__":
    main()
