"""Study 3, second part: lambda_max of the Hessian along full-batch gradient descent.

Each run of `python run.py -m experiment=step_size_eos` is replayed here from its config: the
runner's own objects (`ffn.train.Run`: data, model, optimizer, penalty) and its own step, so the
replay is the run (its losses are checked against the run's logged train/loss). Every few steps,
lambda_max, the top eigenvalue of the training objective's Hessian, is found by power iteration
on Hessian-vector products through ffn's hand-written Functions (double backward of the manual
backend), warm-started from the previous eigenvector. At the start it is also computed on the
autograd twin, as a check of the second derivatives it rests on.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig

from ffn.losses import loss_function
from ffn.model import FeedForward
from ffn.train import Run

EDGE = 0.9  # lambda_max has reached the edge once it is within 10% of 2/eta
POINTS = 150  # lambda_max is computed at about this many steps of a run


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b, strict=True)))


def top_eigenvalue(
    model: FeedForward,
    run: Run,
    start: list[torch.Tensor],
    max_iters: int = 100,
    tol: float = 1e-5,
) -> tuple[float, list[torch.Tensor], int]:
    """lambda_max of the Hessian of loss + smooth penalty at the model's parameters.

    Power iteration v <- H v / ||H v|| from `start`, H v by differentiating the gradient (one
    graph, built once with create_graph=True). Returns (lambda, the unit eigenvector, iterations).
    Power iteration finds the eigenvalue largest in magnitude: the top one, unless a negative
    eigenvalue is larger in magnitude (then the returned value is negative, and shows it).
    """
    params = list(model.parameters())
    x, y = run.data.x_train, run.data.y_train
    penalised = run.penalty.parameters(model)
    objective = loss_function(run.task, model.backend)(model(x), y)
    objective = objective + run.penalty.smooth_value(penalised).to(objective)
    grads = torch.autograd.grad(objective, params, create_graph=True)
    norm = math.sqrt(_dot(start, start))
    v = [t / norm for t in start]
    lam = math.nan
    for i in range(1, max_iters + 1):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        new = _dot(v, hv)  # the Rayleigh quotient v'Hv, ||v|| = 1
        norm = math.sqrt(_dot(hv, hv))
        v = [t.detach() / norm for t in hv]
        if abs(new - lam) <= tol * abs(new):
            return new, v, i
        lam = new
    return lam, v, max_iters


def replay(cfg: DictConfig) -> dict:
    """Re-run the run's gradient descent; lambda_max and the loss along it."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(cfg, Path(tmp))
    if run.model.backend != "manual":
        raise SystemExit("step_size_eos: model.backend must be manual (ffn's own derivatives)")
    steps = int(cfg.trainer.max_epochs)
    every = max(1, steps // POINTS)
    generator = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in run.model.parameters()]
    lam0_twin, _, _ = top_eigenvalue(run.model.with_backend("autograd"), run, v)
    at, lams, iters, losses = [], [], [], []
    x, y = run.data.x_train, run.data.y_train
    for k in range(steps + 1):
        if k % every == 0 or k == steps:
            lam, v, n = top_eigenvalue(run.model, run, v)
            at.append(k)
            lams.append(lam)
            iters.append(n)
        if k == steps:
            break
        # The runner's step: returns the data loss at theta_k, before the update.
        losses.append(float(run.step(run.model, run.optimizer, run.penalty, x, y, run.task)))
        run.schedule.step()
    return {
        "steps": at,
        "lambda_max": lams,
        "iterations": iters,
        "loss": losses,  # loss[k] at theta_k, k = 0 .. max_epochs - 1
        "lambda0_twin": lam0_twin,
    }


def summarise(lr: float, result: dict, logged: np.ndarray) -> dict:
    """One run's numbers: when lambda_max reached 2/eta, where it sat after, how the loss went."""
    edge = 2 / lr
    lams = np.array(result["lambda_max"])
    steps = np.array(result["steps"])
    loss = np.array(result["loss"])
    reached = np.flatnonzero(lams >= EDGE * edge)
    first = int(steps[reached[0]]) if reached.size else None
    after = lams[steps >= first] / edge if first is not None else np.array([])
    rises = np.diff(loss) > 0
    # logged[k - 1] is train/loss after k steps, which the replay has as loss[k]
    overlap = min(len(logged), len(loss) - 1)
    replay_gap = float(
        np.max(np.abs(logged[:overlap] - loss[1 : overlap + 1]) / np.abs(loss[1 : overlap + 1]))
    )
    return {
        "lr": lr,
        "two_over_lr": edge,
        "lambda_start": float(lams[0]),
        "lambda_start_twin": result["lambda0_twin"],
        "first_edge_step": first,
        "median_ratio_after": float(np.median(after)) if after.size else math.nan,
        "max_ratio": float(lams.max() / edge),
        "rises_after": int(rises[first:].sum()) if first is not None else 0,
        "steps_after": len(loss) - 1 - first if first is not None else 0,
        "rises_before": int(rises[:first].sum()) if first is not None else int(rises.sum()),
        "final_loss": float(loss[-1]),
        "replay_max_rel_gap": replay_gap,
        "max_iterations": int(max(result["iterations"][1:] or result["iterations"])),
    }


def plot(series: dict[float, dict], path: Path) -> None:
    """lambda_max (left) and the training loss (right) against the step, one colour per eta."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(series)))
    for color, (lr, result) in zip(colors, sorted(series.items()), strict=True):
        left.plot(result["steps"], result["lambda_max"], color=color, lw=1.2, label=f"eta = {lr:g}")
        left.axhline(2 / lr, color=color, ls="--", lw=0.8)
        right.plot(np.arange(len(result["loss"])), result["loss"], color=color, lw=1)
    left.set_xlabel("step")
    left.set_ylabel("lambda_max of the training objective's Hessian")
    left.set_title("dashed: 2 / eta")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.set_yscale("log")
    right.set_xlabel("step")
    right.set_ylabel("training loss")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
