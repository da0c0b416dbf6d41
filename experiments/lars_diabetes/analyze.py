"""The lasso path of Efron et al. (2004) on diabetes: the order the variables enter.

    python experiments/lars_diabetes/analyze.py [SWEEP_DIR] [--out DIR]

Reads every run of `python run.py -m experiment=lars_diabetes` (default: the latest), each a
linear model trained by proximal gradient descent at one lam on the paper's 442 patients, and
puts the paper's published values beside ffn's: the order in which the ten variables enter the
lasso path (Figure 1), the one variable that leaves and comes back (the lasso's two extra steps,
Section 3.1), and the end of the path, t = sum_j |beta_j| of the OLS fit, in the paper's units
(x columns centred with unit L2 norm, y as measured). Checks each run against scikit-learn's
exact lasso path on the same standardised data (alpha = lam / 2, tol=1e-12). Writes the table
into DIR/README.md, the figure into DIR (default: this folder), the study's line into
experiments/README.md when DIR is this folder, and every number into the sweep's analysis.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.linear_model import lasso_path

from ffn.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import SweepJob, command_line, load_runs, save_figure, sweep_minutes, write_results

HERE = Path(__file__).resolve().parent
NAME = HERE.name
VARIABLES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]  # j = 1..10

# The published values (Efron, Hastie, Johnstone & Tibshirani 2004, Annals of Statistics 32(2),
# 407-499): Figure 1's lasso path, variables numbered j = 1..10 as above.
PAPER = {
    "entry_order": [3, 9, 4, 7, 2, 10, 5, 8, 6, 1],  # Figure 1 (and LARS's, Figure 3)
    "events": [3, 9, 4, 7, 2, 10, 5, 8, 6, 1, -7, 7],  # 12 lasso steps: 7 leaves, then returns
    "t_ols": 3460.00,  # the path's end: sum |beta_j| of the full least-squares fit
}


def final_coefficients(run: SweepJob) -> np.ndarray:
    """The linear model's weights at the end of the run (standardised units).  -> (10,)."""
    state = torch.load(run.path / "checkpoints" / "last.pt", weights_only=True)["model"]
    return state["layers.0.weight"].double().numpy().ravel()


def path_events(lams: np.ndarray, active: list[set[int]]) -> list[list[int]]:
    """What changed between consecutive lams (largest first): +j entered, -j left; a group of
    several means the grid did not separate them."""
    events, before = [], set()
    for now in active:
        group = [j for j in sorted(now - before)] + [-j for j in sorted(before - now)]
        if group:
            events.append(group)
        before = now
    return events


