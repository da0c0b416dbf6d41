"""Which jobs of a sweep train together: a group per key (torch-free; the launcher reads it).

Members of a group may differ in every numeric hyperparameter (lr, betas, momentum, dampening,
weight decay, penalty.lam and l1_ratio, schedule parameters, model.activation_param), in
trainer.seed and in the loop's
stopping rules and logging; everything that shapes the batched step must agree (GROUP_KEYS).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ffn.errors import ConfigError

# The optimizers the batched step computes (ffn.ensemble.optim), with the flags it handles
BATCHED_OPTIMIZERS = ("torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW")
UNBATCHED_FLAGS = ("amsgrad", "maximize")  # true: the job runs alone
# Keys that shape the batched step: jobs that agree on all of them form a group
GROUP_KEYS = (
    "dataset",  # the data and its split (each seed its own split of the same sizes)
    "model.hidden",
    "model.activation",  # its activation_param may differ
    "model.bias",
    "model.backend",
    "penalty.name",
    "penalty.method",
    "penalty.include_bias",
    "trainer.batch_size",
    "trainer.full_batch",
    "trainer.device",
    "trainer.dtype",
    "trainer.num_threads",
    "trainer.step",
)
# What no ensemble does: refused in one line (key -> (the value it needs, why))
REFUSED = {
    "model.backend": ("manual", "the ensemble batches the hand-written formulas"),
    "trainer.step": ("graph_free", "the ensemble batches the graph-free step"),
    "trainer.compile": (False, "the ensemble's step is not compiled"),
}


def check_config(cfg: DictConfig) -> None:
    """Refuse what hydra/launcher=ensemble cannot train, naming the key."""
    for key, (needed, why) in REFUSED.items():
        value = OmegaConf.select(cfg, key)
        if value != needed:
            shown = str(needed).lower() if isinstance(needed, bool) else needed
            allowed = f"{shown} with hydra/launcher=ensemble ({why}; hydra/launcher=basic runs it)"
            raise ConfigError(key, value, allowed)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def group_key(cfg: DictConfig) -> str | None:
    """The key jobs of one ensemble share; None for a job that trains alone."""
    optimizer = _plain(cfg.optimizer)
    if optimizer.get("_target_") not in BATCHED_OPTIMIZERS:
        return None
    if any(optimizer.get(flag) for flag in UNBATCHED_FLAGS):
        return None
    flags = sorted(
        (k, repr(v))
        for k, v in optimizer.items()
        if not _numeric(v) and v is not None  # lr, betas, momentum, ... may differ
    )
    return repr(([(key, _plain(OmegaConf.select(cfg, key))) for key in GROUP_KEYS], flags))


def _numeric(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_numeric(v) for v in value)
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def plan(configs: Sequence[DictConfig], max_members: int) -> list[list[int]]:
    """The jobs' indices by group, in the order of each group's first job; at most
    `max_members` a group; a job without a group (or alone in one) is a group of one."""
    if max_members < 1:
        raise ConfigError("hydra.launcher.max_members", max_members, "an integer >= 1")
    groups: dict[str, list[list[int]]] = {}
    order: list[list[int]] = []
    for i, cfg in enumerate(configs):
        key = group_key(cfg)
        if key is None:
            order.append([i])
            continue
        chunks = groups.setdefault(key, [])
        if not chunks or len(chunks[-1]) >= max_members:
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(i)
    return order
