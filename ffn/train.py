"""The training loop: objective = loss + penalty, minimised until one of the stopping rules fires.

Readable top to bottom: build the pieces from the config, then per epoch take the minibatch
steps, evaluate, log, and ask whether to stop.
"""

from __future__ import annotations

import copy
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm import tqdm

from ffn.data import Dataset, load_dataset
from ffn.errors import ConfigError
from ffn.losses import loss_function
from ffn.metrics import evaluate, metric_name
from ffn.model import FeedForward
from ffn.penalties import Penalty
from ffn.run_logger import RunLogger

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class RunResult:
    """How a run ended and its final metrics (floats; NaN where they could not be computed)."""

    status: str  # completed | diverged
    stop_reason: str  # max_epochs | grad_tol | converged | early_stopping | diverged
    epochs: int
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when there is one, else cpu; refuse a device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError("trainer.device", name, "auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("trainer.device", name, "auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "trainer.device", name, "auto or cpu: this machine has no CUDA device"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("trainer.device", name, f"cuda:0..{torch.cuda.device_count() - 1}")
    return device


def build_model(cfg: DictConfig, data: Dataset, device: torch.device, dtype: torch.dtype):
    """The network for this dataset's shapes, initialised from `trainer.seed`."""
    return FeedForward(
        data.in_features,
        list(cfg.model.hidden),
        data.out_features,
        activation=cfg.model.activation,
        activation_param=cfg.model.activation_param,
        bias=cfg.model.bias,
        backend=cfg.model.backend,
        seed=cfg.trainer.seed,
        dtype=dtype,
        device=device,
    )


def _instantiate(group: str, node: DictConfig, **kwargs: Any) -> Any:
    """Build a `_target_` node, passing only the keys that are set (null means: torch's default)."""
    spec = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}
    spec.pop("full_batch", None)
    target = spec.get("_target_")
    try:
        return instantiate(spec, **kwargs)
    except Exception as error:  # Hydra wraps import and argument errors alike
        cause = error.__cause__ or error
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        allowed = f"a class accepting {sorted(spec)}: {detail}"
        raise ConfigError(f"{group}._target_", target, allowed) from None


def build_optimizer(cfg: DictConfig, model: FeedForward) -> torch.optim.Optimizer:
    return _instantiate("optimizer", cfg.optimizer, params=list(model.parameters()))


def build_schedule(cfg: DictConfig, optimizer: torch.optim.Optimizer):
    return _instantiate("schedule", cfg.schedule, optimizer=optimizer)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_step(
    model: FeedForward,
    optimizer: torch.optim.Optimizer,
    penalty: Penalty,
    penalised: list[Tensor],
    x: Tensor,
    y: Tensor,
    task: str,
) -> Tensor:
    """One step of theta <- theta - eta grad(l_n + g); returns the minibatch loss (no sync)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_function(task, model.backend)(model(x), y)
    loss.backward()
    penalty.add_gradient_(penalised)
    optimizer.step()
    penalty.proximal_step_(optimizer, penalised)
    return loss.detach()


def gradient_norm(model: FeedForward) -> Tensor:
    """||grad||_2 over all parameters, as a 0-dim tensor."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def train(cfg: DictConfig, run_dir: Path, hparams: dict[str, Any] | None = None) -> RunResult:
    """Train as `cfg` says, logging to TensorBoard in `run_dir`; returns how it ended."""
    t = cfg.trainer
    device = resolve_device(t.device)
    dtype = DTYPES[t.dtype]
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed)

    data = load_dataset(cfg.dataset, seed=t.seed, device=device, dtype=dtype)
    model = build_model(cfg, data, device, dtype)
    penalty = Penalty(**OmegaConf.to_container(cfg.penalty, resolve=True))
    penalised = penalty.parameters(model)
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer)
    task, score = data.task, metric_name(data.task)

    logger = RunLogger(run_dir)
    try:
        logger.text("config", OmegaConf.to_yaml(cfg))
        if hparams:
            logger.hparams_start(hparams)
        result = _loop(cfg, data, model, penalty, penalised, optimizer, schedule, logger)
        result.metrics, test_out = final_metrics(model, data, penalty, penalised)
        logger.scalars(
            {k: v for k, v in result.metrics.items() if k.startswith("test/")}, result.epochs
        )
        if t.figures and result.status == "completed":
            logger.final_figures(
                model, data.x_test, data.y_test, task, test_out, result.epochs, run_dir
            )
        logger.hparams_end(result.status)
        log.info(
            "%s: test/%s=%.4f test/loss=%.4g after %d epochs (%s)",
            result.status,
            score,
            result.metrics[f"test/{score}"],
            result.metrics["test/loss"],
            result.epochs,
            result.stop_reason,
        )
        return result
    finally:
        logger.close()


