"""What a run costs besides training, made cheap without changing what it leaves (issue 11).

Histograms binned on the device and scalars written as one event still read back with
TensorBoard's own EventAccumulator under the same tags; figures are drawn once; the numpy split
is scikit-learn's, index for index; digits is read without importing scikit-learn;
`trainer.eval_every`; metrics.json's timing names every phase; a sweep reuses its dataset.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_python
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split as sklearn_split
from tensorboard.backend.event_processing import event_accumulator

from ffn import collector, figure_arrays, figure_worker, figures
from ffn.activations import ACTIVATIONS
from ffn.config import Config, validate
from ffn.data.shipped import _digits_file, small_integer_csv
from ffn.data.shuffle_split import train_test_split
from ffn.losses import loss_function
from ffn.metrics import accuracy, evaluate, gradient_norm, split_values
from ffn.model import FeedForward
from ffn.progress import TIMING_PHASES
from ffn.run_logger import (
    HISTOGRAM_BINS,
    SATURATION_MARGIN,
    RunLogger,
    activation_health,
    layer_diagnostics,
)
from ffn.run_record import DIAGNOSTICS_EVENTS, EVENT_FOLDERS, METRICS_EVENTS
from ffn.train import Run, train


def read_events(folder: Path) -> event_accumulator.EventAccumulator:
    guidance = dict.fromkeys(event_accumulator.DEFAULT_SIZE_GUIDANCE, 0)
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance=guidance)
    acc.Reload()
    return acc


# ---------------------------------------------------------------- TensorBoard records


def test_histograms_read_back_with_the_same_tags_and_numpy_counts(tmp_path: Path) -> None:
    model = FeedForward(4, [8], 3, seed=0)
    model.layers[0].weight.grad = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    model.layers[1].weight.grad = torch.full((8, 3), float("nan"))  # not finite: left out
    z = torch.randn(50, 8, generator=torch.Generator().manual_seed(2))
    logger = RunLogger(tmp_path)
    logger.histograms(model, [z], step=3)
    logger.close()
    acc = read_events(tmp_path / DIAGNOSTICS_EVENTS)
    want = {
        "weights/layer_0": model.layers[0].weight,
        "weights/layer_1": model.layers[1].weight,
        "grads/layer_0": model.layers[0].weight.grad,
        "preactivations/layer_0": z,
    }
    assert sorted(acc.Tags()["histograms"]) == sorted(want)
    for tag, tensor in want.items():
        (event,) = acc.Histograms(tag)
        h, values = event.histogram_value, tensor.detach().double().numpy().ravel()
        assert event.step == 3
        assert h.num == values.size
        assert h.min == pytest.approx(values.min()) and h.max == pytest.approx(values.max())
        assert h.sum == pytest.approx(values.sum(), abs=1e-9)
        assert h.sum_squares == pytest.approx(values @ values)
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
        assert h.bucket[0] == 0  # an empty bucket whose right edge is the minimum
        assert sum(h.bucket) == values.size
        # binned in float32: a value within rounding of an edge may move to its neighbour
        assert np.abs(np.array(h.bucket[1:]) - counts).sum() <= 2
        np.testing.assert_allclose(h.bucket_limit, edges, rtol=1e-6)


def test_a_constant_tensor_gets_numpys_unit_range(tmp_path: Path) -> None:
    model = FeedForward(2, [], 2, seed=0)
    with torch.no_grad():
        model.layers[0].weight.fill_(0.25)
    logger = RunLogger(tmp_path)
    logger.histograms(model, [], step=1)
    logger.close()
    (event,) = read_events(tmp_path / DIAGNOSTICS_EVENTS).Histograms("weights/layer_0")
    counts, edges = np.histogram(np.full(4, 0.25), bins=HISTOGRAM_BINS)
    assert event.histogram_value.bucket == [0, *counts]
    np.testing.assert_allclose(event.histogram_value.bucket_limit, edges)


def test_scalars_of_one_call_read_back_as_separate_tags(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    logger.scalars({"train/loss": 0.5, "val/loss": torch.tensor(0.75), "train/lr": 0.1}, step=1)
    logger.scalars({"train/loss": 0.25, "dead/layer_0": 0.5}, step=2)
    logger.close()
    acc = read_events(tmp_path / METRICS_EVENTS)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.5), (2, 0.25)]
    assert [(e.step, e.value) for e in acc.Scalars("val/loss")] == [(1, 0.75)]
    # the rest beside, not under, the HParams session's folder: no metric columns of theirs
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "val/loss"]
    diagnostics = read_events(tmp_path / DIAGNOSTICS_EVENTS)
    assert sorted(diagnostics.Tags()["scalars"]) == ["dead/layer_0", "train/lr"]


def test_a_figure_is_drawn_once_into_file_and_tensorboard(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5))
    fig.subplots().plot([0, 1], [1, 0])
    logger = RunLogger(tmp_path)
    logger.figure("figures/test", fig, step=4, save_to=tmp_path / "figures" / "test.png")
    logger.close()
    (event,) = read_events(tmp_path / METRICS_EVENTS).Images("figures/test")
    png = (tmp_path / "figures" / "test.png").read_bytes()
    assert event.step == 4 and event.encoded_image_string == png
    assert (event.width, event.height) == (200, 150)
    # the PNG header's own size (IHDR: width, height as big-endian 32-bit)
    assert int.from_bytes(png[16:20], "big") == 200 and int.from_bytes(png[20:24], "big") == 150


END_SCRIPT = """
import atexit
from ffn import collector
class Noisy:
    def __del__(self):
        print("torn down")
