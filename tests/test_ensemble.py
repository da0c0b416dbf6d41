"""The ensemble's batched mathematics, member by member against the single run's (float64).

Gradients: ffn.step.manual_gradients on a StackedNet (each member its own minibatch) against
manual_gradients and autograd on each member alone. Optimizers: StackedOptimizer against each
member's own torch.optim object, with the penalty's gradient and proximal step in between. The
epoch's evaluation: stacked_epoch_evaluation against each member's epoch_scalars and
layer_diagnostics.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from ffn import run_record
from ffn.activations import ACTIVATIONS
from ffn.ensemble.evaluation import (
    CHUNK_BYTES,
    _joined,
    _members_per_chunk,
    stacked_epoch_evaluation,
)
from ffn.ensemble.optim import StackedOptimizer
from ffn.ensemble.stack import StackedNet, StackedPenalty
from ffn.metrics import epoch_scalars
from ffn.model import FeedForward
from ffn.penalties import Penalty
from ffn.run_logger import layer_diagnostics
from ffn.step import autograd_gradients, manual_gradients

E, N, D, M = 3, 7, 4, 3
TOL = dict(rtol=1e-10, atol=1e-12)


def members(activation: str, hidden=(5, 4), bias: bool = True) -> list[FeedForward]:
    return [
        FeedForward(
            D, list(hidden), M, activation=activation, bias=bias, seed=s, dtype=torch.float64
        )
        for s in range(E)
    ]


def member_data(task: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(E, N, D, generator=g, dtype=torch.float64)
    if task == "classification":
        return x, torch.randint(0, M, (E, N), generator=g)
    return x, torch.randn(E, N, M, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_stacked_gradients_equal_each_member_alone(name: str, task: str, one_thread) -> None:
    models = members(name)
    x, y = member_data(task)
    net = StackedNet(models)
    losses = manual_gradients(net, x, y, task)
    for e, model in enumerate(models):
        loss = manual_gradients(model, x[e], y[e], task)
        torch.testing.assert_close(losses[e], loss, **TOL)
        twin = model.with_backend("autograd")
        autograd_gradients(twin, x[e], y[e], task)
        for p, q, s in zip(model.parameters(), twin.parameters(), net.parameters(), strict=True):
            torch.testing.assert_close(s.grad[e], p.grad, **TOL)
            torch.testing.assert_close(s.grad[e], q.grad, **TOL)


@pytest.mark.parametrize("name", ["leaky_relu", "elu"])
def test_stacked_gradients_with_each_members_activation_param(name: str, one_thread) -> None:
    params = [0.01, 0.3, 1.5]
    models = [
        FeedForward(D, [5, 4], M, activation=name, activation_param=a, seed=s, dtype=torch.float64)
        for s, a in enumerate(params)
    ]
    assert_stacked_gradients_are_each_members(models)


def test_stacked_gradients_without_bias_and_single_neuron(one_thread) -> None:
    for hidden, bias in (((5,), False), ((), True)):
        assert_stacked_gradients_are_each_members(members("tanh", hidden, bias))


def assert_stacked_gradients_are_each_members(models: list[FeedForward]) -> None:
    """The stacked net's hand-written gradients, slice e: member e's own (classification)."""
    x, y = member_data("classification")
    net = StackedNet(models)
    manual_gradients(net, x, y, "classification")
    for e, model in enumerate(models):
        manual_gradients(model, x[e], y[e], "classification")
        for p, s in zip(model.parameters(), net.parameters(), strict=True):
            torch.testing.assert_close(s.grad[e], p.grad, **TOL)


EVALUATION_CASES = [  # activation, task, penalty, method, lams, activation_params
    ("relu", "classification", "l1", "proximal", [1e-3, 0.0, 1e-2], None),
    ("tanh", "regression", "l2", "proximal", [0.0, 1e-2, 1e-1], None),
    ("sigmoid", "classification", "elastic_net", "subgradient", [1e-2, 1e-3, 0.0], None),
    ("leaky_relu", "regression", "none", "proximal", [0.0] * E, [0.01, 0.3, 1.5]),
    ("gelu", "classification", "none", "proximal", [0.0] * E, None),
]


def _evaluation_members(case, hidden=(5, 4)) -> tuple[list[FeedForward], list[Penalty]]:
    """An EVALUATION_CASES case's E float64 members (seed s, its activation_param) and their
    penalties."""
    name, _, penalty, method, lams, params = case
    models = [
        FeedForward(
            D,
            list(hidden),
            M,
            activation=name,
            activation_param=None if params is None else params[s],
            seed=s,
            dtype=torch.float64,
        )
        for s in range(E)
    ]
    return models, [Penalty(name=penalty, lam=lam, method=method) for lam in lams]


@pytest.mark.parametrize("per_chunk", [None, 1, 2, 4], ids=lambda c: f"{c}-a-chunk")
@pytest.mark.parametrize("case", EVALUATION_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_stacked_epoch_evaluation_equals_each_members_own(case, per_chunk, one_thread) -> None:
    """Scalars, layer diagnostics and pre-activations, val included, after a step (gradients);
    one member diverged (inf weights) stays its own and leaves the others finite. The forward
    in one chunk (CHUNK_BYTES) or a few members a chunk: 1, 2 and 1 (E = 3), one of 4 > E."""
    task = case[1]
    models, penalties = _evaluation_members(case)
    x, y = member_data(task)
    val_x, val_y = (t.flip(1)[:, :5] for t in (x, y))
    with torch.no_grad():
        models[1].layers[0].weight[0, 0] = 0.0  # a zero: sparsity
        models[2].layers[1].weight[0, 0] = float("inf")  # diverged
    net = StackedNet(models)
    manual_gradients(net, x, y, task)
    net.write_to(models)
    # a member's widest pre-activation on the train split: N rows x 5 units, float64
    chunk_bytes = CHUNK_BYTES if per_chunk is None else per_chunk * N * 5 * 8
    assert per_chunk is None or _members_per_chunk(net, x, chunk_bytes) == per_chunk
    stacked = stacked_epoch_evaluation(net, task, penalties, (x, y), (val_x, val_y), chunk_bytes)
    for e, (model, pen) in enumerate(zip(models, penalties, strict=True)):
        scalars, pre = epoch_scalars(
            model, task, pen, pen.parameters(model), (x[e], y[e]), (val_x[e], val_y[e])
        )
        layers = layer_diagnostics(model, pre)
        mine_scalars, mine_layers, mine_pre = stacked[e]
        for theirs, mine in ((scalars, mine_scalars), (layers, mine_layers)):
            assert list(mine) == list(theirs)
            expected = torch.stack([v.double() for v in theirs.values()])
            torch.testing.assert_close(
                torch.tensor(list(mine.values()), dtype=torch.float64),
                expected,
                **TOL,
                equal_nan=True,
            )
        for z, theirs in zip(mine_pre, pre, strict=True):
            torch.testing.assert_close(z, theirs, **TOL, equal_nan=True)
    assert all(torch.tensor(list(stacked[0][0].values())).isfinite())


# Activations whose kernels give an element the same bits wherever it falls in a vector loop
# (max, select, a product). torch.sigmoid's, gelu's and softplus' vectorised kernels do not:
# sigmoid of a column-major (3, 70, 5) stack and of its first member alone differ in a last
# bit, so a chunk's values there may differ from the whole stack's as the whole stack's differ
# from a member's own (test above: within 1e-10 of each member's own either way).
EXACT_ACTIVATIONS = ("relu", "leaky_relu", "identity")


@pytest.mark.parametrize("per_chunk", [1, 2, 4], ids=lambda c: f"{c}-a-chunk")
@pytest.mark.parametrize("shared", [True, False], ids=["one-seed", "each-seed"])
@pytest.mark.parametrize("transposed", [True, False], ids=["column-major-out", "row-major-out"])
@pytest.mark.parametrize("case", EVALUATION_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_a_chunked_evaluation_is_the_whole_stacks(
    case, transposed: bool, shared: bool, per_chunk: int, monkeypatch, one_thread
) -> None:
    """The forward a few members at a time (E = 3: chunks of 1, of 2 and 1, one of 4 > E) gives
    every member the values and pre-activations of the stack's forward in one chunk: bitwise
    where the activation is exact; the output's layout either way (70 rows: the transposed
    product's where MKL_SLOW_PATHS), a shared split's expanded rows or each member's own."""
    from ffn import functions

    monkeypatch.setattr(functions, "MKL_SLOW_PATHS", transposed)
    name, task = case[:2]
    hidden, rows = [5, 4], 70
    models, penalties = _evaluation_members(case, hidden)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1 if shared else E, rows, D, generator=g, dtype=torch.float64)
    if task == "classification":
        y = torch.randint(0, M, (x.shape[0], rows), generator=g)
    else:
        y = torch.randn(x.shape[0], rows, M, generator=g, dtype=torch.float64)
    if shared:  # one seed: the group's expanded rows
        x, y = x.expand(E, *x.shape[1:]), y.expand(E, *y.shape[1:])
    val = x[:, 10:40], y[:, 10:40]  # fewer rows than train: more members a chunk
    net = StackedNet(models)
    manual_gradients(net, x, y, task)
    whole = stacked_epoch_evaluation(net, task, penalties, (x, y), val)
    # a member's widest pre-activation on the train split: rows x 5 units, float64
    chunk_bytes = per_chunk * rows * max(hidden) * 8
    assert _members_per_chunk(net, x, chunk_bytes) == per_chunk
    chunked = stacked_epoch_evaluation(net, task, penalties, (x, y), val, chunk_bytes)
    exact = name in EXACT_ACTIVATIONS
    assert len(chunked) == E
    for mine, theirs in zip(chunked, whole, strict=True):
        for values, their_values in zip(mine[:2], theirs[:2], strict=True):
            assert list(values) == list(their_values)
            if exact:
                assert values == their_values
            else:
                torch.testing.assert_close(
                    torch.tensor(list(values.values())),
                    torch.tensor(list(their_values.values())),
                    **TOL,
                )
        assert len(mine[2]) == len(hidden)
        for z, their_z in zip(mine[2], theirs[2], strict=True):
            if exact:
                assert torch.equal(z, their_z)
            else:
                torch.testing.assert_close(z, their_z, **TOL)