def _loop(cfg, data, model, penalty, penalised, optimizer, schedule, logger) -> RunResult:
    """The epochs: steps, evaluation, logging and the stopping rules."""
    t = cfg.trainer
    task, score = data.task, metric_name(data.task)
    n = data.x_train.shape[0]
    batch = n if cfg.optimizer.full_batch else min(t.batch_size, n)
    order_gen = torch.Generator().manual_seed(t.seed)
    device = data.x_train.device

    steps, calm, best, best_epoch, best_state = 0, 0, float("inf"), 0, None
    previous_objective = None
    show = t.progress and sys.stderr.isatty()
    bar = tqdm(range(1, t.max_epochs + 1), desc="epochs", disable=not show, leave=False)
    status, reason, epoch = "completed", "max_epochs", 0
    for epoch in bar:
        order = torch.randperm(n, generator=order_gen).to(device) if batch < n else None
        for start in range(0, n, batch):
            if order is None:
                x, y = data.x_train, data.y_train
            else:
                idx = order[start : start + batch]
                x, y = data.x_train[idx], data.y_train[idx]
            train_step(model, optimizer, penalty, penalised, x, y, task)
            steps += 1
        lr = optimizer.param_groups[0]["lr"]
        schedule.step()

        train_m, _, preactivations = evaluate(model, data.x_train, data.y_train, task)
        val_m, _, _ = evaluate(model, data.x_val, data.y_val, task)
        with torch.no_grad():
            pen = penalty.value(penalised)
        scalars = {
            "train/loss": train_m["loss"],
            f"train/{score}": train_m[score],
            "train/penalty": pen,
            "train/objective": train_m["loss"] + pen.to(train_m["loss"]),
            "train/grad_norm": gradient_norm(model),
            "val/loss": val_m["loss"],
            f"val/{score}": val_m[score],
        }
        # One host transfer per epoch: no synchronisation inside the steps.
        values = torch.stack([v.detach().double().cpu() for v in scalars.values()]).tolist()
        host = dict(zip(scalars, values, strict=True))
        host["train/lr"] = lr
        logger.scalars(host, epoch)
        if not all(np.isfinite(v) for v in host.values()):
            status, reason = "diverged", "diverged"
            break
        logger.layers(model, preactivations, epoch)
        if t.histogram_every and (epoch % t.histogram_every == 0 or epoch == 1):
            logger.histograms(model, preactivations, epoch)
        bar.set_postfix(loss=f"{host['train/loss']:.4g}", **{score: f"{host[f'val/{score}']:.4f}"})

        objective = host["train/objective"]
        if t.grad_tol and host["train/grad_norm"] < t.grad_tol:
            reason = "grad_tol"
            break
        if t.rel_tol and previous_objective is not None:
            change = abs(objective - previous_objective) / max(abs(previous_objective), 1e-300)
            calm = calm + 1 if change < t.rel_tol else 0
            if calm >= max(t.patience, 1):
                reason = "converged"
                break
        previous_objective = objective
        if t.early_stopping:
            if host["val/loss"] < best:
                best, best_epoch = host["val/loss"], epoch
                best_state = copy.deepcopy(model.state_dict())
            elif epoch - best_epoch >= t.early_stopping:
                model.load_state_dict(best_state)  # report the model that was best on val
                reason = "early_stopping"
                break
    bar.close()
    return RunResult(status, reason, epoch, steps)


def final_metrics(
    model: FeedForward, data: Dataset, penalty: Penalty, penalised: list[Tensor]
) -> tuple[dict[str, float], Tensor]:
    """Loss and score on every split for the model as it ends, and the test output (n, M)."""
    metrics: dict[str, float] = {}
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        values, out, _ = evaluate(model, x, y, data.task)
        metrics.update({f"{split}/{k}": float(v) for k, v in values.items()})
    with torch.no_grad():
        metrics["train/penalty"] = float(penalty.value(penalised))
    metrics["train/objective"] = metrics["train/loss"] + metrics["train/penalty"]
    return metrics, out
