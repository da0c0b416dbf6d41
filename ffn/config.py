"""Dataclass schemas for every config group, registered in Hydra's ConfigStore.

The whole tree is stored once, as ``ffn_schema``, and named first in conf/config.yaml's defaults:
every group file then merges onto a typed node, so a bad type or an unknown key is refused at
composition, before anything runs, and the schema never shows up as a group choice.
Ranges (lr > 0, lambda >= 0, ...) are checked by `validate`, one clear line per bad value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from ffn.constants import DTYPES, MAX_SEED
from ffn.data.config import DatasetConfig
from ffn.errors import ConfigError

# OmegaConf's structured configs want typing.Optional / List spelled out, so no `X | None` here.


@dataclass
class ModelConfig:
    """The network: `hidden=[]` is the seed's single neuron."""

    activation: str = "relu"
    hidden: list[int] = field(default_factory=lambda: [128])
    activation_param: float | None = None  # leaky_relu's slope, elu's alpha
    bias: bool = True
    backend: str = "manual"  # "autograd": the twin made of torch's own ops


@dataclass
class PenaltyConfig:
    """g(w) = lam * pen(w), see ffn.penalties."""

    name: str = "none"
    lam: float = 0.0
    method: str = "proximal"
    l1_ratio: float = 0.5
    include_bias: bool = False


@dataclass
class OptimizerConfig:
    """A torch.optim optimizer built from `_target_`; keys left null are not passed to it."""

    _target_: str = "torch.optim.Adam"
    lr: float = 1e-3
    full_batch: bool = False  # gd: the whole training set per step (not passed to torch)
    momentum: float | None = None
    dampening: float | None = None
    nesterov: bool | None = None
    betas: list[float] | None = None
    eps: float | None = None
    weight_decay: float | None = None


@dataclass
class ScheduleConfig:
    """A torch.optim.lr_scheduler built from `_target_`, stepped once per epoch."""

    _target_: str = "torch.optim.lr_scheduler.ConstantLR"
    factor: float | None = None
    total_iters: int | None = None
    gamma: float | None = None
    step_size: int | None = None
    T_max: int | None = None
    eta_min: float | None = None
    decay: float | None = None
    power: float | None = None


@dataclass
class TrainerConfig:
    """The loop: when to stop, where to run, what to log."""

    max_epochs: int = 100
    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"
    seed: int = 0
    grad_tol: float = 0.0  # stop when the gradient norm falls under it (0: off)
    rel_tol: float = 0.0  # stop when the objective's relative change stays under it ...
    patience: int = 5  # ... for this many epochs
    early_stopping: int = 0  # stop when val metric has not improved for this many epochs (0: off)
    num_threads: int | None = None  # torch's intra-op threads (null: torch's default)
    eval_every: int = 1  # epochs between evaluations (train/val scalars, stopping rules)
    histogram_every: int = 1  # epochs between histograms (0: never)
    figures: bool = True
    progress: bool = True  # a progress bar when stderr is a terminal
    compile: bool = False  # torch.compile the graph-free gradients (see docs/benchmarks.md)
    checkpoint_every: int = 10  # epochs between checkpoints, and always at the end (0: never)
    resume: bool = False  # continue the run in hydra.run.dir from its last checkpoint


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimized_metric: str = "val/loss"  # what the Hydra entry returns, for sweepers


def register_configs() -> None:
    """Store the schema as `ffn_schema` (no group: it is not a user's choice)."""
    ConfigStore.instance().store(name="ffn_schema", node=Config)


SPLITS = ("train", "val", "test")
METRICS = (
    "loss",
    "accuracy",
    "r2",
    "objective",
    "penalty",
)  # accuracy: classification, r2: regression


def check_schema(cfg: DictConfig) -> None:
    """Refuse keys the schema lacks, even those a `+key=value` override slipped past Hydra."""
    container = OmegaConf.to_container(cfg, resolve=False)
    try:
        OmegaConf.merge(OmegaConf.structured(Config), container)
    except (ConfigAttributeError, ConfigKeyError) as error:
        section = error.full_key.rpartition(".")[0]
        node = OmegaConf.select(OmegaConf.structured(Config), section) if section else None
        keys = sorted(node.keys()) if node is not None else sorted(Config.__dataclass_fields__)
        value = OmegaConf.select(cfg, error.full_key)
        raise ConfigError(error.full_key, value, "a known key: " + ", ".join(keys)) from None
    except ValidationError as error:
        raise ConfigError(error.full_key, error.value, error.msg.splitlines()[0]) from None