def test_chunks_are_for_the_cpu() -> None:
    """A chunk a member on the CPU (rows x widest layer x itemsize bytes), all members in one
    elsewhere (the meta device stands for a GPU)."""
    net = StackedNet(members("relu"))
    x = torch.zeros(E, N, D, dtype=torch.float64)
    assert _members_per_chunk(net, x, N * 5 * 8) == 1
    assert _members_per_chunk(net, x, N * 5 * 8 - 1) == 1  # at least one
    assert _members_per_chunk(net, x.to("meta"), N * 5 * 8) == E


@pytest.mark.parametrize("column_major", [True, False], ids=["column-major", "row-major"])
def test_chunks_outputs_are_joined_in_their_layout(column_major: bool) -> None:
    """A transposed product's column-major logits stay so once joined (the class path reads
    them in place), a row-major output row-major."""
    g = torch.Generator().manual_seed(3)
    whole = torch.randn(5, 3, 70, generator=g).mT if column_major else torch.randn(5, 70, 3)
    joined = _joined([whole[:2], whole[2:4], whole[4:]])
    assert torch.equal(joined, whole)
    assert joined.stride() == whole.stride()


OPTIMIZERS = [
    (torch.optim.SGD, [{"lr": 0.1}, {"lr": 0.03}, {"lr": 0.3}]),
    (
        torch.optim.SGD,
        [
            {"lr": 0.1, "momentum": 0.9},
            {"lr": 0.05, "momentum": 0.5, "dampening": 0.3, "weight_decay": 1e-2},
            {"lr": 0.2, "momentum": 0.0},
        ],
    ),
    (
        torch.optim.SGD,
        [{"lr": 0.1, "momentum": 0.9, "nesterov": True}] * 2
        + [{"lr": 0.01, "momentum": 0.7, "nesterov": True}],
    ),
    (
        torch.optim.Adam,
        [
            {"lr": 1e-2},
            {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6},
            {"lr": 1e-2, "weight_decay": 0.1},
        ],
    ),
    (
        torch.optim.AdamW,
        [{"lr": 1e-2}, {"lr": 3e-2, "weight_decay": 0.5}, {"lr": 1e-3, "betas": (0.5, 0.9)}],
    ),
    # fused (optimizer=adam's default): torch's kernel, a call for the members that agree
    (
        torch.optim.Adam,
        [{"lr": 1e-2, "fused": True}] * 2
        + [{"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "fused": True}],
    ),
    (
        torch.optim.AdamW,
        [
            {"lr": 1e-2, "fused": True},
            {"lr": 3e-2, "weight_decay": 0.5, "fused": True},
            {"lr": 3e-2, "weight_decay": 0.5, "fused": True},
        ],
    ),
    (torch.optim.Adam, [{"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}] * 3),
    (torch.optim.Adam, [{"lr": lr, "fused": True} for lr in (1e-2, 3e-3, 1e-3)]),
]
PENALTY_CASES = [
    ("none", "proximal", [0.0] * E),
    ("l2", "proximal", [0.0, 1e-2, 1e-1]),
    ("l1", "proximal", [1e-3, 0.0, 1e-2]),
    ("elastic_net", "subgradient", [1e-2, 1e-3, 0.0]),
]


@pytest.mark.parametrize("penalty", PENALTY_CASES, ids=[p[0] + "-" + p[1] for p in PENALTY_CASES])
@pytest.mark.parametrize(
    "case", OPTIMIZERS, ids=lambda c: str(c) if not isinstance(c, tuple) else None
)
def test_stacked_optimizer_steps_equal_torch_optim_per_member(case, penalty, one_thread) -> None:
    """Five steps with a schedule's lr change in between and a write-back midway (a checkpoint)."""
    cls, kwargs = case
    name, method, lams = penalty
    models, twins = members("relu"), members("relu")
    optimizers = [cls(m.parameters(), **kw) for m, kw in zip(models, kwargs, strict=True)]
    reference = [cls(m.parameters(), **kw) for m, kw in zip(twins, kwargs, strict=True)]
    penalties = [Penalty(name=name, lam=lam, method=method) for lam in lams]
    x, y = member_data("classification")
    params = [list(m.parameters()) for m in models]
    net = StackedNet(models)
    stacked = StackedOptimizer(optimizers, params, net.parameters())
    penalty = StackedPenalty(penalties, net)
    for k in range(5):
        if k == 3:  # a checkpoint and a new lr: write back, change lr, stack again
            net.write_to(models)
            stacked.write_to(optimizers, params)
            for o, r in zip(optimizers, reference, strict=True):
                for group in (*o.param_groups, *r.param_groups):
                    group["lr"] *= 0.5
            net = StackedNet(models)
            stacked = StackedOptimizer(optimizers, params, net.parameters())
            penalty = StackedPenalty(penalties, net)
        manual_gradients(net, x, y, "classification")
        penalty.add_gradient_()
        stacked.step()
        penalty.proximal_step_(stacked.lr)
        for e, (twin, opt, pen) in enumerate(zip(twins, reference, penalties, strict=True)):
            manual_gradients(twin, x[e], y[e], "classification")
            penalised = pen.parameters(twin)
            pen.add_gradient_(penalised)
            opt.step()
            pen.proximal_step_(opt, penalised)
    net.write_to(models)
    stacked.write_to(optimizers, params)
    for model, twin, opt, ref in zip(models, twins, optimizers, reference, strict=True):
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p, q, **TOL)
        mine, theirs = opt.state_dict()["state"], ref.state_dict()["state"]
        assert mine.keys() == theirs.keys()
        for key, state in theirs.items():
            assert mine[key].keys() == state.keys()
            for k, v in state.items():
                assert mine[key][k].dtype == v.dtype, k
                torch.testing.assert_close(mine[key][k], v, **TOL)


@pytest.mark.parametrize("case", [OPTIMIZERS[1], OPTIMIZERS[3], OPTIMIZERS[5]], ids=str)
def test_a_write_back_copies_into_the_members_own_tensors(case) -> None:
    """From its second write-back on, a stack writes into the tensors its last one left in the
    members (their parameters, gradients and torch.optim state: the same objects), bitwise its
    slices; a member's tensor that does not fit (another shape, a strided layout) is replaced."""
    cls, kwargs = case
    models = members("relu")
    optimizers = [cls(m.parameters(), **kw) for m, kw in zip(models, kwargs, strict=True)]
    params = [list(m.parameters()) for m in models]
    x, y = member_data("classification")
    net = StackedNet(models)
    stacked = StackedOptimizer(optimizers, params, net.parameters())

    def step_and_write() -> list[torch.Tensor]:
        manual_gradients(net, x, y, "classification")
        stacked.step()
        net.write_to(models)
        stacked.write_to(optimizers, params)
        tensors = []
        for e, (o, ps) in enumerate(zip(optimizers, params, strict=True)):
            for i, p in enumerate(ps):
                s = net.parameters()[i]
                assert torch.equal(p, s[e]) and torch.equal(p.grad, s.grad[e])
                tensors += [p, p.grad]
                for key, value in o.state.get(p, {}).items():
                    assert torch.equal(value, stacked.state[key][i][e].to(value.dtype)), key
                    tensors.append(value)
        return tensors

    first = step_and_write()
    assert any(o.state for o in optimizers)  # (SGD with momentum 0 keeps none)
    second = step_and_write()
    assert len(first) == len(second) and all(a is b for a, b in zip(first, second, strict=True))
    weight = params[0][0]
    weight.grad = strided = torch.zeros(weight.shape[::-1], dtype=weight.dtype).mT
    state = optimizers[0].state[weight]
    key = next(iter(k for k in state if k != "step"))
    state[key] = other = torch.zeros(2, 2, dtype=state[key].dtype)  # another shape
    step_and_write()
    assert weight.grad is not strided and weight.grad.is_contiguous()
    fresh = optimizers[0].state[weight][key]
    assert fresh is not other and torch.equal(fresh, stacked.state[key][0][0])


def test_checkpoints_of_a_round_are_fsynced_together_and_renamed_in_order(tmp_path) -> None:
    """Inside fsyncs_together a waiting write leaves the old file in place until the round is
    synced; then each file, and what its before_rename moved aside, is as written alone."""
    folders = [tmp_path / str(i) for i in range(3)]
    for folder in folders:
        folder.mkdir()
        (folder / "last.pt").write_bytes(b"old")

    def save(folder, data):
        def keep_previous():
            (folder / "last.pt").replace(folder / "previous.pt")

        run_record.write_atomic(
            folder / "last.pt", lambda f: f.write(data), before_rename=keep_previous, may_wait=True
        )

    with run_record.fsyncs_together():
        for folder in folders:
            save(folder, b"new")
        save(folders[0], b"newer")  # a second save of one file in the same round
        assert all((f / "last.pt").read_bytes() == b"old" for f in folders)
        run_record.sync_waiting()
        assert (folders[0] / "last.pt").read_bytes() == b"newer"
        assert (folders[0] / "previous.pt").read_bytes() == b"new"
        save(folders[1], b"newer")  # waits for the end of the block
    assert (folders[1] / "last.pt").read_bytes() == b"newer"
    assert (folders[2] / "last.pt").read_bytes() == b"new"
    assert (folders[2] / "previous.pt").read_bytes() == b"old"
    assert not list(tmp_path.rglob("*.tmp"))
    save(folders[2], b"alone")  # outside: written at once
    assert (folders[2] / "last.pt").read_bytes() == b"alone"


def test_a_rounds_renames_keep_their_order_within_each_runs_folder_tree(tmp_path) -> None:
    """sync_waiting renames a folder tree's files in the order written (a run's metrics.json
    after its .hydra/ and checkpoint, a checkpoint's two saves); other trees side by side."""
    runs = [tmp_path / "sweep" / str(i) for i in range(2)]
    writes = [
        runs[0] / ".hydra" / "config.yaml",
        runs[1] / ".hydra" / "config.yaml",
        runs[0] / "metrics.json",
        runs[1] / "checkpoints" / "last.pt",
        runs[0] / "checkpoints" / "last.pt",
        runs[1] / "checkpoints" / "last.pt",
        tmp_path / "elsewhere" / "last.pt",
    ]
    waiting = [(Path(f"{path}.tmp"), path, None) for path in writes]
    trees = run_record._by_folder_tree(waiting)
    assert [[w[1] for w in tree] for tree in trees] == [
        [writes[0], writes[2], writes[4]],  # run 0's: its folder's metrics.json waits too
        [writes[1]],  # run 1's .hydra/ and checkpoints/ (nothing of its own folder waits)
        [writes[3], writes[5]],
        [writes[6]],
    ]
    relative = Path(os.path.relpath(runs[0], Path.cwd())) / "checkpoints" / "last.pt"
    mixed = run_record._by_folder_tree([*waiting[:3], (Path("x.tmp"), relative, None)])
    assert [w[1] for w in mixed[0]] == [writes[0], writes[2], relative]  # one tree: abspath


def test_a_rounds_fsyncs_run_on_one_kept_pool(tmp_path, monkeypatch) -> None:
    """The rounds' fsyncs run on threads kept from one round to the next (run_record._POOL), a
    lone file's on the caller's; a forked child makes its own pool; an fsync's error is raised."""
    import threading

    files = []
    for i in range(3):
        files.append(tmp_path / str(i))
        files[-1].write_bytes(b"x")
    threads = set()

    def fsync(path):
        threads.add(threading.current_thread().name)
        run_record._fsync_file(path)

    run_record._in_parallel(fsync, files)
    pool = run_record._POOL
    run_record._in_parallel(fsync, files)
    assert run_record._POOL is pool and all(t.startswith("ffn-fsync") for t in threads)
    threads.clear()
    run_record._in_parallel(fsync, files[:1])
    assert threads == {threading.current_thread().name}
    monkeypatch.setattr(run_record, "_POOL", (pool[0] + 1, pool[1]))  # as a forked child sees it
    run_record._in_parallel(fsync, files)
    assert run_record._POOL[1] is not pool[1] and run_record._POOL[0] == os.getpid()
    with pytest.raises(FileNotFoundError):
        run_record._in_parallel(run_record._fsync_file, [*files, tmp_path / "missing"])


def test_a_group_loads_each_seeds_data_once(monkeypatch) -> None:
    """The cache the group raises (train.DATASET_CACHE_SIZE, set here by hand): jobs alternating
    seeds (lr x seed) get the same tensors again; a size of one keeps the last dataset only."""
    from omegaconf import OmegaConf

    from ffn import train

    spec = OmegaConf.create({"name": "regression", "n_samples": 40, "noise": 0.1})
    cpu = torch.device("cpu")

    def load(seed: int):
        return train.cached_dataset(spec, seed, cpu, torch.float64)

    monkeypatch.setattr(train, "_DATASET_CACHE", {})
    monkeypatch.setattr(train, "DATASET_CACHE_SIZE", 2)
    first = load(0)
    assert load(1) is not first and load(0) is first
    monkeypatch.setattr(train, "DATASET_CACHE_SIZE", 1)
    again = load(1)
    assert load(0) is not first and load(1) is not again


def test_a_write_that_does_not_wait_lands_after_those_waiting(tmp_path) -> None:
    """The members' .hydra/ and first metrics.json wait for the round's fsyncs; a record
    written at once (a job that fails) must not be overtaken by the one written before it."""
    record = tmp_path / "metrics.json"
    with run_record.fsyncs_together():
        run_record.write_record(tmp_path, "running", may_wait=True)
        assert not record.exists()
        run_record.write_record(tmp_path, "failed", error="refused")
        assert run_record.read_record(tmp_path)["status"] == "failed"
    assert run_record.read_record(tmp_path)["status"] == "failed"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_members_own_fsyncs_together_leaves_the_sync_to_its_groups(tmp_path) -> None:
    """train() wraps a job's first records in fsyncs_together; inside an outer round leaving
    it syncs nothing: the outer round syncs every record at once."""
    record = tmp_path / "metrics.json"
    with run_record.fsyncs_together():
        with run_record.fsyncs_together():  # a member's start
            run_record.write_record(tmp_path, "running", may_wait=True)
        assert not record.exists()  # still waiting for the round
        run_record.sync_waiting()
        assert run_record.read_record(tmp_path)["status"] == "running"
    with run_record.fsyncs_together():  # alone (a basic job): synced on leaving
        run_record.write_record(tmp_path, "completed", may_wait=True)
    assert run_record.read_record(tmp_path)["status"] == "completed"
    assert not list(tmp_path.glob("*.tmp"))


def test_figures_drawn_again_on_a_kept_figure_are_the_same_png(monkeypatch) -> None:
    """A member's confusion matrix or decision regions drawn on the Figure an earlier member's
    were drawn on (ffn.figures' reuse) is byte for byte the PNG of a new Figure."""
    import inspect

    np = pytest.importorskip("numpy")

    import matplotlib.text
    from matplotlib.figure import Figure

    from ffn import figures

    gen = np.random.default_rng(0)
    x, y = gen.normal(size=(30, 2)), gen.integers(0, 3, 30)
    g0, g1 = np.linspace(-3, 3, 40), np.linspace(-2, 2, 40)
    plane = np.add.outer(g1, g0)
    drawings = [
        *(
            ("decision_regions", dict(g0=g0, g1=g1, classes=c, x=x, y=y))
            for c in (
                (plane > 0).astype(np.int64) * 2,
                (plane > 1).astype(np.int64),
                np.zeros_like(plane, dtype=np.int64),
            )
        ),
        *(
            ("confusion_matrix", dict(counts=c))
            for c in (
                np.array([[9, 1], [2, 8]]),
                np.array([[3, 3], [3, 3]]),
                np.array([[0, 12], [5, 0]]),
            )
        ),
        *(  # ten classes: the zeros and some counts recur, their texts replayed
            ("confusion_matrix", dict(counts=np.diag(d) + np.eye(10, k=1, dtype=np.int64) * k))
            for d, k in ((np.arange(10, 20), 0), (np.arange(15, 25), 3), (np.arange(10, 20), 3))
        ),
    ]
    kept: dict = {}
    monkeypatch.setattr(figures, "_KEPT", kept)
    measured = []  # the fonts whose heights a layout asked the renderer for (matplotlib 3.11+)
    heights = figures._ReplayingRenderer._get_font_height_metrics
    monkeypatch.setattr(
        figures._ReplayingRenderer,
        "_get_font_height_metrics",
        lambda self, prop: measured.append(prop) or heights(self, prop),
    )
    again = [figures.render(name, arrays) for name, arrays in drawings]
    assert len(kept) == 3  # one Figure a kind of axes, drawn again for the later members
    asks = "_get_font_height_metrics" in inspect.getsource(matplotlib.text.Text._get_layout)
    assert bool(measured) == asks  # the heights came from the renderer's cache, where asked
    # each drawn fresh, on matplotlib's own canvas (savefig makes one a call: nothing replayed)
    monkeypatch.setattr(figures, "_figure", Figure)
    for (name, arrays), png in zip(drawings, again, strict=True):
        kept.clear()
        assert figures.render(name, arrays) == png, name


@pytest.mark.slow
@pytest.mark.parametrize("helpers", [0, 1])
def test_members_waiting_on_the_figure_worker_let_the_others_go_on(monkeypatch, helpers) -> None:
    """figure_worker.WAITING (the group's hold): requests of several greenlets in flight at
    once, each answered with its own figure; the worker never waits on this process. With a
    helper (the ensemble's), the worker's fork draws some of them: the same bytes, in order."""
    np = pytest.importorskip("numpy")
    from greenlet import getcurrent, greenlet

    from ffn import figure_worker, figures

    monkeypatch.setattr(figure_worker, "_drew_here", False)  # as in a fresh run's process
    counts = [np.array([[k, 1], [2, 10 - k]]) for k in range(4)]
    big = np.zeros((400, 400), dtype=np.int64)  # requests larger than a pipe's buffer
    loop, holds = getcurrent(), []

    def wait() -> bool:
        holds.append(1)
        return loop.switch()

    def draw(c):
        return figure_worker.render("confusion_matrix", {"counts": c}), figure_worker.render(
            "decision_regions",
            dict(
                g0=np.arange(400.0),
                g1=np.arange(400.0),
                classes=big,
                x=np.zeros((1, 2)),
                y=np.zeros(1),
            ),
        )

    figure_worker.start(niceness=0, helpers=helpers)
    monkeypatch.setattr(figure_worker, "WAITING", wait)
    try:
        assert figure_worker.ready(timeout=60)
        worker = figure_worker._worker.pid
        members = [greenlet(draw) for _ in counts]
        results = [m.switch(c) for m, c in zip(members, counts, strict=True)]
        while not all(m.dead for m in members):
            for i, m in enumerate(members):
                if not m.dead:
                    results[i] = m.switch(i == 0 or members[0].dead)
        assert figure_worker.running() and holds  # answered by the worker, while others went on
        assert len(_children(worker)) == helpers  # forked once the first was drawn
    finally:
        figure_worker.stop()
    for c, (matrix, _) in zip(counts, results, strict=True):
        assert matrix == figures.render("confusion_matrix", {"counts": c})


def _children(pid: int) -> list[int]:
    """The processes `pid` has forked (Linux's /proc; none elsewhere)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
def test_a_figure_workers_helper_gone_leaves_its_figures_to_the_worker(monkeypatch) -> None:
    """A helper killed while it draws: the worker draws what it had been given, and every
    answer still comes, in order, the same bytes."""
    np = pytest.importorskip("numpy")
    import threading

    from ffn import figure_worker, figures

    monkeypatch.setattr(figure_worker, "_drew_here", False)  # as in a fresh run's process
    counts = [np.arange(k, k + 100).reshape(10, 10) for k in range(12)]
    figure_worker.start(niceness=0, helpers=1)
    try:
        assert figure_worker.ready(timeout=60)
        worker = figure_worker._worker.pid
        drawn: list = [None] * len(counts)

        def ask(i: int) -> None:
            drawn[i] = figure_worker.render("confusion_matrix", {"counts": counts[i]})

        askers = [threading.Thread(target=ask, args=(i,)) for i in range(len(counts))]
        for asker in askers:
            asker.start()
        while drawn[0] is None or not _children(worker):  # forked after the first, which
            time.sleep(0.01)  # it drew alone: the helper has the next ones in hand by now
        (helper,) = _children(worker)
        os.kill(helper, signal.SIGKILL)
        for asker in askers:
            asker.join(timeout=120)
        assert figure_worker.running()  # the worker answered every request
    finally:
        figure_worker.stop()
    assert drawn == [figures.render("confusion_matrix", {"counts": c}) for c in counts]


@pytest.mark.parametrize("shared", [True, False], ids=["one-seed", "each-seed"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_stacks_minibatch_is_each_members_own_rows(shared: bool, task: str) -> None:
    """Stack.minibatch (one index_select into the members' rows, flattened): member e's rows
    order_e[start : start + size] of its own data, as Run.minibatches takes them."""
    from types import SimpleNamespace

    from ffn.ensemble.group import Stack

    models = members("relu")
    x, y = member_data(task)
    data = [
        SimpleNamespace(x_train=x[0 if shared else e], y_train=y[0 if shared else e])
        for e in range(E)
    ]
    if shared:
        data = [data[0]] * E
    runs = [
        SimpleNamespace(
            model=m,
            optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
            penalty=Penalty(),
            task=task,
            data=d,
        )
        for m, d in zip(models, data, strict=True)
    ]
    stack = Stack(runs)
    g = torch.Generator().manual_seed(2)
    orders = [torch.randperm(N, generator=g) for _ in range(E)]
    for start, size in ((0, 3), (3, 3), (6, 1)):
        xb, yb = stack.minibatch(orders, start, size)
        for e, (d, order) in enumerate(zip(data, orders, strict=True)):
            rows = order[start : start + size]
            assert torch.equal(xb[e], d.x_train[rows]) and torch.equal(yb[e], d.y_train[rows])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_a_group_trains_inside_a_kept_heap() -> None:
    """A stack's big tensors, freed each epoch, reuse the heap's pages in the next (ffn.heap's
    kept_heap around the group's run); after the group the heap is given back."""
    import resource

    from ffn.ensemble.group import Group

    def faults() -> int:  # four 20 MB blocks, as a stack's evaluation allocates and frees them
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [bytearray(20 * 2**20) for _ in range(4)]
        del blocks
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    [inside] = Group().run([lambda: (faults(), faults())[1]])
    assert inside < 100 and faults() > 5000


@pytest.mark.parametrize("order", ["neighbours", "alternating"])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_fused_members_step_bitwise_as_their_own_fused_step(cls, order, one_thread) -> None:
    """Members whose Adam is fused (optimizer=adam's default) step with torch's fused kernel, a
    call for the members that agree on its numbers, on slices of neighbours for the parameters
    of whole 64-byte blocks (8-[8]-3: all but the last bias) and on each member's own view
    otherwise: given the same gradients, each member's parameters and state are bitwise its own
    fused step's, three steps."""
    e = 4
    models, twins = (
        [FeedForward(8, [8], 3, seed=s, dtype=torch.float64) for s in range(e)] for _ in range(2)
    )
    a, b = {"lr": 1e-2}, {"lr": 3e-3, "weight_decay": 0.1}
    kwargs = [a, a, a, b] if order == "neighbours" else [a, b, a, a]
    optimizers = [
        cls(m.parameters(), fused=True, **kw) for m, kw in zip(models, kwargs, strict=True)
    ]
    reference = [cls(m.parameters(), fused=True, **kw) for m, kw in zip(twins, kwargs, strict=True)]
    params = [list(m.parameters()) for m in models]
    net = StackedNet(models)
    stacked = StackedOptimizer(optimizers, params, net.parameters())
    pieces = [[(i, (r.start, r.stop)) for i, r in run[1]] for run in stacked._runs]
    if order == "neighbours":  # 0-2 sliced together but for the last bias (3 float64s)
        assert pieces[0] == [
            (0, (0, 3)),
            (1, (0, 3)),
            (2, (0, 3)),
            (3, (0, 1)),
            (3, (1, 2)),
            (3, (2, 3)),
        ]
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        stacked.step()
        for m, (twin, opt) in enumerate(zip(twins, reference, strict=True)):
            for q, p in zip(twin.parameters(), net.parameters(), strict=True):
                q.grad = p.grad[m].clone()
            opt.step()
    net.write_to(models)
    stacked.write_to(optimizers, params)
    for model, twin, opt, ref in zip(models, twins, optimizers, reference, strict=True):
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(p, q)
        mine, theirs = opt.state_dict()["state"], ref.state_dict()["state"]
        for key, state in theirs.items():
            for k, v in state.items():
                assert mine[key][k].dtype == v.dtype and torch.equal(mine[key][k], v), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_confident_members_steps_equal_their_own_steps(dtype, one_thread) -> None:
    """Stack.step of members whose softmax underflows (subnormal probabilities and deltas, which
    the stack's gradients flush): each member's losses and parameters after three steps are its
    own steps' within the issue's tolerance; subnormals are kept outside the step."""
    from types import SimpleNamespace

    from ffn.ensemble.group import Stack

    e_, n, d, m = 8, 64, 8, 10
    tol = {torch.float32: dict(rtol=1e-5, atol=1e-7), torch.float64: TOL}[dtype]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(e_, n, d, generator=g, dtype=dtype)
    y = torch.randint(0, m, (e_, n), generator=g)
    models, alone = [], []
    for s in range(e_):
        model = FeedForward(d, [16], m, seed=s, dtype=dtype)
        with torch.no_grad():
            # confident: logits tens (float32) or hundreds (float64) apart
            model.layers[-1].weight.mul_(60.0 if dtype == torch.float32 else 1000.0)
        models.append(model)
        alone.append(FeedForward(d, [16], m, seed=s, dtype=dtype))
        alone[-1].load_state_dict(model.state_dict())
    probs = torch.softmax(alone[0](x[0]), -1)
    assert ((probs > 0) & (probs < torch.finfo(dtype).tiny)).any()  # subnormal ones
    runs = [
        SimpleNamespace(
            model=mo,
            optimizer=torch.optim.SGD(mo.parameters(), lr=0.01 * (1 + s % 3)),
            penalty=Penalty(),
            task="classification",
            data=SimpleNamespace(x_train=x[s], y_train=y[s]),
        )
        for s, mo in enumerate(models)
    ]
    own = [torch.optim.SGD(a.parameters(), lr=0.01 * (1 + s % 3)) for s, a in enumerate(alone)]
    stack = Stack(runs)
    orders = [torch.randperm(n, generator=g) for _ in range(e_)]
    for start in (0, 32, 0):
        losses = stack.step(orders, start, 32)
        for s, (a, opt) in enumerate(zip(alone, own, strict=True)):
            rows = orders[s][start : start + 32]
            loss = manual_gradients(a, x[s][rows], y[s][rows], "classification")
            opt.step()
            torch.testing.assert_close(losses[s], loss, **tol)
    for s, a in enumerate(alone):
        for p, q in zip(stack.net.parameters(), a.parameters(), strict=True):
            torch.testing.assert_close(p[s], q, **tol)
    assert (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() != 0.0  # not flushed here
