"""The training loop: objective = loss + penalty, minimised until one of the stopping rules fires.

Readable top to bottom: build the pieces from the config, then per epoch take the minibatch
steps, evaluate, log, checkpoint, and ask whether to stop.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ffn import checkpoint, collector, constants, distributed, figure_worker, run_record, targets
from ffn.config import validate
from ffn.data import Dataset, load_dataset
from ffn.data.fingerprint import difference, fingerprint
from ffn.errors import ConfigError
from ffn.interrupt import StopFlag, stop_on_signals
from ffn.metrics import epoch_scalars, evaluate, metric_name, weight_sparsity
from ffn.model import FeedForward
from ffn.penalties import Penalty
from ffn.progress import EpochBar, PhaseClock, SessionClock, run_timing, startup_seconds
from ffn.run_logger import RunLogger, host_values, layer_diagnostics
from ffn.sizes import check_model_size
from ffn.step import (
    autograd_gradients,
    choose_step,
    compile_gradients,
    lbfgs_step,
    manual_gradients,
    train_step,
)

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, name) for name in constants.DTYPES}  # name -> torch dtype
# Divergence is a non-finite loss or gradient: a NaN metric alone (r2 of a constant target) is not
DIVERGENCE = ("train/loss", "train/grad_norm")
CONSTANT_SCHEDULE = "torch.optim.lr_scheduler.ConstantLR"


@dataclass
class LoopState:
    """Where the loop stands: all of it goes into a checkpoint, so a resume continues exactly."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # minibatches finished in the current epoch (non-zero after an interruption)
    steps: int = 0
    calm_epochs: int = 0  # consecutive epochs whose objective changed less than rel_tol
    previous_objective: float | None = None
    best_val_loss: float = math.inf
    best_epoch: int = 0
    wall_time_s: float = 0.0  # over every session of the run


@dataclass
class RunResult:
    """How a run ended and its final metrics (floats; NaN where they could not be computed)."""

    status: str  # completed | diverged | interrupted
    stop_reason: str  # max_epochs | grad_tol | converged | early_stopping | diverged | SIGINT...
    epochs: int
    steps: int
    wall_time_s: float
    metrics: dict[str, float] = field(default_factory=dict)
    exit_code: int = 0
    timing: dict[str, float] = field(default_factory=dict)  # this session: where time went
    undefined: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value


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
            raise ConfigError("trainer.device", name, "auto or cpu: this machine has no CUDA")
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def runner_gradients(cfg: DictConfig):
    """The gradients trainer.step and trainer.compile choose: by hand, compiled, or autograd."""
    if cfg.trainer.compile:
        return compile_gradients()
    return manual_gradients if cfg.trainer.step == "graph_free" else autograd_gradients


def lbfgs_runner_step(cfg: DictConfig):
    """The closure step for optimizer=lbfgs (validate has refused what L-BFGS cannot do)."""
    return functools.partial(lbfgs_step, gradients=runner_gradients(cfg))


