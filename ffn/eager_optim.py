"""torch.optim's own optimizers, run in eager mode without importing torch._dynamo.

torch.optim wraps `Optimizer.add_param_group`, `zero_grad`, `state_dict` and `load_state_dict`
in `torch._disable_dynamo`, and most optimizers' `step` in `_use_grad_for_differentiable`; both
import torch._dynamo on first call (about 1.5 s of a 5 s run on a small machine) only to mark
those methods as "never compile". A run that compiles nothing (`trainer.compile=false`) does not
need that mark: called outside torch.compile, each wrapper runs exactly the function it wraps.

`eager_class(cls)` is `cls` with those wrappers peeled off: a subclass, named like `cls`, whose
methods are the very functions torch's wrappers call (reached by `functools.wraps`'s
`__wrapped__`), with `step` run under the grad mode `_use_grad_for_differentiable` sets. So the
arithmetic, the state_dict (keys, tensors, param_groups), the step hooks, the profiler range and
what LR schedulers watch are torch.optim's own; only the import is gone. A wrapper of another
kind (a third-party optimizer's own override, LBFGS's `no_grad` step) is kept as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim import optimizer as torch_optimizer

WRAPPED_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def _wrapper_code(decorator: Callable | None) -> Any:
    """The code object every function `decorator` returns runs (functools.wraps copies the
    wrapped function's names onto it, so the code, not the name, says which wrapper it is)."""
    return None if decorator is None else decorator(lambda self: None).__code__


DISABLE_DYNAMO = _wrapper_code(getattr(torch, "_disable_dynamo", None))
USE_GRAD = _wrapper_code(getattr(torch_optimizer, "_use_grad_for_differentiable", None))


def _unwrapped(method: Any, wrapper_code: Any) -> Callable | None:
    """The function `method` wraps when `method` is torch's wrapper of that code, else None."""
    if wrapper_code is not None and getattr(method, "__code__", None) is wrapper_code:
        return getattr(method, "__wrapped__", None)
    return None


def _grad_mode_step(step: Callable) -> Callable:
    """`_use_grad_for_differentiable(step)` without its graph breaks (no-ops outside compile)."""

    @functools.wraps(step)
    def eager_step(self: Optimizer, *args: Any, **kwargs: Any) -> Any:
        previous = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return step(self, *args, **kwargs)
        finally:
            torch.set_grad_enabled(previous)

    return eager_step


@functools.cache
def eager_class(cls: type[Optimizer]) -> type[Optimizer]:
    """`cls` stepping and saving in eager mode without torch._dynamo (itself if nothing to peel)."""
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        return cls
    namespace: dict[str, Any] = {}
    for name in WRAPPED_METHODS:
        inner = _unwrapped(getattr(cls, name), DISABLE_DYNAMO)
        if inner is not None:
            namespace[name] = inner
    step = cls.step
    if getattr(step, "hooked", False):  # profile_hook_step: __init__ puts it back on the subclass
        step = step.__wrapped__
    inner = _unwrapped(step, USE_GRAD)
    if inner is not None:
        namespace["step"] = _grad_mode_step(inner)
    if not namespace:
        return cls
    # Named like cls (repr, logs, pickling find torch's class); `isinstance(opt, cls)` holds.
    namespace.update(__module__=cls.__module__, __qualname__=cls.__qualname__, __doc__=cls.__doc__)
    return type(cls.__name__, (cls,), namespace)


def dynamo_loaded() -> bool:
    """Whether torch._dynamo has been imported in this process."""
    import sys

    return "torch._dynamo" in sys.modules
