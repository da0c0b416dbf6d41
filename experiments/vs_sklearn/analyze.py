"""Study 5, against scikit-learn: ffn and MLPClassifier(hidden_layer_sizes=(64,)) side by side.

    python experiments/vs_sklearn/analyze.py [SWEEP_DIR] [--out DIR]

SWEEP_DIR is a folder of `python run.py -m experiment=vs_sklearn` (default: the latest under
outputs/experiments/vs_sklearn/). The runs split as sklearn does (dataset.split_seed=0,
stratify=false, test_fraction=0.25, val_fraction=0); this script checks that each run's train and
test rows are those of train_test_split(test_size=0.25, random_state=0), then fits sklearn's
MLPClassifier with its defaults (hidden_layer_sizes=(64,), the same activation, random_state = the
run's seed, max_iter = the run's epochs) on that split, StandardScaler fitted on its train part,
on one thread as ffn. Wall times: ffn's training loop from metrics.json, sklearn's fit. Writes
the table into DIR/README.md between the results markers, the figure into DIR (default: this
folder), the study's line into experiments/README.md when DIR is this folder,
and every number into SWEEP_DIR/analysis.json.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn import datasets
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ffn.data import load_dataset

# common.py is one folder up: `python experiments/<study>/analyze.py` puts only <study>/ on path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import command_line, load_runs, mean_std, save_figure, sweep_minutes, write_results

HERE = Path(__file__).resolve().parent
NAME = HERE.name
SKLEARN_ACTIVATION = {"relu": "relu", "tanh": "tanh", "sigmoid": "logistic"}
LOADERS = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer}


# --------------------------------------------------------------------------- the study


def fit_sklearn(x_train, y_train, x_test, y_test, activation: str, seed: int, epochs: int):
    """MLPClassifier's defaults but the width, activation, seed and epochs.  -> dict."""
    clf = MLPClassifier(
        hidden_layer_sizes=(64,),
        activation=SKLEARN_ACTIVATION[activation],
        random_state=seed,
        max_iter=epochs,
    )
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached: ffn stops there too
        start = time.perf_counter()
        clf.fit(x_train, y_train)
        wall = time.perf_counter() - start
    return {
        "accuracy": float(clf.score(x_test, y_test)),
        "wall_time_s": wall,
        "epochs": clf.n_iter_,
    }


def sklearn_split(name: str) -> tuple[np.ndarray, ...]:
    """The issue's protocol: test_size 0.25, random_state 0, standardised on the train part."""
    bunch = LOADERS[name]()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data, bunch.target, test_size=0.25, random_state=0
    )
    scale = StandardScaler().fit(x_train)
    return scale.transform(x_train), y_train, scale.transform(x_test), y_test