def validate(cfg: DictConfig | Any) -> None:
    """Range checks the types cannot express; raises ConfigError on the first bad value."""
    check_schema(cfg)
    _positive("optimizer.lr", cfg.optimizer.lr)
    for key in ("momentum", "dampening", "eps", "weight_decay"):
        value = cfg.optimizer.get(key)
        if value is not None:
            _finite_at_least(f"optimizer.{key}", value, 0.0, strict=key == "eps")
    betas = cfg.optimizer.get("betas")
    if betas is not None and not (len(betas) == 2 and all(0 <= b < 1 for b in betas)):
        raise ConfigError("optimizer.betas", list(betas), "null or two numbers in [0, 1)")
    t = cfg.trainer
    if t.max_epochs < 1:
        raise ConfigError("trainer.max_epochs", t.max_epochs, "an integer >= 1")
    if t.batch_size < 1:
        raise ConfigError("trainer.batch_size", t.batch_size, "an integer >= 1")
    if t.dtype not in DTYPES:
        raise ConfigError("trainer.dtype", t.dtype, "one of " + ", ".join(DTYPES))
    for key in ("grad_tol", "rel_tol"):
        _finite_at_least(f"trainer.{key}", t[key], 0.0)
    for key in ("patience", "early_stopping", "histogram_every", "checkpoint_every"):
        if t[key] < 0:
            raise ConfigError(f"trainer.{key}", t[key], "an integer >= 0")
    if t.eval_every < 1:
        raise ConfigError("trainer.eval_every", t.eval_every, "an integer >= 1")
    if t.num_threads is not None and t.num_threads < 1:
        raise ConfigError("trainer.num_threads", t.num_threads, "null or an integer >= 1")
    _validate_schedule(cfg.schedule)  # after trainer: cosine's T_max is trainer.max_epochs
    if not 0 <= t.seed <= MAX_SEED:
        raise ConfigError("trainer.seed", t.seed, f"an integer in [0, {MAX_SEED}]")
    split, _, name = cfg.optimized_metric.partition("/")
    if split not in SPLITS or name not in METRICS:
        allowed = f"SPLIT/NAME with SPLIT in {', '.join(SPLITS)} and NAME in {', '.join(METRICS)}"
        raise ConfigError("optimized_metric", cfg.optimized_metric, allowed)
    check_validation_part(cfg)


def check_validation_part(cfg: DictConfig | Any) -> None:
    """With dataset.val_fraction=0 there is no val part: refuse what would need one."""
    if cfg.dataset.val_fraction != 0:
        return
    need = "a validation part (dataset.val_fraction > 0)"
    if cfg.trainer.early_stopping:
        raise ConfigError(
            "trainer.early_stopping", cfg.trainer.early_stopping, f"0 (off), or {need}"
        )
    if cfg.optimized_metric.startswith("val/"):
        raise ConfigError(
            "optimized_metric",
            cfg.optimized_metric,
            "a train/ or test/ metric, set e.g. optimized_metric=test/accuracy or train/loss "
            f"(val/, the default, needs {need})",
        )


def _validate_schedule(schedule: DictConfig) -> None:
    """The step-size schedule's knobs, where torch would fail late or silently misbehave."""
    checks = {
        "step_size": lambda v: v >= 1,
        "T_max": lambda v: v >= 1,
        "total_iters": lambda v: v >= 0,
        "gamma": lambda v: math.isfinite(v) and v > 0,
        "factor": lambda v: 0 < v <= 1,
        "eta_min": lambda v: math.isfinite(v) and v >= 0,
        "decay": lambda v: math.isfinite(v) and v >= 0,
        "power": lambda v: math.isfinite(v) and v >= 0,
    }
    allowed = {
        "step_size": "an integer >= 1",
        "T_max": "an integer >= 1",
        "total_iters": "an integer >= 0",
        "gamma": "a finite number > 0",
        "factor": "a number in (0, 1]",
        "eta_min": "a finite number >= 0",
        "decay": "a finite number >= 0",
        "power": "a finite number >= 0",
    }
    for key, ok in checks.items():
        value = schedule.get(key)
        if value is not None and not ok(value):
            raise ConfigError(f"schedule.{key}", value, allowed[key])


def _positive(key: str, value: float) -> None:
    _finite_at_least(key, value, 0.0, strict=True)


def _finite_at_least(key: str, value: float, low: float, strict: bool = False) -> None:
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ConfigError(key, value, f"a finite number {'>' if strict else '>='} {low:g}")


__all__ = ["MISSING", "Config", "register_configs", "validate"]