keep = Noisy()
atexit.register(lambda: print("handled"))
print("buffered", end=" ")
collector.end_process(__file__)
print("went on", end=" ")
"""


def test_python_script_ends_after_its_exit_handlers_without_the_teardown(tmp_path: Path) -> None:
    script = tmp_path / "end.py"
    script.write_text(END_SCRIPT)
    proc = run_python(str(script))
    assert (proc.returncode, proc.stdout) == (0, "buffered handled\n")
    # run another way (runpy, as tests run run.py), the caller's code goes on as before
    proc = run_python("-c", f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')")
    assert proc.returncode == 0 and proc.stdout.startswith("buffered went on handled\n")


@pytest.mark.slow
def test_the_figure_worker_draws_the_png_this_process_draws(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Byte for byte, every end figure, one of them drawn ahead (`prepare`); a worker that died
    leaves the drawing to the run."""
    monkeypatch.setattr(figure_worker, "_drew_here", False)  # as in a fresh run's process
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 2, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    model = FeedForward(2, [4], 3, seed=0)
    wanted = {
        "confusion_matrix": figure_arrays.confusion_counts(model(x), y),
        "decision_regions": figure_arrays.decision_grid(model, x, y, grid=20),
        "predicted_vs_true": figure_arrays.predictions(torch.randn(40, 2, generator=gen), x),
    }
    figure_worker.start()
    try:
        # as train() asks it: a confusion matrix drawn ahead, the run's one then reuses its axes
        for _ in range(2):  # (once a kind: the second is not sent)
            figure_worker.prepare("confusion_matrix", {"counts": np.arange(9).reshape(3, 3)})
        assert figure_worker.ready(timeout=60)  # (a run that finds it importing draws itself)
        drawn = {name: figure_worker.render(name, arrays) for name, arrays in wanted.items()}
        assert figure_worker.running()  # it answered every request
        assert not figure_worker._unread and not figure_worker._answers  # nothing left over
        assert drawn == {name: figures.render(name, arrays) for name, arrays in wanted.items()}
        figure_worker._worker.kill()
        assert (
            figure_worker.render("confusion_matrix", wanted["confusion_matrix"])
            == (drawn["confusion_matrix"])
        )
        assert not figure_worker.running()
        monkeypatch.setattr(figure_worker, "_drew_here", False)
        figure_worker.start()  # asked at once, while it imports: this process draws
        assert (
            figure_worker.render("confusion_matrix", wanted["confusion_matrix"])
            == (drawn["confusion_matrix"])
        )
        assert not figure_worker.running()
        figure_worker.start()  # starts none: this process has matplotlib loaded now
        assert not figure_worker.running()
    finally:
        figure_worker.stop()


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_evaluation_is_bitwise_the_functions_forward(activation: str, task: str) -> None:
    gen = torch.Generator().manual_seed(0)
    model = FeedForward(5, [7, 6], 3, activation=activation, seed=1)
    x = torch.randn(40, 5, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen) if task == "classification" else x[:, :3]
    metrics, out, preactivations = evaluate(model, x, y, task)
    with torch.no_grad():
        want_out, want_pre = model.forward_with_preactivations(x)  # through Function.apply
        want_loss = loss_function(task, "manual")(want_out, y)
    assert torch.equal(out, want_out) and torch.equal(metrics["loss"], want_loss)
    assert all(torch.equal(z, w) for z, w in zip(preactivations, want_pre, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accuracy_is_the_argmax_formula_in_any_layout(dtype) -> None:
    """accuracy reads max's indices: argmax's on ties (the first), NaN, infinities, in the
    column-major layout a narrow product leaves, and under vmap (the ensemble's)."""
    gen = torch.Generator().manual_seed(0)
    for n, m in [(1, 1), (7, 3), (300, 10), (1168, 10), (50, 40)]:
        logits = torch.randint(-2, 2, (n, m), generator=gen).to(dtype)  # many ties
        draw = torch.rand(n, m, generator=gen)
        logits[draw < 0.05] = torch.nan
        logits[(draw > 0.05) & (draw < 0.1)] = torch.inf
        logits[(draw > 0.1) & (draw < 0.15)] = -torch.inf
        target = torch.randint(0, m, (n,), generator=gen)
        for layout in (logits, logits.mT.contiguous().mT, logits[:, ::2]):
            want = (layout.argmax(1) == target).mean(dtype=dtype)  # the formula as it was
            assert torch.equal(accuracy(layout, target), want)
        stacked = torch.stack([logits, logits.flip(0)])
        targets = torch.stack([target, target])
        want = torch.stack([(s.argmax(1) == target).mean(dtype=dtype) for s in stacked])
        assert torch.equal(torch.vmap(accuracy)(stacked, targets), want)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_split_values_are_evaluates_without_the_copy(task: str) -> None:
    gen = torch.Generator().manual_seed(3)
    model = FeedForward(64, [128], 10, seed=1)  # digits' shapes: a column-major output
    x = torch.randn(1168, 64, generator=gen)
    y = torch.randint(0, 10, (1168,), generator=gen) if task == "classification" else x[:, :10]
    values, out, pre = split_values(model, x, y, task)
    want_values, want_out, want_pre = evaluate(model, x, y, task)
    assert want_out.is_contiguous() and torch.equal(out, want_out)
    assert all(torch.equal(values[k], want_values[k]) for k in want_values)
    assert all(torch.equal(z, w) for z, w in zip(pre, want_pre, strict=True))


def _per_tensor_diagnostics(model: FeedForward, preactivations: list) -> dict:
    """layer_diagnostics and gradient_norm as they were computed before the foreach norms: one
    kernel chain per tensor, the fractions through .double().mean()."""
    values = {}
    for i, layer in enumerate(model.layers):
        w = layer.weight
        values[f"weight_norm/layer_{i}"] = w.norm()
        if w.grad is not None:
            values[f"grad_norm/layer_{i}"] = w.grad.norm()
        values[f"sparsity/layer_{i}"] = (w == 0).double().mean()
    for i, z in enumerate(preactivations):
        if model.activation.health == "dead":
            values[f"dead/layer_{i}"] = (z.amax(0) <= 0).double().mean()
        elif model.activation.health == "saturated":
            h = model.activation.forward(z, model.activation_param)
            low = -1.0 if model.activation.name == "tanh" else 0.0
            near = (h - low < SATURATION_MARGIN) | (1.0 - h < SATURATION_MARGIN)
            values[f"saturated/layer_{i}"] = near.double().mean()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    values["gradient_norm"] = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g) for g in grads])
    )
    return values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_layer_diagnostics_are_bitwise_the_per_tensor_formulas(activation, dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    model = FeedForward(5, [7, 6], 3, activation=activation, seed=1, dtype=dtype)
    with torch.no_grad():
        model.layers[0].weight[:2] = 0  # a lasso's zeros
        model.layers[0].weight[2, :3] = -0.0  # zeros too
        model.layers[1].bias.fill_(-50.0)  # dead or saturated units
    x = torch.randn(300, 5, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (300,), generator=gen)
    loss_function("classification")(model(x[:40]), y[:40]).backward()
    model.layers[1].weight.grad = None  # a layer without a gradient
    _, _, preactivations = evaluate(model, x, y, "classification")
    got = {**layer_diagnostics(model, preactivations), "gradient_norm": gradient_norm(model)}
    want = _per_tensor_diagnostics(model, preactivations)
    assert list(got) == list(want)
    for tag, value in want.items():
        assert got[tag].dtype == value.dtype and torch.equal(got[tag], value), tag
    assert got["sparsity/layer_0"] > 0 and got[f"{model.activation.health}/layer_1"] > 0
    z = preactivations[0].clone().requires_grad_()  # as an autograd forward leaves it
    assert torch.equal(activation_health(model, z), activation_health(model, z.detach()))
    model.zero_grad(set_to_none=True)  # before a first step: no gradient norms, the rest as ever
    fresh = layer_diagnostics(model, preactivations)
    assert not any(tag.startswith("grad_norm/") for tag in fresh)
    assert all(torch.equal(fresh[tag], got[tag]) for tag in fresh)


# ---------------------------------------------------------------- data without scikit-learn


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(2, 200),
    n_classes=st.integers(1, 6),
    test_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    stratified=st.booleans(),
    data=st.data(),
)
def test_split_is_sklearns_train_test_split(n, n_classes, test_share, seed, stratified, data):
    labels = np.array(data.draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    rows = np.arange(n) * 7 + 3  # rows that are not their own positions
    n_test = min(max(1, round(test_share * n)), n - 1)
    strat = labels if stratified else None
    try:
        want = sklearn_split(rows, test_size=n_test, random_state=seed, stratify=strat)
    except ValueError:
        with pytest.raises(ValueError):
            train_test_split(rows, n_test, seed, strat)
        return
    got = train_test_split(rows, n_test, seed, strat)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_digits_file_is_load_digits() -> None:
    x, y = _digits_file()
    bunch = load_digits()
    np.testing.assert_array_equal(x, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)


def test_small_integer_csv_reads_what_loadtxt_reads_and_refuses_the_rest() -> None:
    rng = np.random.default_rng(0)
    table = rng.integers(0, 100, (50, 7))
    text = "".join(",".join(map(str, row)) + "\n" for row in table).encode()
    got = small_integer_csv(text)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, np.loadtxt(text.decode().splitlines(), delimiter=","))
    others = [b"", b"1,2\n3,4", b"1,2\n3\n", b"1\n2,3,4\n", b"1,,2\n3,4,5\n", b"1,234\n5,6\n"]
    others += [b"1.5,2\n3,4\n", b"-1,2\n3,4\n", b"1,2\r\n3,4\r\n", b"a,2\n3,4\n"]
    assert all(small_integer_csv(other) is None for other in others)