class Run:
    """One training run: the pieces built from the config, and the loop that trains them."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.clock = PhaseClock()
        t = cfg.trainer
        # The loop reads its rules a dozen times an epoch: from plain attributes, not through
        # OmegaConf's node lookups (15-50 us each; an ensemble's 32 members read them 32 times)
        self.rules = SimpleNamespace(**OmegaConf.to_container(t, resolve=True))
        self.world = distributed.world()  # a world of one unless under torchrun
        if self.world.size > 1:
            self.device = self.world.rank_device(t.device, resolve_device)
            self.backend = self.world.check_backend(t.dist_backend, self.device)
        else:
            self.device = resolve_device(t.device)
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        seed_everything(t.seed)
        with self.clock("data"):
            self.data = cached_dataset(cfg.dataset, t.seed, self.device, DTYPES[t.dtype])
        self.task, self.score = self.data.task, metric_name(self.data.task)
        self.fingerprint = fingerprint(cfg.dataset, self.data, t.seed)  # checked on resume
        self.undefined: dict[str, str] = {}  # metric -> why the data leaves it undefined
        other = "r2" if self.score == "accuracy" else "accuracy"
        if cfg.optimized_metric.endswith("/" + other):
            allowed = f"a metric of a {self.task} dataset: val/loss, val/{self.score}, ..."
            raise ConfigError("optimized_metric", cfg.optimized_metric, allowed)
        d = self.data
        check_model_size(
            list(cfg.model.hidden),
            d.in_features,
            d.out_features,
            d.n_train,
            DTYPES[t.dtype].itemsize,
        )
        with self.clock("build"):
            self.model = build_model(cfg, self.data, self.device, DTYPES[t.dtype])
            self.penalty = Penalty(**OmegaConf.to_container(cfg.penalty, resolve=True))
            self.penalised = self.penalty.parameters(self.model)
            params = list(self.model.parameters())
            # eager (no torch._dynamo import) unless something is compiled
            self.optimizer = targets.build("optimizer", cfg.optimizer, params, eager=not t.compile)
            self.schedule = targets.build("schedule", cfg.schedule, self.optimizer)
        self.order_gen = torch.Generator().manual_seed(t.seed)  # minibatch order, per epoch
        self.epoch_gen_state = self.order_gen.get_state()
        self.state = LoopState()
        self.best_state: dict[str, Tensor] | None = None
        self.step = choose_step(t.step, self.model.backend, t.compile)  # graph-free or autograd
        if isinstance(self.optimizer, torch.optim.LBFGS):
            self.step = lbfgs_runner_step(cfg)
            # The line search picks each step (lr is only its first try): no schedule applies.
            if cfg.schedule._target_ != CONSTANT_SCHEDULE:
                log.info("optimizer=lbfgs: schedule %s is not used", cfg.schedule._target_)
            self.schedule = torch.optim.lr_scheduler.ConstantLR(self.optimizer, 1.0, 0)
        if self.world.size > 1:  # the same step on this rank's shard, gradients all-reduced
            n = d.n_train
            self.world.check_batch(n if t.full_batch else min(t.batch_size, n), n)
            rows = self.world.rows(n)
            self.train_rows = (self.data.x_train[rows], self.data.y_train[rows])
            step = lbfgs_step if isinstance(self.optimizer, torch.optim.LBFGS) else train_step
            gradients = self.world.reduced(runner_gradients(cfg))
            self.step = functools.partial(step, gradients=gradients)
        else:
            self.train_rows = (self.data.x_train, self.data.y_train)

    # --- checkpoints -------------------------------------------------------------------------

    @functools.cached_property
    def resolved_config(self) -> str:
        """The config as YAML, resolved: a resume must not re-read ${oc.env:...} and find
        another file. Once a run: it was 40% of each checkpoint's cost."""
        return OmegaConf.to_yaml(self.cfg, resolve=True)

    def save_checkpoint(self) -> None:
        with self.clock("checkpoints"):
            self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        if not self.world.writes:  # rank 0 owns the run folder
            return
        checkpoint.save(
            self.run_dir,
            {
                "config": self.resolved_config,
                "data": self.fingerprint,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "order_gen": self.order_gen.get_state(),
                "order_gen_at_epoch_start": self.epoch_gen_state,
                "loop": asdict(self.state),
                "best_state": self.best_state,
                "rng": checkpoint.rng_states(),
            },
        )

    def restore(self, payload: dict[str, Any]) -> None:
        """Put every piece back as the checkpoint found it, once the data is known the same."""
        changed = difference(payload.get("data") or {}, self.fingerprint)
        if changed:
            raise ConfigError(
                "dataset", self.fingerprint["source"], f"the data the run trained on ({changed})"
            )
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        self.order_gen.set_state(payload["order_gen"])
        self.epoch_gen_state = payload["order_gen_at_epoch_start"]
        self.state = LoopState(**payload["loop"])
        self.best_state = payload["best_state"]
        checkpoint.set_rng_states(payload["rng"])

    # --- the loop ----------------------------------------------------------------------------

    def epoch_order(self, n: int, batch: int) -> Tensor | None:
        """This epoch's permutation of the n train rows (None: full batch, no shuffling)."""
        if self.state.batch == 0:
            self.epoch_gen_state = self.order_gen.get_state()
        else:  # resuming mid-epoch: replay this epoch's permutation
            self.order_gen.set_state(self.epoch_gen_state)
        if batch >= n:
            return None
        return torch.randperm(n, generator=self.order_gen).to(self.device)

    def minibatches(self, order: Tensor | None, batch: int, first: int):
        """(index, x, y) of every minibatch of the epoch from the `first`-th on."""
        n = self.data.x_train.shape[0]
        for i, start in enumerate(range(0, n, batch)):
            if i < first:
                continue
            if order is None:
                yield i, *self.train_rows  # the whole train set, or this rank's shard of it
            else:
                idx = order[start : start + batch]
                if self.world.size > 1:  # this rank's shard of the global minibatch
                    idx = idx[self.world.rows(len(idx))]
                yield i, self.data.x_train[idx], self.data.y_train[idx]

    def train(self, logger: RunLogger, stop: StopFlag) -> RunResult:
        """Epochs until a stopping rule fires, the run diverges or a signal arrives."""
        t, s, clock = self.rules, self.state, self.clock
        n = self.data.x_train.shape[0]
        batch = n if t.full_batch else min(t.batch_size, n)
        loop_started = time.time()
        session = SessionClock()
        bar = EpochBar(t.max_epochs, s.epoch, enabled=t.progress)
        status, stop_reason = "completed", "max_epochs"  # what ends the run, set once
        while s.epoch < t.max_epochs:
            with clock("steps"):
                order = self.epoch_order(n, batch)
                for i, x, y in self.minibatches(order, batch, s.batch):
                    self.step(self.model, self.optimizer, self.penalty, x, y, self.task)
                    s.steps += 1
                    s.batch = i + 1
                    if stop:
                        break
            if stop and s.batch < math.ceil(n / batch):  # mid-epoch: resume replays the rest
                status, stop_reason = "interrupted", _signal_name(stop.signum)
                break
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch's steps used
            self.schedule.step()
            s.epoch, s.batch = s.epoch + 1, 0
            last = s.epoch == t.max_epochs
            evaluated = s.epoch % t.eval_every == 0 or last
            host = self.log_epoch(logger, lr) if evaluated else None
            bar.update(host, self.score)
            diverged = host is not None and not all(math.isfinite(host[k]) for k in DIVERGENCE)
            fired = None if host is None or diverged else self.should_stop(host)
            if self.world.size > 1:  # every rank stops together, signals included
                diverged, fired = self.world.agree_epoch(diverged, fired)
            if diverged:
                status, stop_reason = "diverged", "diverged"
                break  # the last checkpoint, from a finite epoch, stays as it is
            s.wall_time_s += session.bank()
            ending = last or fired is not None
            if t.checkpoint_every and (s.epoch % t.checkpoint_every == 0 or ending):
                self.save_checkpoint()
            if fired is not None:
                stop_reason = fired
                break
            if stop and not last:  # after an epoch's last step: the epoch is finished, then saved
                status, stop_reason = "interrupted", _signal_name(stop.signum)
                break
        bar.close()
        s.wall_time_s += session.bank()
        if status == "interrupted":
            if all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                self.save_checkpoint()
            else:  # NaNs mid-epoch: keep the last finite checkpoint rather than overwrite it
                status = "diverged"
        if self.best_state is not None and status != "interrupted" and self.world.writes:
            # best.pt: the weights that were best on val; last.pt stays the state to resume from
            checkpoint.save_best(
                self.run_dir, self.best_state, s.best_epoch, s.best_val_loss, self.resolved_config
            )
        if stop_reason == "early_stopping" and self.best_state is not None:
            self.model.load_state_dict(self.best_state)  # report the model that was best on val
        exit_code = stop.exit_code if status == "interrupted" else 0
        clock.add("loop", time.time() - loop_started)
        return RunResult(
            status,
            stop_reason,
            s.epoch,
            s.steps,
            s.wall_time_s,
            exit_code=exit_code,
            timing={"loop_started_unix": loop_started},
        )

    def epoch_evaluation(self) -> tuple[dict[str, float], dict[str, float], list[Tensor]]:
        """The epoch's scalars and per-layer diagnostics on the host, and the train pass's
        pre-activations [(n, H_l)]. (The ensemble launcher gives its members theirs from one
        stacked evaluation: ffn/ensemble/evaluation.py.)"""
        data = self.data
        val = (data.x_val, data.y_val) if data.n_val else None  # val_fraction=0: no val/
        scalars_of = self.world.epoch_scalars if self.world.size > 1 else epoch_scalars
        scalars, preactivations = scalars_of(
            self.model,
            self.task,
            self.penalty,
            self.penalised,
            (data.x_train, data.y_train),
            val,
        )
        layers = layer_diagnostics(self.model, preactivations)
        # one host transfer an epoch (none on the CPU), for the scalars and the layers alike
        values = host_values([*scalars.values(), *layers.values()])
        host = dict(zip(scalars, values[: len(scalars)], strict=True))
        return host, dict(zip(layers, values[len(scalars) :], strict=True)), preactivations

    def log_epoch(self, logger: RunLogger, lr: float) -> dict[str, float]:
        """Evaluate and log the epoch just finished; returns its scalars on the host."""
        s = self.state
        with self.clock("evaluation"):
            host, layers, preactivations = self.epoch_evaluation()
        host["train/lr"] = lr
        finite = all(math.isfinite(v) for v in host.values())
        # one call: the layers' diagnostics share the diagnostics folder's event with the rest
        logger.scalars({**host, **layers} if finite else host, s.epoch)
        if finite:
            every = self.rules.histogram_every
            if every and (s.epoch % every == 0 or s.epoch == 1):
                logger.histograms(self.model, preactivations, s.epoch)
        return host

    def should_stop(self, host: dict[str, float]) -> str | None:
        """The stopping rule that fires after this epoch, if any."""
        t, s = self.rules, self.state
        if t.grad_tol and host["train/grad_norm"] < t.grad_tol:
            return "grad_tol"
        objective = host["train/objective"]
        if t.rel_tol and s.previous_objective is not None:
            change = abs(objective - s.previous_objective) / max(abs(s.previous_objective), 1e-300)
            s.calm_epochs = s.calm_epochs + 1 if change < t.rel_tol else 0
        s.previous_objective = objective
        if t.rel_tol and s.calm_epochs >= max(t.patience, 1):
            return "converged"
        if "val/loss" not in host:  # no val part (validate refuses early stopping without one)
            return None
        if host["val/loss"] < s.best_val_loss:  # the best so far, checkpointed with the rest
            s.best_val_loss, s.best_epoch = host["val/loss"], s.epoch
            if t.early_stopping:  # the weights are copied only when they may be restored
                self.best_state = copy.deepcopy(self.model.state_dict())
        elif t.early_stopping and s.epoch - s.best_epoch >= t.early_stopping:
            return "early_stopping"
        return None

    def final_metrics(self) -> tuple[dict[str, float], Tensor]:
        """Loss and score on every split for the model as it ends, and the test output (n, M)."""
        metrics: dict[str, float] = {}
        for split in ("train", "val", "test") if self.data.n_val else ("train", "test"):
            x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
            values, out, _ = evaluate(self.model, x, y, self.task)
            if not torch.isfinite(values["loss"]):  # argmax of NaN logits is no accuracy
                values = {k: torch.tensor(math.nan) for k in values}
            if self.task == "regression" and not bool((y != y[:1]).any()):
                values["r2"] = torch.tensor(math.nan)
                self.undefined[f"{split}/r2"] = (
                    f"the target is constant on the {split} part: r2 = 1 - SS_res / SS_tot "
                    "needs SS_tot > 0"
                )
            metrics.update({f"{split}/{k}": float(v) for k, v in values.items()})
        with torch.no_grad():
            metrics["train/penalty"] = float(self.penalty.value(self.penalised))
        metrics["train/objective"] = metrics["train/loss"] + metrics["train/penalty"]
        return metrics, out


