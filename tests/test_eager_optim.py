"""torch.optim's optimizers stepped without torch._dynamo (ffn/eager_optim.py, issue 11).

Every optimizer class torch.optim lists, eager and as torch builds it, from the same weights and
gradients through a cosine schedule: bit for bit the same weights, the same state_dict, and each
one's state_dict loads into the other. Whole runs never importing torch._dynamo is checked in
test_bookkeeping's child process
(`test_a_default_run_imports_no_dynamo_sklearn_scipy_or_pyplot`).
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from ffn import targets
from ffn.eager_optim import eager_class

# torch.optim's own list of optimizers; keywords where the defaults would not exercise the state
OPTIMIZERS = sorted(
    name
    for name in torch.optim.__all__
    if inspect.isclass(getattr(torch.optim, name))
    and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)
    and name not in ("Optimizer", "SparseAdam")  # SparseAdam: sparse gradients only
)
KEYWORDS = {
    "SGD": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "Adam": {"lr": 0.01, "amsgrad": True},
    "AdamW": {"lr": 0.01},
    "LBFGS": {"lr": 0.5, "history_size": 3},
}
VARIANTS = [(name, KEYWORDS.get(name, {})) for name in OPTIMIZERS] + [
    ("Adam", {"lr": 0.01, "foreach": False}),
    ("Adam", {"lr": 0.01, "fused": True}),
    ("SGD", {"lr": 0.1}),  # plain SGD: ffn.step's one-kernel path looks for this class
]


SHAPES = {"Muon": [(6, 4), (4, 3)]}  # Muon takes matrices only


def parameters(shapes=((6, 4), (4,))) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g).requires_grad_() for shape in shapes]


def train(optimizer_class: type, keywords: dict, steps: int = 4):
    params = parameters(*[SHAPES[n] for n in (optimizer_class.__name__,) if n in SHAPES])
    optimizer = optimizer_class(params, **keywords)
    schedule = CosineAnnealingLR(optimizer, T_max=steps)
    g = torch.Generator().manual_seed(1)
    targets = [torch.randn(p.shape, generator=g) for p in params]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = sum(((p - t) ** 2).sum() for p, t in zip(params, targets, strict=True))
        loss.backward()
        return loss

    for _ in range(steps):
        if isinstance(optimizer, torch.optim.LBFGS):
            optimizer.step(closure)
        else:
            closure()
            optimizer.step()
        schedule.step()
    return params, optimizer


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b or (a != a and b != b)  # NaN defaults compare unequal to themselves


@pytest.mark.parametrize(("name", "keywords"), VARIANTS, ids=lambda v: str(v))
def test_eager_steps_and_saves_bit_for_bit_like_torch(name: str, keywords: dict) -> None:
    cls = getattr(torch.optim, name)
    eager = eager_class(cls)
    assert eager is not cls and issubclass(eager, cls) and eager.__name__ == cls.__name__
    want_params, want = train(cls, keywords)
    got_params, got = train(eager, keywords)
    assert_same(got_params, want_params)
    assert_same(got.state_dict(), want.state_dict())
    assert repr(got) == repr(want)
    # a checkpoint of either kind resumes in the other
    _, fresh = train(cls, keywords, steps=1)
    fresh.load_state_dict(got.state_dict())
    assert_same(fresh.state_dict(), want.state_dict())
    _, fresh = train(eager, keywords, steps=1)
    fresh.load_state_dict(want.state_dict())
    assert_same(fresh.state_dict(), want.state_dict())


def test_step_hooks_and_the_schedules_step_check_still_run() -> None:
    params = parameters()
    optimizer = eager_class(torch.optim.Adam)(params, lr=0.1)
    calls = []
    optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *_: calls.append("post"))
    schedule = CosineAnnealingLR(optimizer, T_max=3)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert calls == ["pre", "post"]
    assert optimizer._opt_called  # what LRScheduler checks to warn of step() before step()
    schedule.step()
    assert optimizer.param_groups[0]["lr"] < 0.1


def test_build_is_eager_on_request_and_other_classes_pass_through() -> None:
    spec = {"_target_": "torch.optim.Adam", "lr": 0.01}
    assert type(targets.build("optimizer", spec, parameters())) is torch.optim.Adam
    eager = targets.build("optimizer", spec, parameters(), eager=True)
    assert type(eager) is eager_class(torch.optim.Adam)
    assert eager_class(CosineAnnealingLR) is CosineAnnealingLR  # not an optimizer: as it is
