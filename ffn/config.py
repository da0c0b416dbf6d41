"""Dataclass schemas for every config group, registered in Hydra's ConfigStore.

The whole tree is stored once, as ``ffn_schema``, and named first in conf/config.yaml's defaults:
every group file then merges onto a typed node, so a bad type or an unknown key is refused at
composition, before anything runs, and the schema never shows up as a group choice.
`validate` then checks values in one pass before anything is built, each group by its own
checks (the dataset's, the model's, Penalty's, the optimizer and schedule against their
`_target_`'s signature, the trainer's), one clear line per bad value.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from ffn.constants import DTYPES, MAX_SEED
from ffn.data.config import DatasetConfig
from ffn.errors import ConfigError
from ffn.launch_env import BACKENDS

# OmegaConf's structured configs want typing.Optional / List spelled out, so no `X | None` here.


@dataclass
class ModelConfig:
    """The network: `hidden=[]` is the notes' single neuron."""

    activation: str = "relu"
    hidden: list[int] = field(default_factory=lambda: [128])
    activation_param: float | None = None  # leaky_relu's slope, elu's alpha
    bias: bool = True
    backend: str = "manual"  # the forward's ops: the hand-written Functions; autograd: torch's


@dataclass
class PenaltyConfig:
    """g(w) = lam * pen(w), see ffn.penalties."""

    name: str = "none"
    lam: float = 0.0
    method: str = "proximal"
    l1_ratio: float = 0.5
    include_bias: bool = False


@dataclass
class TrainerConfig:
    """The loop: when to stop, where to run, what to log."""

    max_epochs: int = 100
    batch_size: int = 64
    full_batch: bool = False  # every step on the whole training set (optimizer=gd sets it)
    # graph_free: the hand-written formulas chained with no autograd graph (ffn/step.py);
    # autograd: loss.backward() through the model's forward (model.backend says which ops)
    step: str = "graph_free"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: each rank cuda:LOCAL_RANK)
    dist_backend: str = "auto"  # under torchrun: auto (nccl on CUDA, gloo on CPU) | gloo | nccl
    dtype: str = "float32"
    seed: int = 0
    grad_tol: float = 0.0  # stop when the gradient norm falls under it (0: off)
    rel_tol: float = 0.0  # stop when the objective's relative change stays under it ...
    patience: int = 5  # ... for this many epochs
    early_stopping: int = 0  # stop when val metric has not improved for this many epochs (0: off)
    num_threads: int | None = 1  # small nets run fastest on one (docs/benchmarks.md); null: torch's
    eval_every: int = 1  # epochs between evaluations (train/val scalars, stopping rules)
    # epochs between histograms, and always the first (0: never); 5: each costs ~1.5 ms of a
    # 10 ms epoch on the default job, and 21 of them still draw TensorBoard's picture over time
    histogram_every: int = 5
    figures: bool = True
    progress: bool = True  # a progress bar when stderr is a terminal
    compile: bool = False  # torch.compile the graph-free gradients: minutes to compile, ~1x on CPU
    checkpoint_every: int = 10  # epochs between checkpoints, and always at the end (0: never)
    # false: a new run; true: continue the run in hydra.run.dir from its checkpoint;
    # auto: continue it if it has a checkpoint, else start afresh (a requeued cluster job)
    resume: Any = False


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    # Open groups: any keyword of the `_target_`, checked against its signature (ffn/targets.py)
    optimizer: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "torch.optim.Adam", "lr": 1e-3}
    )
    # stepped once per epoch
    schedule: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "torch.optim.lr_scheduler.ConstantLR"}
    )
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
MAX_THREADS_PER_CORE = 4  # more threads than this per core only contend


@functools.cache
def _schema() -> DictConfig:
    """The schema as a config, made once (8 ms a job otherwise): merge copies, never changes it."""
    return OmegaConf.structured(Config)


# The shapes of configs that passed check_schema (see _schema_shape), at most this many kept
_SCHEMA_PASSED: dict[Any, None] = {}
_SCHEMA_PASSED_MAX = 64


def _schema_shape(value: Any) -> Any:
    """The container with each bool, int and float replaced by its type: all that merging into
    the schema checks of a number (OmegaConf's Integer/Float/Boolean/String/Any nodes accept or
    refuse a bool, int or float by its type alone; a string by its text, so strings stay)."""
    if isinstance(value, dict):
        return (dict, tuple((key, _schema_shape(item)) for key, item in value.items()))
    if isinstance(value, list):
        return (list, tuple(_schema_shape(item) for item in value))
    if isinstance(value, bool | int | float):
        return type(value)
    return value