def _signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "signal"


# Called with every Run as soon as it is built, before it restores or trains: the ensemble
# launcher (ffn/ensemble/group.py) takes its members' minibatch steps together from here.
RUN_HOOKS: list[Callable[[Run], None]] = []


def train(
    cfg: DictConfig,
    run_dir: Path,
    hparams: dict[str, Any] | None = None,
    resume_from: dict[str, Any] | None = None,
    on_ready: Callable[[Run], None] | None = None,
) -> RunResult:
    """Train as `cfg` says, logging to TensorBoard in `run_dir`; returns how it ended.

    With `resume_from` (a checkpoint's payload) the run continues where it stopped; TensorBoard
    drops whatever the killed session logged after the checkpoint, so the curves stay clean.
    The config is validated first, in one pass, before any data is loaded.
    """
    startup, started = startup_seconds(), time.perf_counter()
    collector.imports_done()  # the first run of `python run.py`: collect again, skip the imports
    world = distributed.world()
    try:
        validate(cfg)
        validated = time.perf_counter() - started
        if cfg.trainer.figures and world.writes:
            figure_worker.start()  # matplotlib loads in another process while this one trains
        run = Run(cfg, run_dir)
        if cfg.trainer.figures and world.writes and run.task == "classification":
            # the worker builds and draws a confusion matrix of as many classes meanwhile: the
            # run's own at its end is that figure with its counts swapped (~35 ms less waited)
            c = run.data.out_features
            figure_worker.prepare("confusion_matrix", {"counts": np.arange(c * c).reshape(c, c)})
        for hook in RUN_HOOKS:
            hook(run)
        if resume_from is not None:
            run.restore(resume_from)
    except ConfigError as error:  # under torchrun: one rank's refusal is every rank's
        world.agree_ready(error)
        raise
    world.agree_ready(None)
    if world.size > 1:
        world.join_group(run.backend)
    run.clock.add("imports", startup)
    run.clock.add("validate", validated)
    if on_ready is not None:  # everything built and checked: the job may now mark the folder
        # its records (.hydra/'s three files, metrics.json) fsynced at once, not one by one:
        # they share the filesystem's journal commits (4 files: 25 -> 13 ms here); inside the
        # job's run_record.syncs_behind, by its thread while the run trains
        with run_record.fsyncs_together():
            on_ready(run)
    # purge_step: events from a killed session past the checkpoint are discarded on reading.
    purge = run.state.epoch + 1 if resume_from is not None else None
    logger = RunLogger(run_dir, purge_step=purge) if world.writes else distributed.SilentLogger()
    with stop_on_signals() as signalled:
        stop = world.watch(signalled)  # under torchrun: a signal to any rank stops every rank
        try:
            if resume_from is None:
                logger.text("config", OmegaConf.to_yaml(cfg))
                if hparams:
                    logger.hparams_start(hparams)
            result = run.train(logger, stop)
            with run.clock("final_evaluation"):
                result.metrics, test_out = run.final_metrics()
            result.undefined = run.undefined
            result.metrics["train/sparsity"] = weight_sparsity(run.model)
            final = {k: v for k, v in result.metrics.items() if k.startswith("test/")}
            final.update(
                {"train/sparsity": result.metrics["train/sparsity"], "epochs": result.epochs}
            )
            if result.status != "interrupted":  # the resumed session will log them
                logger.scalars(final, result.epochs)
            if cfg.trainer.figures and result.status == "completed":
                d = run.data
                logger.final_figures(
                    run.model, d.x_test, d.y_test, run.task, test_out, result.epochs, run_dir
                )
            # TensorBoard keeps the first session-end record: none for a session to be resumed.
            if result.status != "interrupted":
                logger.hparams_end(result.status)
        finally:
            logger.close()
    result.timing.update(run_timing(run.clock.seconds, logger.seconds))
    score = run.score
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