@pytest.mark.slow
def test_a_default_run_imports_no_dynamo_sklearn_scipy_or_pyplot(tmp_path: Path) -> None:
    """The default job (digits, Adam, cosine, histograms, figures, checkpoints), two epochs, in
    a fresh process: torch.optim steps without torch._dynamo (and so does every torch.optim
    optimizer built by ffn.eager_optim), digits loads without sklearn, the figures are drawn
    without pyplot (by the figure worker, or here if it is still importing), the event files
    are written without torch's SummaryWriter and TensorBoard's TensorFlow stub."""
    code = (
        "import atexit, runpy, sys\n"
        "heavy = ('sklearn', 'scipy', 'torch._dynamo', 'matplotlib.pyplot',\n"
        "         'torch.utils.tensorboard', 'tensorboard.compat.tensorflow_stub')\n"
        "atexit.register(lambda: print('LOADED', sorted(m for m in heavy if m in sys.modules)))\n"
        "import gc; atexit.register(lambda: print('COLLECTING', gc.isenabled()))\n"
        f"sys.argv = ['run.py', 'trainer.max_epochs=2', 'hydra.run.dir={tmp_path}']\n"
        "runpy.run_path('run.py', run_name='__main__')\n"
        # then every torch.optim optimizer, eager, steps and saves in the same process
        "import torch; from ffn.eager_optim import eager_class\n"
        "for name in ('Adam', 'AdamW', 'SGD', 'RMSprop', 'Adagrad', 'NAdam', 'RAdam', 'Rprop',\n"
        "             'Adamax', 'Adadelta', 'ASGD', 'Adafactor', 'Muon'):\n"
        "    p = torch.ones(3, 2, requires_grad=True); p.grad = torch.ones(3, 2)\n"
        "    o = eager_class(getattr(torch.optim, name))([p], lr=0.1); o.step()\n"
        "    o.load_state_dict(o.state_dict()); o.zero_grad()\n"
    )
    proc = run_python("-c", code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stdout.splitlines()
    assert "COLLECTING True" in proc.stdout.splitlines()  # paused for the imports only
    assert (tmp_path / "figures" / "confusion_matrix.png").exists()
    assert (tmp_path / "checkpoints" / "last.pt").exists()


def test_the_collector_paused_for_imports_freezes_them_and_collects_again() -> None:
    assert gc.isenabled()
    collector.imports_done()  # not paused (a test, a notebook): nothing changes
    assert gc.isenabled() and gc.get_freeze_count() == 0
    try:
        collector.pause()
        assert not gc.isenabled()
        made_meanwhile = [[] for _ in range(100)]
        collector.imports_done()
        assert gc.isenabled() and gc.get_freeze_count() >= len(made_meanwhile)
        collector.imports_done()  # once: a sweep's later jobs freeze nothing more
        frozen = gc.get_freeze_count()
        made_later = [[] for _ in range(100)]  # what a second freeze would take
        collector.imports_done()
        assert gc.get_freeze_count() == frozen, len(made_later)
    finally:
        gc.unfreeze()
        gc.enable()


# ---------------------------------------------------------------- eval_every, timing, reuse


def quick_config(**trainer: object):
    """The default config on iris, quiet; `trainer` overrides the trainer keys."""
    cfg = OmegaConf.structured(Config)
    cfg.dataset.merge_with({"name": "iris"})
    cfg.trainer.merge_with({"max_epochs": 5, "figures": False, "progress": False, **trainer})
    validate(cfg)
    return cfg


@pytest.fixture(scope="module")
def every_second_epoch(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("eval_every")
    cfg = quick_config(eval_every=2, histogram_every=1, checkpoint_every=0)
    return train(cfg, folder), folder


@pytest.mark.slow
def test_eval_every_evaluates_every_nth_and_the_last_epoch(every_second_epoch) -> None:
    result, folder = every_second_epoch
    assert result.status == "completed" and result.epochs == 5
    metrics, diagnostics = (read_events(folder / name) for name in EVENT_FOLDERS)
    for tag in ("train/loss", "val/accuracy"):
        assert [e.step for e in metrics.Scalars(tag)] == [2, 4, 5], tag
    for tag in ("train/lr", "weight_norm/layer_0", "dead/layer_0"):
        assert [e.step for e in diagnostics.Scalars(tag)] == [2, 4, 5], tag
    for tag in ("weights/layer_0", "preactivations/layer_0"):
        assert [e.step for e in diagnostics.Histograms(tag)] == [2, 4, 5], tag
    assert np.isfinite(result.metrics["val/loss"])


@pytest.mark.slow
def test_timing_names_every_phase(every_second_epoch) -> None:
    timing = every_second_epoch[0].timing
    assert set(timing) == {f"{phase}_s" for phase in TIMING_PHASES} | {"loop_started_unix"}
    assert all(v >= 0 for v in timing.values())
    parts = timing["steps_s"] + timing["evaluation_s"] + timing["checkpoints_s"]
    assert parts <= timing["loop_s"]
    assert timing["figures_s"] == 0  # figures=false


@pytest.mark.slow
def test_runs_on_the_same_data_share_it_and_other_data_is_loaded(tmp_path: Path) -> None:
    first = Run(quick_config(), tmp_path)
    again = Run(quick_config(), tmp_path)
    assert again.data is first.data
    other_seed = Run(quick_config(seed=1), tmp_path)
    assert other_seed.data is not first.data
    assert not torch.equal(other_seed.data.x_test, first.data.x_test)  # another split
