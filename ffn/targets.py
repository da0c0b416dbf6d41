"""The groups built from `_target_` (optimizer, schedule): as open as the class they name.

Any keyword the target's `__init__` takes is accepted (`+optimizer.alpha=0.9` for RMSprop), and
checked against its signature: a key it lacks, or a value of another type than its default, is
refused in one line naming the key and the accepted ones. Ranges torch would take silently or
fail on late (lr > 0, betas in [0, 1), step_size >= 1, ...) are checked by name, whatever the
target, and `check` then builds the object once on a throwaway parameter, so that what torch
itself refuses is refused before any data is loaded.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ffn.errors import ConfigError

# What the runner passes itself, by group: the object a target is built around.
RUNTIME_ARGUMENT = {"optimizer": "params", "schedule": "optimizer"}


def _finite(low: float, strict: bool) -> tuple[Callable[[Any], bool], str]:
    ok = lambda v: math.isfinite(v) and (v > low if strict else v >= low)  # noqa: E731
    return ok, f"a finite number {'>' if strict else '>='} {low:g}"


# key -> (check, what is allowed), for the keys torch.optim and lr_scheduler share.
RANGES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "optimizer": {
        "lr": _finite(0.0, strict=True),
        # momentum 1 never forgets a gradient (the steps grow without bound); dampening a share
        "momentum": (lambda v: math.isfinite(v) and 0 <= v < 1, "a number in [0, 1)"),
        "dampening": (lambda v: math.isfinite(v) and 0 <= v <= 1, "a number in [0, 1]"),
        "eps": _finite(0.0, strict=True),
        "weight_decay": _finite(0.0, strict=False),
        "alpha": _finite(0.0, strict=False),
        "betas": (
            lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
            "two numbers in [0, 1)",
        ),
    },
    "schedule": {  # after trainer: cosine's T_max is trainer.max_epochs
        "step_size": (lambda v: v >= 1, "an integer >= 1"),
        "T_max": (lambda v: v >= 1, "an integer >= 1"),
        "total_iters": (lambda v: v >= 0, "an integer >= 0"),
        "gamma": _finite(0.0, strict=True),
        "factor": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
        "eta_min": _finite(0.0, strict=False),
        "decay": _finite(0.0, strict=False),
        "power": _finite(0.0, strict=False),
    },
}


def arguments(node: DictConfig | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(`_target_`, the keyword arguments that are set): null means the target's own default."""
    spec = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    spec = {k: v for k, v in spec.items() if v is not None}
    return spec.pop("_target_", None), spec


def target_class(group: str, target: Any) -> type:
    """The class `_target_` names, or a ConfigError."""
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{group}._target_", target, "a dotted class path, e.g. torch.optim.SGD")
    try:
        return get_class(target)
    except Exception as error:  # ImportError, AttributeError, ValueError: Hydra wraps them all
        cause = error.__cause__ or error
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ConfigError(f"{group}._target_", target, f"an importable class ({detail})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_problem(value: Any, parameter: inspect.Parameter) -> str | None:
    """What `value` should be, judged by the signature's default; None when it fits."""
    default = parameter.default
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int) and "float" in str(parameter.annotation):  # LBFGS: lr = 1
        return None if _is_number(value) else "a number"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        return None if _is_number(value) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, tuple) and all(_is_number(d) for d in default):
        fits = isinstance(value, (list, tuple)) and len(value) == len(default)
        fits = fits and all(_is_number(v) for v in value)
        return None if fits else f"a list of {len(default)} numbers"
    return None  # None or no default: the target's own check decides


def check_keywords(group: str, target: str, cls: type, kwargs: dict[str, Any]) -> None:
    """Every key a keyword of `cls` (unless it takes **kwargs), of its default's type."""
    parameters = dict(inspect.signature(cls).parameters)
    parameters.pop(RUNTIME_ARGUMENT[group], None)
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = {
        name: p
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    for key, value in kwargs.items():
        if key not in named:
            if open_ended:
                continue
            allowed = f"a keyword of {target}: " + ", ".join(named)
            # a key the group's file set for its own class (adam.yaml's fused) stays when only
            # _target_ changes: say how to drop it
            allowed += f"; ~{group}.{key} drops it"
            raise ConfigError(f"{group}.{key}", value, allowed)
        problem = _type_problem(value, named[key])
        if problem is not None:
            raise ConfigError(f"{group}.{key}", value, problem)


def check_ranges(group: str, kwargs: dict[str, Any]) -> None:
    for key, (ok, allowed) in RANGES[group].items():
        if key not in kwargs:
            continue
        try:
            fits = bool(ok(kwargs[key]))
        except TypeError:  # text where a number belongs, a number where a list does
            fits = False
        if not fits:
            raise ConfigError(f"{group}.{key}", kwargs[key], allowed)


def check_given_ranges(cfg: DictConfig) -> None:
    """check_ranges over the numbers each group sets, before its target is imported: what is
    not a number is left to `check`, which first holds it against the target's signature."""
    for group in RANGES:
        _, kwargs = arguments(cfg[group])
        numbers = {k: v for k, v in kwargs.items() if _is_number(v) or _are_numbers(v)}
        check_ranges(group, numbers)


def _are_numbers(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)


def build(group: str, node: DictConfig | dict[str, Any], runtime: Any, eager: bool = False) -> Any:
    """`_target_(runtime, **keys)`: the optimizer around the parameters, the schedule around
    the optimizer. Refusals, torch's own included, become one ConfigError.

    `eager`: a torch.optim optimizer that never imports torch._dynamo (ffn/eager_optim.py), for
    runs that compile nothing."""
    target, kwargs = arguments(node)
    cls = target_class(group, target)
    if eager:
        from ffn.eager_optim import eager_class

        cls = eager_class(cls)
    check_keywords(group, target, cls, kwargs)
    check_ranges(group, kwargs)
    try:
        return cls(runtime, **kwargs)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        shown = ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "its defaults"
        raise ConfigError(group, f"{target}({shown})", f"what {target} accepts: {detail}") from None


def check(cfg: DictConfig) -> None:
    """`validate`'s pass over optimizer and schedule: each built once on a throwaway parameter."""
    import torch  # here: `python run.py --help` imports ffn.config without torch

    # eager: a throwaway optimizer, built without importing torch._dynamo
    optimizer = build("optimizer", cfg.optimizer, [torch.zeros(1, requires_grad=True)], eager=True)
    _, schedule = arguments(cfg.schedule)
    lr = optimizer.param_groups[0]["lr"]
    if schedule.get("eta_min", 0) > lr:  # an "annealing" that raises the step size
        raise ConfigError("schedule.eta_min", schedule["eta_min"], f"a number <= the lr ({lr:g})")
    build("schedule", cfg.schedule, optimizer)