# The datasets loaded last, so a sweep's jobs on the same data (a learning-rate sweep) load it
# once. Keyed by everything load_dataset reads; files are read afresh (they may change). One
# dataset, unless a caller that holds every one anyway (the ensemble's group: each seed its own
# split) raises `DATASET_CACHE_SIZE` while it builds its members.
_DATASET_CACHE: dict[str, Dataset] = {}
DATASET_CACHE_SIZE = 1


def cached_dataset(
    dataset: DictConfig, seed: int, device: torch.device, dtype: torch.dtype
) -> Dataset:
    """load_dataset(dataset, seed=seed, ...), the same tensors again if asked again soon."""
    spec = OmegaConf.to_container(dataset, resolve=True)
    if spec.get("name") == "file":
        return load_dataset(dataset, seed=seed, device=device, dtype=dtype)
    key = repr((sorted(spec.items()), seed, str(device), str(dtype)))
    hit = _DATASET_CACHE.pop(key, None)
    data = hit if hit is not None else load_dataset(dataset, seed=seed, device=device, dtype=dtype)
    _DATASET_CACHE[key] = data  # the newest last
    while len(_DATASET_CACHE) > max(DATASET_CACHE_SIZE, 1):
        del _DATASET_CACHE[next(iter(_DATASET_CACHE))]
    return data
