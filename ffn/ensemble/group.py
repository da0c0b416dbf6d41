"""A group of jobs trained as one ensemble: each member runs its own basic-launcher job, whole.

Every member is an ordinary Hydra job (Hydra's run_job, ffn.job.run_job, ffn.train.train: its
folder, .hydra/, run.log, checks, resume, logging, stopping rules, checkpoints, record), run in
its own greenlet. Its Run's minibatch step is the one thing taken from it (train.RUN_HOOKS): the
step switches to the group, which, once every member waits on a step, takes them all as batched
steps (`Stack`) to the epoch's end and switches back to each in turn, whose steps of that epoch
then return at once (one switch a member-epoch, not one a minibatch). A member whose stopping
rule fires simply stops asking; the others go on, and the group ends when every job has
returned. A member whose end figure the figure worker is drawing is held
(`figure_worker.WAITING`): the others go on meanwhile, so the worker draws while this process
ends the other members.

Between steps the stack is the members' parameters and optimizer state; at the end of each
epoch (and on a signal) it is written back into each member's own model and torch.optim object,
which its evaluation, checkpoints and stopping rules then read, exactly as a run alone would.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from greenlet import getcurrent, greenlet
from hydra.core.hydra_config import HydraConfig
from torch import Tensor

from ffn import figure_worker, interrupt, run_record, train
from ffn.ensemble.evaluation import MemberEvaluation, stacked_epoch_evaluation
from ffn.ensemble.optim import StackedOptimizer
from ffn.ensemble.stack import StackedNet, StackedPenalty
from ffn.errors import ConfigError
from ffn.heap import kept_heap
from ffn.step import flushed_subnormals, manual_gradients


class Stack:
    """The stacked parameters, optimizer state, penalty and training data of some members."""

    def __init__(self, runs: Sequence[train.Run]) -> None:
        self.runs = list(runs)
        self.models = [r.model for r in runs]
        self.member_params = [list(m.parameters()) for m in self.models]
        self.net = StackedNet(self.models)
        self.optimizers = [r.optimizer for r in runs]
        self.optimizer = StackedOptimizer(
            self.optimizers, self.member_params, self.net.parameters()
        )
        self.penalty = StackedPenalty([r.penalty for r in runs], self.net)
        self.task = runs[0].task
        data = [r.data for r in runs]
        self.shared = all(d is data[0] for d in data)  # one seed: the same tensors
        if self.shared:
            self.x, self.y = data[0].x_train, data[0].y_train
        else:  # each seed its own split (and, for generated sets, its own data): (E, n, ...)
            self.x = torch.stack([d.x_train for d in data])
            self.y = torch.stack([d.y_train for d in data])
        # Every member's rows in one (E n, ...) table, and each member's offset into it: a
        # minibatch is then one index_select (x[rows, idx]'s advanced indexing: 0.72 against 0.19 ms
        # a step of 32 digits members)
        self._table = self.x if self.shared else self.x.flatten(0, 1)
        self._labels = self.y if self.shared else self.y.flatten(0, 1)
        self._offsets = (  # (E, 1): member e's row i is row e n + i of the table
            None
            if self.shared
            else torch.arange(len(runs), device=self.x.device).unsqueeze(1) * self.x.shape[1]
        )
        self._val: tuple[Tensor, Tensor] | None = None  # stacked at the first evaluation
        self._orders: list[Tensor] = []  # the epoch's permutations, held: their stack is cached
        self._stacked_orders: Tensor | None = None
        self.dirty = False  # stepped since the members were last written
        self.lr_stale = False  # members' schedules may have stepped since lr was read

    def minibatch(self, orders: Sequence[Tensor | None], start: int, size: int):
        """Each member's rows order_e[start : start + size]: x (E, B, d), y (E, B[, M])."""
        if orders[0] is None:  # full batch
            if self.shared:
                e = len(self.runs)
                return self.x.expand(e, *self.x.shape), self.y.expand(e, *self.y.shape)
            return self.x, self.y
        if len(orders) != len(self._orders) or any(
            a is not b for a, b in zip(orders, self._orders, strict=True)
        ):
            stacked = torch.stack(list(orders))
            if self._offsets is not None:
                stacked = stacked + self._offsets
            self._orders, self._stacked_orders = list(orders), stacked
        idx = self._stacked_orders[:, start : start + size]
        rows = idx.reshape(-1)
        x = self._table.index_select(0, rows).view(*idx.shape, *self._table.shape[1:])
        y = self._labels.index_select(0, rows).view(*idx.shape, *self._labels.shape[1:])
        return x, y

    def step(self, orders: Sequence[Tensor | None], start: int, size: int) -> Tensor:
        """One train_step of every member: gradients, penalty, optimizer, prox. -> losses (E,)."""
        if self.lr_stale:
            self.optimizer.read_lr(self.optimizers)
            self.lr_stale = False
        x, y = self.minibatch(orders, start, size)
        with flushed_subnormals():
            losses = manual_gradients(self.net, x, y, self.task)
        self.penalty.add_gradient_()
        self.optimizer.step()
        self.penalty.proximal_step_(self.optimizer.lr)
        self.dirty = True
        return losses

    def _each(self, split: str) -> tuple[Tensor, Tensor]:
        """Every member's rows of a split: x (E, n, d), y (E, n[, M]) (expanded when shared)."""
        data = [r.data for r in self.runs]
        x, y = (getattr(d, f"x_{split}") for d in data), (getattr(d, f"y_{split}") for d in data)
        if self.shared:
            e, x0, y0 = len(self.runs), next(x), next(y)
            return x0.expand(e, *x0.shape), y0.expand(e, *y0.shape)
        return torch.stack(list(x)), torch.stack(list(y))

    def evaluate(self) -> list[MemberEvaluation]:
        """Each member's Run.epoch_evaluation() of the stack as it stands (written back)."""
        train_rows = self._each("train") if self.shared else (self.x, self.y)
        val = None
        if self.runs[0].data.n_val:  # one dataset config: every member has val, or none does
            if self._val is None:
                self._val = self._each("val")
            val = self._val
        penalties = [r.penalty for r in self.runs]
        return stacked_epoch_evaluation(self.net, self.task, penalties, train_rows, val)

    def write_back(self) -> None:
        """Into each member's model (values and gradients) and torch.optim object (state)."""
        if self.dirty:
            self.net.write_to(self.models)
            self.optimizer.write_to(self.optimizers, self.member_params)
            self.dirty, self.lr_stale = False, True