def same_rows(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a and b, both (n, d), hold the same rows in any order."""
    if a.shape != b.shape:
        return False
    return np.allclose(a[np.lexsort(a.T)], b[np.lexsort(b.T)], rtol=0, atol=1e-9)


def analyze(sweep: Path, out: Path) -> dict:
    runs = load_runs(sweep)
    rows = []
    for run in runs:
        cfg = run.cfg
        seed, epochs = cfg.trainer.seed, cfg.trainer.max_epochs
        activation, name = cfg.model.activation, cfg.dataset.name
        data = load_dataset(cfg.dataset, seed=seed, dtype=torch.float64)
        split = sklearn_split(name)
        if data.n_val or not all(
            same_rows(ffn_part.numpy(), sk_part)
            for ffn_part, sk_part in ((data.x_train, split[0]), (data.x_test, split[2]))
        ):
            raise SystemExit(
                f"{run.path}: not sklearn's split; run with dataset.split_seed=0 "
                "dataset.stratify=false dataset.test_fraction=0.25 dataset.val_fraction=0"
            )
        sk = fit_sklearn(*split, activation, seed, epochs)
        rows.append(
            {
                "dataset": name,
                "activation": activation,
                "seed": seed,
                "status": run.status,
                "ffn_accuracy": run.metrics.get("test/accuracy", math.nan),
                "ffn_wall_time_s": run.record.get("wall_time_s", math.nan),
                "ffn_epochs": run.record.get("epochs"),
                "n_train": data.n_train,
                "n_test": data.n_test,
                "sklearn": sk,
            }
        )
    names = [d for d in LOADERS if any(r["dataset"] == d for r in rows)]
    activations = [a for a in SKLEARN_ACTIVATION if any(r["activation"] == a for r in rows)]
    n_seeds = len({r["seed"] for r in rows})
    first = runs[0].cfg
    lines = [
        f"Test accuracy (%) and training wall time (s, one thread), mean ± std over {n_seeds} "
        f"seeds; {first.trainer.max_epochs} epochs of Adam (lr {first.optimizer.lr:g}, batch "
        f"{first.trainer.batch_size}) on both sides (sklearn may stop earlier on its tol). "
        "Both on one split, sklearn's train_test_split(test_size=0.25, random_state=0) "
        "for every seed: the seeds change the initialisation and the minibatches only.",
        "",
        "| dataset | activation | ffn | sklearn | ffn time (s) | sklearn time (s) | "
        "sklearn epochs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    gaps, slower = [], []
    for d in names:
        for a in activations:
            mine = [r for r in rows if r["dataset"] == d and r["activation"] == a]
            if not mine:
                continue
            ffn_acc = [r["ffn_accuracy"] for r in mine]
            sk = [r["sklearn"]["accuracy"] for r in mine]
            gaps.append(np.nanmean(ffn_acc) - np.mean(sk))
            slower.append(
                np.nanmean([r["ffn_wall_time_s"] for r in mine])
                / np.mean([r["sklearn"]["wall_time_s"] for r in mine])
            )
            lines.append(
                f"| {d} | {a} | {mean_std(ffn_acc, '{:.1f}', 100)} | "
                f"{mean_std(sk, '{:.1f}', 100)} | "
                f"{mean_std([r['ffn_wall_time_s'] for r in mine], '{:.2f}')} | "
                f"{mean_std([r['sklearn']['wall_time_s'] for r in mine], '{:.2f}')} | "
                f"{mean_std([r['sklearn']['epochs'] for r in mine], '{:.0f}')} |"
            )
    r0 = rows[0]
    lines += [
        "",
        f"The split keeps {first.dataset.test_fraction:g} of the data for test, not stratified, "
        f"and none for validation (e.g. {r0['dataset']}: {r0['n_train']} train, "
        f"{r0['n_test']} test rows). The ffn sweep: {len(runs)} runs in "
        f"{sweep_minutes(sweep):.1f} min of wall time (sklearn's fits are made by this script).",
    ]
    block = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(rows, names, activations, out / "accuracy.png")
    line = (
        "Against MLPClassifier(hidden_layer_sizes=(64,)) on sklearn's split "
        "(train_test_split(test_size=0.25, random_state=0)), ffn's test accuracy "
        f"differs by {min(gaps) * 100:+.1f} to {max(gaps) * 100:+.1f} points over "
        f"{len(gaps)} dataset x activation pairs (mean of {n_seeds} seeds), in "
        f"{min(slower):.1f} to {max(slower):.1f} times sklearn's wall time."
    )
    write_results(out, NAME, block, line)
    analysis = {"rows": rows, "line": line}
    (sweep / "analysis.json").write_text(json.dumps(analysis, indent=1, allow_nan=True))
    print(block + "\n\n" + line)
    return analysis


def plot_accuracy(rows, names, activations, path):
    """Grouped bars: ffn and sklearn per dataset and activation, error bars: std."""
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, d in zip(axes[0], names, strict=True):
        x = np.arange(len(activations))
        for k, (label, get) in enumerate(
            (
                ("ffn", lambda r: r["ffn_accuracy"]),
                ("sklearn", lambda r: r["sklearn"]["accuracy"]),
            )
        ):
            values = [
                [100 * get(r) for r in rows if r["dataset"] == d and r["activation"] == a]
                for a in activations
            ]
            mean = [np.nanmean(v) for v in values]
            std = [np.nanstd(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
            ax.bar(x + (k - 0.5) * 0.4, mean, 0.4, yerr=std, capsize=2, label=label)
        ax.set_xticks(x, activations)
        low = min(100 * r["ffn_accuracy"] for r in rows if r["dataset"] == d)
        ax.set_ylim(max(0, low - 10), 100)
        ax.set_title(d)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=8, loc="lower left")
    save_figure(fig, path)


def main(argv=None) -> None:
    command_line(analyze, __doc__, HERE, argv)


if __name__ == "__main__":
    main()