def check_schema(cfg: DictConfig) -> None:
    """Refuse keys the schema lacks, even those a `+key=value` override slipped past Hydra.

    A sweep's jobs differ in numbers: a config of a shape that already passed passes again
    without the merge (a copy of the schema: ~12 ms a job, most of `validate`)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    try:
        shape = _schema_shape(container)
        hash(shape)
    except TypeError:  # an unhashable leaf (none in a composed config): always merge
        shape = None
    if shape is not None and shape in _SCHEMA_PASSED:
        return
    try:
        OmegaConf.merge(_schema(), container)
    except (ConfigAttributeError, ConfigKeyError) as error:
        section = error.full_key.rpartition(".")[0]
        node = OmegaConf.select(_schema(), section) if section else None
        keys = sorted(node.keys()) if node is not None else sorted(Config.__dataclass_fields__)
        value = OmegaConf.select(cfg, error.full_key)
        raise ConfigError(error.full_key, value, "a known key: " + ", ".join(keys)) from None
    except ValidationError as error:
        raise ConfigError(error.full_key, error.value, error.msg.splitlines()[0]) from None
    if shape is not None:
        if len(_SCHEMA_PASSED) >= _SCHEMA_PASSED_MAX:
            _SCHEMA_PASSED.clear()
        _SCHEMA_PASSED[shape] = None


def validate(cfg: DictConfig | Any) -> None:
    """One pass over the config before anything is built: every group's own checks, then what
    spans groups. Raises ConfigError on the first bad value; loads no data, builds no model."""
    for check in CHECKS:
        check(cfg)


def check_dataset(cfg: DictConfig | Any) -> None:
    from ffn.data.load import check_config  # here and below: --help imports ffn.config alone

    check_config(OmegaConf.to_container(cfg.dataset, resolve=True))


def check_model(cfg: DictConfig | Any) -> None:
    from ffn.model import check_config

    check_config(cfg.model)


def check_penalty(cfg: DictConfig | Any) -> None:
    from ffn.penalties import Penalty

    Penalty(**OmegaConf.to_container(cfg.penalty, resolve=True))


def check_trainer(cfg: DictConfig | Any) -> None:
    """The loop's keys, and the training step they and model.backend choose."""
    from ffn.step import check_step

    check_trainer_loop(cfg)
    t = cfg.trainer
    check_step(t.step, cfg.model.backend, t.compile)


def check_trainer_loop(cfg: DictConfig | Any) -> None:
    """The loop's own keys (epochs, batches, tolerances, threads, seed, ...): no torch needed."""
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
    cores = os.cpu_count() or 1
    if t.num_threads is not None and not 1 <= t.num_threads <= MAX_THREADS_PER_CORE * cores:
        raise ConfigError(
            "trainer.num_threads",
            t.num_threads,
            f"null or an integer in [1, {MAX_THREADS_PER_CORE * cores}] (this machine has "
            f"{cores} cores)",
        )
    if not 0 <= t.seed <= MAX_SEED:
        raise ConfigError("trainer.seed", t.seed, f"an integer in [0, {MAX_SEED}]")
    if t.dist_backend not in BACKENDS:
        allowed = "auto (nccl on CUDA, gloo on CPU), gloo or nccl"
        raise ConfigError("trainer.dist_backend", t.dist_backend, allowed)


def check_before_torch(cfg: DictConfig | Any) -> None:
    """What `validate` checks that needs no torch, for the job to refuse before it imports torch
    (seconds): the loop's keys, the optimizer's and schedule's numbers against their ranges.
    Cheap, and run again by `validate`'s one pass, which decides everything else."""
    from ffn import targets

    check_trainer_loop(cfg)
    targets.check_given_ranges(cfg)


def check_optimizer_and_schedule(cfg: DictConfig | Any) -> None:
    """After the trainer: cosine's T_max is trainer.max_epochs."""
    from ffn import targets

    targets.check(cfg)


def check_lbfgs(cfg: DictConfig | Any) -> None:
    """optimizer=lbfgs: a smooth objective (no l1 part), the whole training set per step."""
    from hydra.utils import get_class
    from torch.optim import LBFGS

    if not issubclass(get_class(cfg.optimizer._target_), LBFGS):
        return
    from ffn.penalties import Penalty
    from ffn.step import check_smooth

    check_smooth(Penalty(**OmegaConf.to_container(cfg.penalty, resolve=True)))
    if not cfg.trainer.full_batch:
        raise ConfigError("trainer.full_batch", False, "true with optimizer=lbfgs")


def check_optimized_metric(cfg: DictConfig | Any) -> None:
    split, _, name = cfg.optimized_metric.partition("/")
    if split not in SPLITS or name not in METRICS:
        allowed = f"SPLIT/NAME with SPLIT in {', '.join(SPLITS)} and NAME in {', '.join(METRICS)}"
        raise ConfigError("optimized_metric", cfg.optimized_metric, allowed)


def check_validation_part(cfg: DictConfig | Any) -> None:
    """With dataset.val_fraction=0 there is no val part: refuse what would need one."""
    if cfg.dataset.val_fraction != 0 or cfg.dataset.get("val_path") is not None:
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


def _finite_at_least(key: str, value: float, low: float, strict: bool = False) -> None:
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ConfigError(key, value, f"a finite number {'>' if strict else '>='} {low:g}")


# In this order: the schema first (a key it lacks is no value to check), each group's own
# checks, then what spans groups.
CHECKS: tuple[Callable[[Any], None], ...] = (
    check_schema,
    check_dataset,
    check_model,
    check_penalty,
    check_trainer,
    check_optimizer_and_schedule,
    check_lbfgs,
    check_optimized_metric,
    check_validation_part,
)


__all__ = ["MISSING", "Config", "register_configs", "validate"]