class Member:
    """One job of the group, in its own greenlet; its Run's step waits for the group's."""

    def __init__(self, group: Group, launch: Callable[[], Any]) -> None:
        self.group = group
        self.greenlet = greenlet(launch)
        self.run: train.Run | None = None
        self.stop: interrupt.StopFlag | None = None
        # (order, start, size, batch size) of the step it waits on
        self.request: tuple[Tensor | None, int, int, int] | None = None
        self.queued: deque[Tensor] = deque()  # its losses of the group's steps not yet taken
        self.context: tuple[Any, list[logging.Handler]] | None = None
        self.result: Any = None
        self.held = False  # waiting for the figure worker's answer (Group.hold)

    def adopt(self, run: train.Run) -> None:
        """Take the Run's minibatches and step; learn its stop flag when it starts training."""
        world = getattr(run, "world", None)
        if world is not None and world.size > 1:  # a member is one process's whole job
            allowed = "basic under torchrun (each rank trains a shard of one job)"
            raise ConfigError("hydra/launcher", "ensemble", allowed)
        self.run = run
        run.minibatches = self.minibatches
        run.step = self.step
        run.epoch_evaluation = self.epoch_evaluation
        train_alone = run.train

        def train_member(logger, stop):
            self.stop = stop
            result = train_alone(logger, _AfterQueued(stop, self.queued))
            run_record.sync_waiting()  # its last checkpoint on disk before its record says so
            return result

        run.train = train_member

    def minibatches(self, order: Tensor | None, batch: int, first: int):
        """Run.minibatches' minibatch bounds, without its rows: `Stack.minibatch` gathers every
        member's rows at once. Yields (index, None, None); `request` holds the bounds."""
        n = self.run.data.x_train.shape[0]
        for i, start in enumerate(range(0, n, batch)):
            if i < first:
                continue
            self.request = (order, start, min(batch, n - start), batch)
            yield i, None, None

    def step(self, model, optimizer, penalty, x, y, task) -> Tensor:
        """This member's loss of the group's next batched step (waiting for the group's steps
        to this epoch's end when none is queued)."""
        if not self.queued:
            if self.context is None:  # the job's Hydra config and log file, set up by now
                self.context = (HydraConfig.instance().cfg, list(logging.root.handlers))
            self.group.loop.switch(self)
        self.request = None  # taken: the loop waits on no step until its next one
        return self.queued.popleft()

    def epoch_evaluation(self) -> MemberEvaluation:
        """This member's share of its stack's one evaluation at this epoch's end."""
        return self.group.evaluation_of(self)

    def resume(self, value: Any) -> None:
        """Run the job until it waits on its next step, or returns (then `result` is set)."""
        if self.context is not None:
            # Hydra's config (a process-wide singleton, which ffn.job reads) and the root
            # logger's handlers (its run.log) are the last job's: make them this job's again.
            self.group.hydra.cfg, logging.root.handlers = self.context[0], list(self.context[1])
        self.request = None
        # A greenlet not yet started is falsy; its first switch must pass no argument (the
        # launch function takes none)
        out = self.greenlet.switch(value) if self.greenlet else self.greenlet.switch()
        if self.context is None and self.held:  # held before its first step: its job's config
            self.context = (HydraConfig.instance().cfg, list(logging.root.handlers))
        if self.greenlet.dead:
            self.result, self.request = out, None

    @property
    def waiting(self) -> bool:
        return not self.greenlet.dead and self.request is not None


