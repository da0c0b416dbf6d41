"""The studies of experiments/: each smoke sweep run for real, then its analyze.py on the output.

Each smoke sweep runs as `python run.py -m experiment=<name>_smoke hydra.sweep.dir=<tmp>` as a
user would, then `python experiments/<study>/analyze.py <tmp> --out <tmp>/report`, and each test
checks what its analysis found against what must hold whatever the (short) training did: the
lasso path is sklearn's, ridge's is the closed form, 2/L brackets the least-squares edge, and so
on. The commands run once, in a module fixture, two at a time, each a process forked from one
that did the imports (helpers.run_forked): all sweeps first, then all analyses.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, RUN_PY_IMPORTS, run_forked

CONF = ROOT / "conf" / "experiment"
STUDIES = {  # study folder -> the experiment configs its sweeps come from
    "activations_depth": ["activations_depth"],
    "lasso_ridge": ["lasso_ridge", "lasso_ridge_net"],
    "step_size": ["step_size", "step_size_eos"],
    "mnist1d": ["mnist1d"],
    "vs_sklearn": ["vs_sklearn"],
    "lars_diabetes": ["lars_diabetes"],
}


# What the analyses import (forked_runs.py preloads it)
ANALYZE_IMPORTS = [
    *("ffn.data", "ffn.losses", "ffn.report", "ffn.train", "matplotlib.pyplot"),
    *("sklearn.linear_model", "sklearn.model_selection", "sklearn.neural_network"),
]


# Each analysis the tests check: (the study whose analyze.py runs, the sweeps it reads)
ANALYSES = {
    "activations_depth": ("activations_depth", ["activations_depth"]),
    "lasso_ridge": ("lasso_ridge", ["lasso_ridge", "lasso_ridge_net"]),
    "step_size": ("step_size", ["step_size"]),
    "step_size_eos": ("step_size", ["step_size_eos"]),
    "mnist1d": ("mnist1d", ["mnist1d"]),
    "vs_sklearn": ("vs_sklearn", ["vs_sklearn"]),
    "lars_diabetes": ("lars_diabetes", ["lars_diabetes"]),
}


@dataclass
class Analysis:
    sweeps: list[Path]  # the folders of its sweeps, in ANALYSES' order
    report: Path  # analyze.py's --out
    runs: list[subprocess.CompletedProcess[str]]  # the sweeps' processes
    proc: subprocess.CompletedProcess[str] | None = None  # analyze.py's; None if a sweep failed


@pytest.fixture(scope="module")
def analyses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Analysis]:
    """Every smoke sweep, then every analysis of ANALYSES."""
    base = tmp_path_factory.mktemp("experiments")
    sweeps = {name: base / name for configs in STUDIES.values() for name in configs}
    commands = [
        ["run.py", "-m", f"experiment={name}_smoke", f"hydra.sweep.dir={folder}"]
        for name, folder in sweeps.items()
    ]
    runs = dict(zip(sweeps, run_forked(commands, RUN_PY_IMPORTS), strict=True))
    found = {
        key: Analysis([sweeps[n] for n in names], base / key / "report", [runs[n] for n in names])
        for key, (_, names) in ANALYSES.items()
    }
    ready = [key for key, a in found.items() if all(r.returncode == 0 for r in a.runs)]
    commands = [
        [f"experiments/{ANALYSES[key][0]}/analyze.py", *map(str, found[key].sweeps), "--out",
         str(found[key].report)]
        for key in ready
    ]  # fmt: skip
    for key, proc in zip(ready, run_forked(commands, ANALYZE_IMPORTS), strict=True):
        found[key].proc = proc
    return found


def analyzed(analyses: dict[str, Analysis], key: str) -> tuple[list[Path], Path]:
    """The analysis' sweeps and analyze.py's report folder, once all of them ended well."""
    found = analyses[key]
    for proc in found.runs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert found.proc is not None
    assert found.proc.returncode == 0, found.proc.stderr[-3000:]
    readme = (found.report / "README.md").read_text()
    assert "<!-- results: begin" in readme and "|---" in readme  # the table went in
    return found.sweeps, found.report


def read_analysis(sweep: Path) -> dict:
    return json.loads((sweep / "analysis.json").read_text())


# --------------------------------------------------------------------------- fast checks


def test_every_study_has_its_configs_write_up_and_script() -> None:
    names = {p.stem for p in CONF.glob("*.yaml")}
    expected = {n for configs in STUDIES.values() for n in configs}
    assert names == expected | {f"{n}_smoke" for n in expected}
    index = (ROOT / "experiments" / "README.md").read_text()
    for study, configs in STUDIES.items():
        folder = ROOT / "experiments" / study
        readme = (folder / "README.md").read_text()
        assert (folder / "analyze.py").is_file()
        assert "<!-- results: begin" in readme and "<!-- results: end -->" in readme
        for name in configs:
            assert f"python run.py -m experiment={name}" in readme, (study, name)
            head = (CONF / f"{name}.yaml").read_text().splitlines()[0]
            assert head == "# @package _global_", name
        assert f"<!-- {study}: begin -->" in index and f"({study}/README.md)" in index
        for line in readme.splitlines():  # every figure the write-up shows is in the repository
            if line.startswith("!["):
                assert (folder / line.split("(")[1].rstrip(")")).is_file(), line


# --------------------------------------------------------------------------- the smoke sweeps


@pytest.mark.slow
def test_activations_depth(analyses: dict[str, Analysis]) -> None:
    [sweep], report = analyzed(analyses, "activations_depth")
    analysis = read_analysis(sweep)
    rows = analysis["rows"]
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    for r in rows:
        for key in ("grad_init", "grad_end"):
            assert len(r[key]) == r["depth"] + 1
            assert all(math.isfinite(v) and v > 0 for v in r[key])
        assert len(r["train_loss"]) == 3  # epoch 0 (computed) and the 2 logged epochs
    # At initialisation (no training involved): sigmoid's gradient fades towards the input.
    ratios = analysis["ratios_first_over_last"]
    assert np.mean(ratios["sigmoid"]["init"]) < np.mean(ratios["relu"]["init"]) / 5
    for figure in ("grad_norm_by_layer.png", "training_curves.png", "accuracy_by_depth.png"):
        assert (report / figure).stat().st_size > 0


@pytest.mark.slow
def test_lasso_ridge(analyses: dict[str, Analysis]) -> None:
    [linear, network], _ = analyzed(analyses, "lasso_ridge")
    paths = read_analysis(linear)
    # The runs converged to the penalised problems' minimisers: sklearn's lasso_path
    # (alpha = lam / 2, tol=1e-12) and ridge's closed form.
    assert paths["max_abs_diff"]["l1"] < 1e-5
    assert paths["max_abs_diff"]["l2"] < 1e-5
    assert paths["zeros_match"]
    lasso = {r["lam"]: r["zeros"] for r in paths["rows"] if r["penalty"] == "l1"}
    assert lasso[2.0] == 10  # above lam_max every coefficient is exactly 0
    assert all(r["zeros"] == 0 for r in paths["rows"] if r["penalty"] == "l2")
    rows = read_analysis(network)["rows"]
    for r in rows:
        if r["lam"] == 0.0 or r["penalty"] == "l2":
            assert r["sparsity"] == [0.0] * len(r["sparsity"])
        else:  # proximal steps set weights exactly to 0, starting with the blank pixels'
            assert r["sparsity"][0] > 0


@pytest.mark.slow
def test_step_size(analyses: dict[str, Analysis]) -> None:
    [sweep], _ = analyzed(analyses, "step_size")
    per_seed = read_analysis(sweep)["per_seed"]
    diabetes = per_seed["diabetes/0"]
    # Least squares: the Hessian is 2 X~'X~/n everywhere, so L is its closed form, and the
    # grid's etas either side of 2/L ~ 0.255 descend and do not.
    assert diabetes["L"] == pytest.approx(diabetes["L_global"], rel=1e-9)
    assert diabetes["largest_monotone_lr"] == pytest.approx(0.125)
    assert diabetes["first_rising_lr"] == pytest.approx(0.3535534)
    assert 0.125 < diabetes["two_over_L"] < 0.3535534
    cancer = per_seed["breast_cancer/0"]
    assert 0 < cancer["L"] <= cancer["L_global"] * (1 + 1e-9)  # softmax's curvature bound


@pytest.mark.slow
def test_step_size_edge_of_stability(analyses: dict[str, Analysis]) -> None:
    [sweep], report = analyzed(analyses, "step_size_eos")
    assert (report / "edge_of_stability.png").is_file()
    rows = read_analysis(sweep)["rows"]
    assert sorted(r["lr"] for r in rows) == [0.1, 0.2]
    for r in rows:
        # The replay is the run: its losses are the logged ones (float32 in the event files).
        assert r["replay_max_rel_gap"] < 1e-6
        # lambda_max through ffn's double backward is the autograd twin's.
        assert r["lambda_start"] == pytest.approx(r["lambda_start_twin"], rel=1e-10)
        lams = r["series"]["lambda_max"]
        assert len(lams) == r["series"]["steps"][-1] + 1  # every step of a short run
        assert all(math.isfinite(v) and v > 0 for v in lams)


@pytest.mark.slow
def test_mnist1d(analyses: dict[str, Analysis]) -> None:
    [sweep], report = analyzed(analyses, "mnist1d")
    rows = read_analysis(sweep)["rows"]
    models = sorted(r["model"] for r in rows)
    # 2 seeds; hidden=[] ran under relu and tanh alike, and is kept once a seed
    assert models == ["MLP relu"] * 2 + ["MLP tanh"] * 2 + ["logistic regression"] * 2
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert "| logistic regression |" in (report / "README.md").read_text()


@pytest.mark.slow
def test_vs_sklearn(analyses: dict[str, Analysis]) -> None:
    [sweep], _ = analyzed(analyses, "vs_sklearn")
    rows = read_analysis(sweep)["rows"]
    assert len(rows) == 4
    for r in rows:
        assert 0.0 <= r["sklearn"]["accuracy"] <= 1.0
        assert 1 <= r["sklearn"]["epochs"] <= 5  # max_iter is the run's epochs
        assert 0.0 <= r["ffn_accuracy"] <= 1.0
    digits = next(r for r in rows if r["dataset"] == "digits")
    assert (digits["n_train"], digits["n_test"]) == (1347, 450)  # train_test_split's sizes


def test_lars_diabetes_file_is_sklearns_copy_of_the_papers_data() -> None:
    from sklearn.datasets import load_diabetes

    table = np.loadtxt(
        ROOT / "experiments" / "lars_diabetes" / "diabetes.csv", delimiter=",", skiprows=1
    )
    paper = load_diabetes(scaled=False)
    assert np.array_equal(table[:, :10], paper.data) and np.array_equal(table[:, 10], paper.target)


@pytest.mark.slow
def test_lars_diabetes(analyses: dict[str, Analysis]) -> None:
    [sweep], _ = analyzed(analyses, "lars_diabetes")
    result = read_analysis(sweep)
    # One lam in each of the paper's 2nd, 4th and 6th steps: the active sets are the first 2, 4
    # and 6 variables of its order of entry, and each run is the exact lasso solution.
    order = result["paper"]["entry_order"]
    assert result["active"] == [sorted(order[:k]) for k in (2, 4, 6)]
    assert result["max_abs_diff_vs_exact"] < 1e-9 and result["zeros_match_exact"]