def analyze(sweep: Path, out: Path) -> dict:
    runs = [r for r in load_runs(sweep) if r.status == "completed"]
    runs.sort(key=lambda r: -r.cfg.penalty.lam)
    lams = np.array([r.cfg.penalty.lam for r in runs])
    w = np.stack([final_coefficients(r) for r in runs])  # (n_lams, 10)
    # sklearn's exact path on the very data the runs trained on (x, y standardised, centred)
    data = load_dataset(runs[0].cfg.dataset, seed=runs[0].cfg.trainer.seed, dtype=torch.float64)
    x, y = data.x_train.numpy(), data.y_train.numpy().ravel()
    n = len(x)
    positive = lams > 0
    exact = np.zeros_like(w)
    alphas, coefs, _ = lasso_path(x, y, alphas=lams[positive] / 2, tol=1e-12, max_iter=10**6)
    for i, lam in zip(np.flatnonzero(positive), lams[positive], strict=True):
        exact[i] = coefs[:, np.argmin(np.abs(alphas - lam / 2))]
    if not positive.all():  # lam = 0: least squares
        exact[~positive] = np.linalg.lstsq(x, y, rcond=None)[0]
    max_diff = float(np.abs(w - exact).max())
    # The paper's units: x_paper = x / sqrt(n) (unit-norm columns), y in its own units
    beta = w * float(data.y_std.numpy()[0]) * np.sqrt(n)
    active = [set((np.flatnonzero(row) + 1).tolist()) for row in w]
    events = path_events(lams, active)
    flat = [j for group in events for j in group]
    entries = [j for j in flat if j > 0]
    entry_order = list(dict.fromkeys(entries))  # first entries, in order
    ties = [g for g in events if len(g) > 1]
    t_ols = float(np.abs(beta[~positive]).sum()) if not positive.all() else None
    result = {
        "lams": lams.tolist(),
        "active": [sorted(a) for a in active],
        "events": events,
        "entry_order": entry_order,
        "unresolved": ties,
        "max_abs_diff_vs_exact": max_diff,
        "zeros_match_exact": bool(((w == 0) == (np.abs(exact) < 1e-12)).all()),
        "t_ols": t_ols,
        "paper": PAPER,
    }
    table = results_table(result)
    out.mkdir(parents=True, exist_ok=True)
    plot_path(beta, lams, out / "lasso_path.png")
    block = table + (
        f"\n\nEach run against scikit-learn's exact lasso path on the same data: largest "
        f"|difference| {max_diff:.1e} (standardised units); exact zeros "
        f"{'the same' if result['zeros_match_exact'] else 'NOT the same'}. The sweep: "
        f"{len(runs)} runs in {sweep_minutes(sweep):.1f} min of wall time."
    )
    same = entry_order == PAPER["entry_order"][: len(entry_order)] and not ties
    line = (
        f"On the paper's diabetes data, ffn's lasso path (proximal gradient descent, "
        f"{len(runs)} lams) has the variables enter in the order {', '.join(map(str, entry_order))}"
        f" ({'as' if same else 'NOT as'} Efron et al. 2004's Figure 1"
        + (f"; {len(ties)} grid steps unresolved" if ties else "")
        + ")"
        + (f", and ends at t = {t_ols:.2f} (paper: 3460.00)" if t_ols is not None else "")
        + "."
    )
    write_results(out, NAME, block, line)
    (sweep / "analysis.json").write_text(json.dumps({**result, "line": line}, indent=1))
    print(block + "\n\n" + line)
    return result


def results_table(result: dict) -> str:
    """The paper's values beside ffn's."""

    def named(js):
        return ", ".join(f"{'-' if j < 0 else ''}{abs(j)} {VARIABLES[abs(j) - 1]}" for j in js)

    ffn_events = "; ".join(
        ("(" + named(g) + ")") if len(g) > 1 else named(g) for g in result["events"]
    )
    t_ols = result["t_ols"]
    rows = [
        "| | Efron et al. (2004) | ffn |",
        "|---|---|---|",
        f"| order of entry | {named(PAPER['entry_order'])} | {named(result['entry_order'])} |",
        f"| steps of the lasso path (+ enters, - leaves) | {named(PAPER['events'])} "
        f"| {ffn_events} |",
        f"| t = sum abs(beta_j) at the OLS end | {PAPER['t_ols']:.2f} "
        f"| {'—' if t_ols is None else f'{t_ols:.2f}'} |",
    ]
    note = (
        "\n\nffn's steps are read off the lam grid: a group in parentheses changed between "
        "two neighbouring lams, so the grid does not tell their order."
        if result["unresolved"]
        else ""
    )
    return "\n".join(rows) + note


def plot_path(beta: np.ndarray, lams: np.ndarray, path: Path) -> None:
    """beta_j against t = sum |beta_j|, as the paper's Figure 1 (left) draws it."""
    t = np.abs(beta).sum(1)
    order = np.argsort(t)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for j in range(beta.shape[1]):
        ax.plot(t[order], beta[order, j], ".-", ms=3, lw=1)
        ax.annotate(str(j + 1), (t[order][-1], beta[order, j][-1]), fontsize=8)
    ax.set_xlabel("t = sum |beta_j|")
    ax.set_ylabel("beta_j (the paper's units)")
    ax.set_title(f"ffn's lasso path on diabetes ({len(lams)} lams)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


if __name__ == "__main__":
    command_line(analyze, __doc__, HERE)
