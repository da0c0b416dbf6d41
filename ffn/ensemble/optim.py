"""torch.optim's SGD, Adam and AdamW over stacked members, each with its own hyperparameters.

The arithmetic is torch.optim's single-tensor step (torch/optim/sgd.py, adam.py), written once
over (E, ...) tensors with an (E, 1, ...) column per hyperparameter; tests/test_ensemble.py
checks it member by member against torch.optim itself. Each member's own torch.optim object
stays the home of its hyperparameters (its LR schedule steps it) and of its state as a
checkpoint stores it: `StackedOptimizer` reads both from it and `write_to` puts the state back,
in torch.optim's own format, so a member's checkpoint resumes on the basic launcher.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from ffn.eager_optim import eager_class
from ffn.ensemble.stack import MemberCopies, member_slices
from ffn.step import contiguous_gradient

# Flags a member's param group may hold with the batched step, and the values it handles.
SUPPORTED_FLAGS = {"maximize": False, "amsgrad": False}
# _target_ -> the state keys torch.optim keeps per parameter
BATCHED = {
    "torch.optim.SGD": ("momentum_buffer",),
    "torch.optim.Adam": ("step", "exp_avg", "exp_avg_sq"),
    "torch.optim.AdamW": ("step", "exp_avg", "exp_avg_sq"),
}


def target_name(optimizer: torch.optim.Optimizer) -> str | None:
    """Its `_target_` among BATCHED (torch's class or its eager twin, ffn.eager_optim), or None."""
    for target in BATCHED:
        cls = getattr(torch.optim, target.rpartition(".")[2])
        if type(optimizer) in (cls, eager_class(cls)):
            return target
    return None


def supports(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the batched step computes what this optimizer's own step would."""
    if target_name(optimizer) is None or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    return all(group.get(k, v) == v for k, v in SUPPORTED_FLAGS.items())


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps Adam's `step` in (torch.optim.optimizer._get_scalar_dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class StackedOptimizer:
    """One optimizer step for E members over stacked parameters [(E, ...)]."""

    def __init__(
        self,
        optimizers: Sequence[torch.optim.Optimizer],
        members_params: Sequence[Sequence[Tensor]],
        stacked: Sequence[Tensor],
    ) -> None:
        kind = {target_name(o) for o in optimizers}
        if len(kind) != 1 or not all(supports(o) for o in optimizers):
            raise ValueError(f"no batched step for {sorted(kind)}")
        self.kind = kind.pop()
        self.params = list(stacked)
        groups = [o.param_groups[0] for o in optimizers]
        self.nesterov = {bool(g.get("nesterov", False)) for g in groups}
        if len(self.nesterov) != 1:
            raise ValueError("an ensemble's members share optimizer.nesterov")
        self.nesterov = self.nesterov.pop()
        like = self.params[0]
        self.hyper = {
            key: torch.tensor(
                [float(g[key]) for g in groups], dtype=torch.float64, device=like.device
            )
            for key in ("weight_decay", "momentum", "dampening", "eps")
            if key in groups[0]
        }
        if "betas" in groups[0]:
            betas = torch.tensor([list(g["betas"]) for g in groups], dtype=torch.float64)
            self.hyper["beta1"], self.hyper["beta2"] = betas.to(like.device).unbind(1)
        self.weight_decay = bool(self.hyper["weight_decay"].any())
        self.some_without_momentum = "momentum" in self.hyper and not self.hyper["momentum"].all()
        self.decoupled = self.kind == "torch.optim.AdamW" or bool(
            groups[0].get("decoupled_weight_decay", False)
        )
        # Adam whose members all step with torch's fused kernel (optimizer=adam's fused: true):
        # the same kernel on each member's views of the stack (`_fused_adam`)
        self.fused = self.kind != "torch.optim.SGD" and all(g.get("fused") for g in groups)
        self._groups = groups
        self._steps_at_start: list[float] | None = None  # each member's, when fused
        self._copies = MemberCopies()  # of the state, into the members' (write_to)
        self.lr = self.read_lr(optimizers)
        self.state = self._gather_state(optimizers, members_params)
        self.all_started = bool(self.started.all())
        if self.fused:  # one step count a member, its parameters' entries all that one tensor
            # float32, as torch.optim keeps a fused step's count (the CUDA kernel reads it so)
            self.state["step"] = [self.state["step"][0].float()] * len(self.params)
            self._steps_at_start = self.state["step"][0].tolist()
            self._runs = self._fused_runs()

    def read_lr(self, optimizers: Sequence[torch.optim.Optimizer]) -> Tensor:
        """Each member's current lr (its schedule sets it), (E,) float64."""
        self.lr = torch.tensor(
            [float(o.param_groups[0]["lr"]) for o in optimizers],
            dtype=torch.float64,
            device=self.params[0].device,
        )
        self._columns = {}  # cast once per lr, not once per step
        if self._steps_at_start is not None:
            self._runs = self._fused_runs()
        return self.lr

    def _fused_runs(self) -> list[tuple[dict[str, float], list[tuple[int, slice]], list]]:
        """The members by the numbers their fused step takes (lr, betas, eps, weight decay) and
        their step count, one kernel call each: (numbers, its pieces (parameter, members), [the
        pieces' parameters, averages, squares, step counts]) each. A piece is one member's view,
        or, for a parameter whose kernel loop a member's size does not change (a whole number of
        the kernel's 64-byte blocks, one thread), neighbours' slice. All members step together,
        so members that agree on their step count at the start always do."""
        lr = self.lr.tolist()
        by_numbers: dict[tuple, tuple[dict[str, float], list[int]]] = {}
        for e, group in enumerate(self._groups):
            beta1, beta2 = group["betas"]
            numbers = {
                "lr": lr[e],
                "beta1": float(beta1),
                "beta2": float(beta2),
                "weight_decay": float(group["weight_decay"]),
                "eps": float(group["eps"]),
            }
            key = (tuple(numbers.values()), self._steps_at_start[e])
            by_numbers.setdefault(key, (numbers, []))[1].append(e)
        s, one_thread = self.state, torch.get_num_threads() == 1
        runs = []
        for numbers, members in by_numbers.values():
            neighbours = _ranges(members)
            pieces = []
            for i, p in enumerate(self.params):
                whole_blocks = p[0].numel() % (64 // p.element_size()) == 0
                if one_thread and whole_blocks:
                    pieces += [(i, rows) for rows in neighbours]
                else:
                    pieces += [(i, slice(e, e + 1)) for e in members]
            tensors = [
                [t[i][rows] for i, rows in pieces]
                for t in (self.params, s["exp_avg"], s["exp_avg_sq"])
            ]
            tensors.append([s["step"][0][rows.start] for _, rows in pieces])
            runs.append((numbers, pieces, tensors))
        return runs

    def _column(self, values: Tensor, like: Tensor) -> Tensor:
        """(E,) float64 -> (E, 1, ...) in `like`'s dtype (torch.optim casts its scalars so)."""
        return values.view(-1, *([1] * (like.ndim - 1))).to(device=like.device, dtype=like.dtype)

    def _constant(self, name: str, like: Tensor) -> Tensor:
        """A hyperparameter's column (`lr`, `1-beta1`, ...), cast once per shape and lr."""
        key = (name, like.ndim)
        column = self._columns.get(key)
        if column is None:
            h = self.hyper
            values = {
                "lr": lambda: self.lr,
                "decay": lambda: 1 - self.lr * h["weight_decay"],
                "1-beta1": lambda: 1 - h["beta1"],
                "1-beta2": lambda: 1 - h["beta2"],
                "1-dampening": lambda: 1 - h["dampening"],
                "uses momentum": lambda: (h["momentum"] != 0).double(),
            }.get(name, lambda: h[name])()
            column = self._columns[key] = self._column(values, like)
        return column

    # --- state: read from and written back to the members' torch.optim objects --------------

    def _gather_state(self, optimizers, members_params) -> dict[str, list[Tensor]]:
        """Stacked state per key; a member without state yet gets torch's lazy initial one."""
        keys = BATCHED[self.kind]
        self.started = torch.tensor(  # per member: whether it has taken a step already
            [bool(o.state.get(ps[0])) for o, ps in zip(optimizers, members_params, strict=True)]
        )
        if self.kind == "torch.optim.SGD" and not self.hyper["momentum"].any():
            return {}
        state: dict[str, list[Tensor]] = {k: [] for k in keys}
        for i, p in enumerate(self.params):
            for key in keys:
                slices = []
                for o, ps in zip(optimizers, members_params, strict=True):
                    own = o.state.get(ps[i], {}).get(key)
                    if key == "step":
                        slices.append(torch.tensor(0.0 if own is None else float(own)))
                    else:
                        slices.append(torch.zeros_like(p[0]) if own is None else own)
                stacked = torch.stack(slices).to(device=p.device)
                state[key].append(stacked.double() if key == "step" else stacked.to(p.dtype))
        return state

    @torch.no_grad()
    def write_to(self, optimizers, members_params) -> None:
        """Each member's torch.optim state := its slice, in torch.optim's own format."""
        started = self.started.tolist()  # read on the host once, not once a member
        keys = list(self.state)
        step_dtype = torch.float32 if self.fused else _scalar_dtype()
        # parameter by parameter, key by key (the counts in torch.optim's own dtype for them)
        stacked = [
            s.to(step_dtype) if key == "step" else s
            for tensors in zip(*self.state.values(), strict=True)
            for key, s in zip(keys, tensors, strict=True)
        ]
        values = member_slices(stacked, len(started))  # member by member, then as `stacked`
        entries, own, kept = [], [], []  # (member's state, parameter), its tensors, its values
        for e, (o, ps) in enumerate(zip(optimizers, members_params, strict=True)):
            o._opt_called = True  # what its first step() tells an LR schedule (it has stepped)
            if not self.state or not started[e] or o.param_groups[0].get("momentum") == 0:
                continue  # torch.optim keeps no state yet, or none for SGD without momentum
            kept.append(e)
            for p in ps:
                entries.append((o.state, p))
                entry = o.state.get(p, {})
                own.extend(entry.get(key) for key in keys)
        if len(kept) < len(started):
            values = [values[e * len(stacked) + j] for e in kept for j in range(len(stacked))]
        copies = self._copies.into(own, values)
        if all(map(operator.is_, copies, own)):  # written in place: the entries stand
            return
        copied = iter(copies)
        for state, p in entries:
            state[p] = {key: next(copied) for key in keys}

    # --- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> None:
        """Every member's torch.optim step, at once; p.grad of each stacked p is read."""
        if self.kind == "torch.optim.SGD":
            self._sgd()
        elif self.fused:
            self._fused_adam()
        else:
            self._adam(decoupled=self.decoupled)
        if not self.all_started:
            self.started.fill_(True)
            self.all_started = True

    def _sgd(self) -> None:
        momentum = self.state.get("momentum_buffer")
        for i, p in enumerate(self.params):
            grad = p.grad
            if self.weight_decay:
                grad = grad + self._constant("weight_decay", p) * p
            if momentum is not None:
                m, buf = self._constant("momentum", p), momentum[i]
                # torch: the first step's buffer is the gradient itself, then m buf + (1 - d) g
                update = buf * m + self._constant("1-dampening", p) * grad
                if not self.all_started:
                    update = torch.where(self._column(~self.started, p).bool(), grad, update)
                buf.copy_(update)
                step = grad + m * buf if self.nesterov else buf
                if self.some_without_momentum:  # those members' steps use no buffer
                    step = torch.where(self._constant("uses momentum", p).bool(), step, grad)
                grad = step
            p.sub_(self._constant("lr", p) * grad)

    def _fused_adam(self) -> None:
        """torch's fused Adam (AdamW) kernel, the one each member's own fused step calls
        (ffn.step.fused_adam_update_), a call for the members that share its numbers, on
        pieces of the stack whose every element the kernel computes as in the member's own
        tensor: each member's update is bitwise its own step's (`_fused_runs`; a slice across
        members in general is not: the kernel's vector blocks and scalar tail then fall
        elsewhere). 32 digits members, 4 learning rates: 0.28-0.42 ms a step, 0.44-0.56 with
        32 distinct ones; the stacked arithmetic of `_adam` 0.64-1.04 (one thread)."""
        steps = self.state["step"][0]
        steps.add_(1)  # counted first, then read by the kernel, as torch.optim's _fused_adam
        kernel = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
        grads = [contiguous_gradient(p) for p in self.params]  # (the kernel's flaw: see there)
        for numbers, pieces, (params, averages, squares, counts) in self._runs:
            kernel(
                params,
                [grads[i][rows] for i, rows in pieces],
                averages,
                squares,
                [],
                counts,
                amsgrad=False,
                maximize=False,
                grad_scale=None,
                found_inf=None,
                **numbers,
            )

    def _adam(self, decoupled: bool) -> None:
        h, s = self.hyper, self.state
        steps = s["step"][0] + 1  # every parameter of a member has taken the same steps
        bias1 = 1 - h["beta1"] ** steps
        bias2_sqrt = (1 - h["beta2"] ** steps) ** 0.5
        step_size = self.lr / bias1
        per_step = {}  # this step's columns, cast once per shape
        for i, p in enumerate(self.params):
            s["step"][i].copy_(steps)
            grad = p.grad
            if self.weight_decay:
                if decoupled:
                    p.mul_(self._constant("decay", p))
                else:
                    grad = grad + self._constant("weight_decay", p) * p
            if p.ndim not in per_step:
                per_step[p.ndim] = (self._column(bias2_sqrt, p), self._column(step_size, p))
            bias2_column, step_size_column = per_step[p.ndim]
            exp_avg, exp_avg_sq = s["exp_avg"][i], s["exp_avg_sq"][i]
            exp_avg.lerp_(grad, self._constant("1-beta1", p))
            exp_avg_sq.mul_(self._constant("beta2", p)).addcmul_(
                grad, grad * self._constant("1-beta2", p)
            )
            denom = (exp_avg_sq.sqrt() / bias2_column).add_(self._constant("eps", p))
            p.sub_(step_size_column * exp_avg / denom)


def _ranges(members: Sequence[int]) -> list[slice]:
    """Sorted member indices as slices of consecutive ones: [0, 1, 2, 5] -> [0:3, 5:6]."""
    ranges: list[slice] = []
    for e in members:
        if ranges and ranges[-1].stop == e:
            ranges[-1] = slice(ranges[-1].start, e + 1)
        else:
            ranges.append(slice(e, e + 1))
    return ranges