class Group:
    """Jobs trained together: `run(launches)` returns what each launch returned, in order."""

    def __init__(self) -> None:
        self.members: list[Member] = []
        self.stacks: dict[tuple[Member, ...], Stack] = {}
        # each member's evaluation of the stack's state since its last step (Stack.evaluate)
        self.evaluations: dict[Member, MemberEvaluation] = {}
        self.loop = getcurrent()
        self.hydra = HydraConfig.instance()

    def _adopt(self, run: train.Run) -> None:
        for member in self.members:
            if member.greenlet is getcurrent():
                member.adopt(run)

    def run(self, launches: Sequence[Callable[[], Any]]) -> list[Any]:
        self.loop = getcurrent()
        self.members = [Member(self, launch) for launch in launches]
        handlers = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
        train.RUN_HOOKS.append(self._adopt)
        waiting_before, figure_worker.WAITING = figure_worker.WAITING, self.hold
        # every member's data is held by its Run anyway: the members of one seed load it once
        cache_size, train.DATASET_CACHE_SIZE = train.DATASET_CACHE_SIZE, len(launches)
        try:
            # The members' records as they start, and their checkpoints of one round (all at
            # the same epoch's end), are fsynced together once the round is done, not one after
            # another (run_record). A stack's tensors are E times a run's (32 digits members'
            # hidden layer: 19 MB), which glibc would map and fault in again every epoch: its
            # heap is kept (32-job digits sweep: 785k -> 156k page faults, system time 2.7-3.3
            # -> 1.5 s, the evaluation 40 -> 29 ms an epoch)
            with run_record.fsyncs_together(), kept_heap():
                for member in self.members:  # each job runs up to its first step (or its end)
                    member.resume(None)
                run_record.sync_waiting()  # every member's .hydra/ and metrics.json, at once
                while True:
                    waiting = [m for m in self.members if m.waiting]
                    held = [m for m in self.members if m.held]
                    if not waiting and not held:
                        break
                    for batch in _aligned(waiting):
                        for member, losses in zip(batch, self._steps(batch), strict=True):
                            member.queued.extend(losses.unbind(0))
                            member.resume(None)
                        run_record.sync_waiting()
                    for i, member in enumerate(held):  # nothing else to do: the first waits
                        member.resume(not waiting and i == 0)
                    run_record.sync_waiting()
        finally:
            figure_worker.WAITING = waiting_before
            train.DATASET_CACHE_SIZE = cache_size
            train.RUN_HOOKS.remove(self._adopt)
            for s, handler in handlers.items():  # each member restored its own, out of order
                signal.signal(s, handler)
        return [m.result for m in self.members]

    def hold(self) -> bool:
        """figure_worker.WAITING: the member waiting for a figure hands the loop back until the
        loop resumes it; True (the loop has nothing else to do): wait for the worker now."""
        member = next((m for m in self.members if m.greenlet is getcurrent()), None)
        if member is None:  # the loop itself (no member's job): nothing to hand back to
            return True
        member.held = True
        try:
            return bool(self.loop.switch(None))
        finally:
            member.held = False

    def _steps(self, batch: tuple[Member, ...]) -> Tensor:
        """The batch's minibatch steps from where its members wait to the epoch's end, or to
        the step after which a signal came: each member's losses, (E, steps)."""
        stack = self.stacks.get(batch)
        if stack is None:
            for key in [k for k in self.stacks if set(k) & set(batch)]:
                self.stacks.pop(key).write_back()
            stack = self.stacks[batch] = Stack([m.run for m in batch])
        for member in batch:
            self.evaluations.pop(member, None)
        orders = [m.request[0] for m in batch]
        _, start, size, stride = batch[0].request
        n = batch[0].run.data.x_train.shape[0]
        losses = [stack.step(orders, start, size)]
        while not interrupt.PENDING and start + size < n:
            start += size
            size = min(stride, n - start)
            losses.append(stack.step(orders, start, size))
        if interrupt.PENDING:  # a signal: every member checkpoints after this step
            for stack_ in self.stacks.values():
                stack_.write_back()
            for member in self.members:  # (a member sees it once it has taken its steps)
                if member.stop is not None and not member.stop:
                    member.stop.signum = interrupt.PENDING.signum
        else:  # the epoch's end: the members evaluate, log, checkpoint and decide whether to stop
            stack.write_back()
        return torch.stack(losses, dim=1)

    def evaluation_of(self, member: Member) -> MemberEvaluation:
        """The member's evaluation, its whole stack's evaluated at once at its first request."""
        if member not in self.evaluations:
            batch, stack = next((k, s) for k, s in self.stacks.items() if member in k)
            self.evaluations.update(zip(batch, stack.evaluate(), strict=True))
        return self.evaluations.pop(member)


def _aligned(waiting: list[Member]) -> list[tuple[Member, ...]]:
    """The waiting members by minibatch (start, size, batch size, full batch): each batch
    steps together."""
    by_position: dict[tuple[int, int, int, bool], list[Member]] = {}
    for member in waiting:
        order, start, size, stride = member.request
        by_position.setdefault((start, size, stride, order is None), []).append(member)
    return [tuple(members) for members in by_position.values()]


class _AfterQueued:
    """A member's stop flag as its loop sees it: set only once the member has taken the steps
    the group took for it (a signal during the group's steps of an epoch stops every member
    after the same step, the last one taken; its own handler may have set its flag first)."""

    def __init__(self, flag: interrupt.StopFlag, queued: deque[Tensor]) -> None:
        self.flag, self.queued = flag, queued

    def __bool__(self) -> bool:
        return bool(self.flag) and not self.queued

    @property
    def signum(self) -> int | None:
        return self.flag.signum

    @signum.setter
    def signum(self, value: int | None) -> None:
        self.flag.signum = value

    @property
    def exit_code(self) -> int:
        return self.flag.exit_code

    @property
    def name(self) -> str:
        return self.flag.name
