"""scikit-learn estimators over ffn's network, penalties and graph-free step.

    from ffn.sklearn import FFNClassifier
    clf = FFNClassifier(hidden_layer_sizes=(64,), optimizer="lbfgs").fit(X, y)

They minimise what the runner minimises, in the seed's conventions: l_n(w) + lam pen(w), with
l_n the mean cross-entropy (classification) or (1/n) sum_i ||f(x_i) - y_i||^2 (regression),
pen = ||W||_2^2 (l2) or ||W||_1 (l1) over the weight matrices, no 1/2 factors. scikit-learn's
MLP minimises (from `_multilayer_perceptron.py`, `_backprop` and `_compute_loss_grad`):

- MLPClassifier: mean log-loss + alpha / (2 n) ||W||^2           ->  lam = alpha / (2 n)
- MLPRegressor:  (1/(2n)) sum_i ||f - y||^2 + alpha / (2 n) ||W||^2  ->  lam = alpha / n

(n: the samples of the step's batch, all of them for lbfgs; sklearn's *reported* regression
loss also divides by the number of outputs, its gradient does not.) LogisticRegression with C
(binary, one coefficient vector beta = w_1 - w_0 of ffn's two logits) is lam = 1 / (C n), and
Ridge with alpha is lam = alpha / n; tests/test_lbfgs.py derives both.

Defaults follow MLPClassifier's where it has the knob (hidden (100,), adam with lr 1e-3, batches
of 200, 200 epochs, tol 1e-4 over 10 epochs, validation_fraction 0.1); float64 like sklearn.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import ThreadpoolController
from torch import Tensor

from ffn import functions
from ffn.eager_optim import eager_class
from ffn.errors import ConfigError
from ffn.functions import numpy_products, softmax
from ffn.heap import kept_heap
from ffn.lbfgs import FlatLBFGS, flatten_parameters_
from ffn.metrics import epoch_scalars, evaluate, metric_name
from ffn.model import FeedForward
from ffn.optimizers import OPTIMIZERS, OptimizerChoice
from ffn.penalties import Penalty
from ffn.step import check_smooth, lbfgs_step, train_step

# Where the estimators part from the runner's conf/optimizer/ files (ffn.optimizers' table), and
# why; everything else (classes, gd's and sgd's lr, momentum, L-BFGS's settings) is the table's.
ESTIMATOR_SETTINGS: dict[str, dict[str, Any]] = {
    "adam": {"lr": 1e-3},  # MLPClassifier's learning_rate_init
    # torch's own stopping tolerances (all but) off: tol and n_iter_no_change decide;
    # tolerance_change is set to the dtype's eps when the optimizer is built.
    "lbfgs": {"tolerance_grad": 1e-12},
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}

# ffn's config keys, as the estimators' parameters name them in an error.
_PARAMETER_OF_KEY = {
    "penalty.name": "penalty",
    "penalty.lam": "lam",
    "penalty.method": "l1_method",
    "penalty.l1_ratio": "l1_ratio",
    "model.hidden": "hidden_layer_sizes",
    "model.activation": "activation",
    "model.activation_param": "activation_param",
}


class _FFNEstimator(BaseEstimator):
    """What both estimators share: parameters, the training loop, the fitted weights."""

    _task: str  # "classification" | "regression"

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation: str = "relu",
        *,
        activation_param: float | None = None,
        penalty: str = "none",
        lam: float = 0.0,
        l1_ratio: float = 0.5,
        l1_method: str = "proximal",
        optimizer: str = "adam",
        lr: float | None = None,
        batch_size: int = 200,
        max_epochs: int = 200,
        tol: float = 1e-4,
        n_iter_no_change: int = 10,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        warm_start: bool = False,
        random_state=None,
        device: str = "cpu",
        dtype: str = "float64",
        num_threads: int | None = 1,
        logdir: str | None = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.activation_param = activation_param
        self.penalty = penalty
        self.lam = lam
        self.l1_ratio = l1_ratio
        self.l1_method = l1_method
        self.optimizer = optimizer
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.warm_start = warm_start
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.num_threads = num_threads
        self.logdir = logdir

    # --- the public API ----------------------------------------------------------------------

    def fit(self, X, y):
        """Train for up to max_epochs (from the current weights if warm_start).  X: (n, d)."""
        return self._fit(X, y, incremental=False)

    @property
    def coefs_(self) -> list[np.ndarray]:
        """The weight matrices, (d_l, H_l) each, as sklearn's MLP names them."""
        check_is_fitted(self)
        return [layer.weight.detach().cpu().numpy().copy() for layer in self._model.layers]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """The biases, (H_l,) each."""
        check_is_fitted(self)
        return [layer.bias.detach().cpu().numpy().copy() for layer in self._model.layers]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags

    # --- building ----------------------------------------------------------------------------

    def _checked(self) -> tuple[Penalty, OptimizerChoice, torch.device, torch.dtype]:
        """The parameters checked (ValueError naming the parameter), and the pieces they name."""
        with _named_parameters():
            penalty = Penalty(self.penalty, self.lam, self.l1_method, self.l1_ratio)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", self.optimizer, "one of " + ", ".join(OPTIMIZERS))
        if self.optimizer == "lbfgs":
            with _named_parameters():
                check_smooth(penalty)
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", self.dtype, "one of " + ", ".join(DTYPES))
        if self.num_threads is not None:
            _check_count("num_threads", self.num_threads)
        for name in ("batch_size", "max_epochs", "n_iter_no_change"):
            _check_count(name, getattr(self, name))
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", self.lr, "None (the optimizer's default) or a number > 0")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise ConfigError("tol", self.tol, "a finite number >= 0")
        if self.early_stopping and not 0 < self.validation_fraction < 1:
            raise ConfigError("validation_fraction", self.validation_fraction, "in (0, 1)")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError("device", self.device, "cpu, cuda or cuda:N") from None
        return penalty, OPTIMIZERS[self.optimizer], device, DTYPES[self.dtype]

    def _hidden(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, int | np.integer) else list(sizes)
        return [int(h) if isinstance(h, np.integer) else h for h in sizes]

    def _build(self, n_features: int, n_outputs: int, device, dtype) -> None:
        """A fresh network and optimizer; the fitted state starts empty."""
        self._random_state = check_random_state(self.random_state)
        seed = int(self._random_state.randint(np.iinfo(np.int32).max))
        self._model_args = dict(
            in_features=n_features,
            hidden=self._hidden(),
            out_features=n_outputs,
            activation=self.activation,
            activation_param=self.activation_param,
        )
        with _named_parameters():
            self._model = FeedForward(**self._model_args, seed=seed, dtype=dtype, device=device)
        self._flat = flatten_parameters_(self._model)  # one buffer: FlatLBFGS moves it whole
        self._optimizer = self._new_optimizer()
        self.n_outputs_ = n_outputs
        self.loss_curve_: list[float] = []
        self.n_iter_ = 0
        self.t_ = 0  # samples seen, as sklearn counts them
        self.best_loss_ = math.inf
        self.validation_scores_: list[float] | None = [] if self.early_stopping else None
        self.best_validation_score_ = -math.inf if self.early_stopping else None
        self._no_improvement = 0

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """The table's optimizer with the estimators' settings, torch.optim's eager class."""
        choice = OPTIMIZERS[self.optimizer]
        settings = choice.settings() | ESTIMATOR_SETTINGS.get(self.optimizer, {})
        if self.lr is not None:
            settings["lr"] = float(self.lr)
        cls = _optimizer_class(choice)
        if issubclass(cls, torch.optim.LBFGS):  # changes below rounding are no progress
            settings["tolerance_change"] = torch.finfo(self._model.layers[0].weight.dtype).eps
            if cls is eager_class(torch.optim.LBFGS):
                optimizer = FlatLBFGS(self._model.parameters(), **settings)
                optimizer.flat = self._flat
                return optimizer
        return cls(self._model.parameters(), **settings)

    # --- training ----------------------------------------------------------------------------

    def _fit(self, X, y, incremental: bool, classes=None):
        # numpy's BLAS for the products where MKL is off its home CPU (ffn.functions), on
        # num_threads too; the heap kept, so that pages are reused step to step
        blas = numpy_products(functions.MKL_SLOW_PATHS)
        with compute_threads(self.num_threads), blas, kept_heap():
            return self._fit_here(X, y, incremental, classes)

    def _fit_here(self, X, y, incremental: bool, classes):
        penalty, choice, device, dtype = self._checked()
        fresh = not hasattr(self, "_model") or not (self.warm_start or incremental)
        X, y = self._validate(X, y, reset=fresh)
        targets = self._targets(y, fresh, incremental, classes)
        if fresh:
            self._build(X.shape[1], self._n_outputs(targets), device, dtype)
        elif self.optimizer_ != self.optimizer:  # warm start with another optimizer
            self._optimizer = self._new_optimizer()
        self.optimizer_ = self.optimizer
        x = torch.as_tensor(_writable(X), dtype=dtype, device=device)
        t = torch.as_tensor(_writable(targets), device=device)
        t = t if self._task == "classification" else t.to(dtype)
        x_val = t_val = None
        if self.early_stopping and not incremental:
            x, t, x_val, t_val = self._validation_split(x, t)
        epochs = 1 if incremental else self.max_epochs
        logger = self._logger(fresh)
        try:
            converged = self._train(x, t, x_val, t_val, penalty, choice, epochs, logger)
        finally:
            if logger is not None:
                logger.close()
        if not converged and not incremental:
            warnings.warn(
                f"ffn: max_epochs={self.max_epochs} reached before the loss settled "
                f"(tol={self.tol}, n_iter_no_change={self.n_iter_no_change})",
                ConvergenceWarning,
                stacklevel=3,
            )
        return self

    def _train(self, x, t, x_val, t_val, penalty, choice, epochs, logger) -> bool:
        """Epochs of minibatch steps until a stopping rule fires; True if one did."""
        n = x.shape[0]
        batch = n if choice.full_batch else min(self.batch_size, n)
        step = lbfgs_step if isinstance(self._optimizer, torch.optim.LBFGS) else train_step
        penalised = penalty.parameters(self._model)
        model, optimizer, task = self._model, self._optimizer, self._task
        best_state = None
        starts = range(0, n, batch)
        sizes = torch.tensor([min(batch, n - s) for s in starts], dtype=x.dtype, device=x.device)
        for _ in range(epochs):
            if batch == n:  # the same tensors every epoch: L-BFGS's closure cache keys on them
                losses = [step(model, optimizer, penalty, x, t, task)]
            else:  # one gather an epoch, then each batch a block of rows (a view, no kernel)
                order = torch.as_tensor(self._random_state.permutation(n), device=x.device)
                xs, ts = x.index_select(0, order), t.index_select(0, order)  # x[order]: 2.5x
                losses = [
                    step(model, optimizer, penalty, xs[s : s + batch], ts[s : s + batch], task)
                    for s in starts
                ]
            with torch.no_grad():  # the mean of the batches' losses, weighted by their sizes
                if len(losses) == 1:  # one batch of all n rows (the per-epoch ops cost L-BFGS 3%)
                    objective = losses[0]
                else:
                    objective = (torch.stack(losses).to(sizes) @ sizes) / n
                if penalty.active:
                    objective = objective + penalty.value(penalised).to(objective)
            self.loss_curve_.append(float(objective))  # the epoch's one host sync
            self.n_iter_ += 1
            self.t_ += n
            if logger is not None:
                self._log_epoch(logger, x, t, x_val, t_val, penalty, penalised)
            if not math.isfinite(self.loss_curve_[-1]):
                raise ValueError(
                    f"ffn: the loss diverged (it is {self.loss_curve_[-1]}) at epoch "
                    f"{self.n_iter_}; try a smaller lr"
                )
            if x_val is not None:
                score = self._validation_score(x_val, t_val)
                self.validation_scores_.append(score)
                improved = score > self.best_validation_score_ + self.tol
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    best_state = copy.deepcopy(self._model.state_dict())
            else:
                improved = self.loss_curve_[-1] < self.best_loss_ - self.tol
            self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])
            self._no_improvement = 0 if improved else self._no_improvement + 1
            if self._no_improvement > self.n_iter_no_change:
                self._no_improvement = 0
                if best_state is not None:  # early stopping: the model that was best on val
                    self._model.load_state_dict(best_state)
                return True
        if best_state is not None:
            self._model.load_state_dict(best_state)
        return False

    def _validation_split(self, x: Tensor, t: Tensor):
        """validation_fraction of the rows held out (stratified for classification)."""
        rows = np.arange(x.shape[0])
        strat = t.cpu().numpy() if self._task == "classification" else None
        train, val = train_test_split(
            rows,
            test_size=self.validation_fraction,
            random_state=self._random_state,
            stratify=strat,
        )
        train, val = torch.as_tensor(train), torch.as_tensor(val)
        return x[train], t[train], x[val], t[val]

    @torch.no_grad()
    def _validation_score(self, x_val: Tensor, t_val: Tensor) -> float:
        values, _, _ = evaluate(self._model, x_val, t_val, self._task)
        return float(values[metric_name(self._task)])

    @torch.no_grad()
    def _forward(self, X) -> Tensor:
        """The network's output for X, after the checks sklearn asks for.  -> (n, M)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        weight = self._model.layers[0].weight
        with compute_threads(self.num_threads), numpy_products(functions.MKL_SLOW_PATHS):
            x = torch.as_tensor(_writable(X), dtype=weight.dtype, device=weight.device)
            return self._model(x)

    # --- TensorBoard ---------------------------------------------------------------------------

    def _logger(self, fresh: bool):
        """A RunLogger in logdir (None without one); a fresh fit writes config and hparams."""
        if self.logdir is None:
            return None
        from ffn.run_logger import RunLogger  # tensorboard, only when asked for

        logger = RunLogger(self.logdir)
        if fresh:
            params = {k: "None" if v is None else v for k, v in self.get_params().items()}
            params = {
                k: v if isinstance(v, bool | int | float | str) else str(v)
                for k, v in params.items()
            }
            logger.text("config", "\n".join(f"{k}: {v}" for k, v in params.items()))
            logger.hparams_start(params)
        return logger

    @torch.no_grad()
    def _log_epoch(self, logger, x, t, x_val, t_val, penalty, penalised) -> None:
        """The runner's per-epoch records: scalars, per-layer diagnostics, histograms."""
        from ffn.run_logger import layer_diagnostics

        val = None if x_val is None else (x_val, t_val)
        scalars, preactivations = epoch_scalars(
            self._model, self._task, penalty, penalised, (x, t), val
        )
        layers = layer_diagnostics(self._model, preactivations)
        tensors = [*scalars.values(), *layers.values()]  # one host transfer for all of them
        values = torch.stack([v.detach().double() for v in tensors]).cpu().tolist()
        host = dict(zip([*scalars, *layers], values, strict=True))
        host["train/lr"] = self._optimizer.param_groups[0]["lr"]
        logger.scalars(host, self.n_iter_)
        logger.histograms(self._model, preactivations, self.n_iter_)

    # --- pickling ------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The network and optimizer as tensors and settings, rebuilt on loading."""
        state = super().__getstate__().copy()
        if "_model" in state:
            model = state.pop("_model")
            state.pop("_flat")  # the model's own storage, rebuilt with it
            weight = model.layers[0].weight
            state["_model_state"] = (model.state_dict(), weight.dtype, str(weight.device))
            state["_optimizer"] = state["_optimizer"].state_dict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.pop("_model_state", None)
        optimizer_state = state.pop("_optimizer", None)
        super().__setstate__(state)
        if saved is not None:
            weights, dtype, device = saved
            self._model = FeedForward(**self._model_args, dtype=dtype, device=device)
            self._model.load_state_dict(weights)
            self._flat = flatten_parameters_(self._model)
            self._optimizer = self._new_optimizer()
            self._optimizer.load_state_dict(optimizer_state)


class FFNClassifier(ClassifierMixin, _FFNEstimator):
    """Softmax cross-entropy over the network's logits; `hidden_layer_sizes=()` is
    multinomial logistic regression (two logits for two classes)."""

    _task = "classification"

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y) from the current weights; `classes` on the first call."""
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X) -> np.ndarray:
        """softmax of the logits (ffn.functions', the formula the loss uses).  -> (n, n_classes)."""
        return np.ascontiguousarray(softmax(self._forward(X)).cpu().numpy())

    def predict(self, X) -> np.ndarray:
        """The most probable class.  -> (n,)."""
        logits = self._forward(X)
        return self.classes_[logits.argmax(1).cpu().numpy()]

    def _validate(self, X, y, reset: bool):
        X, y = validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        return X, y

    def _targets(self, y, fresh: bool, incremental: bool, classes) -> np.ndarray:
        """Class codes 0..C-1 (int64); classes_ fixed on a fresh fit."""
        if fresh:
            if incremental and classes is None:  # later batches may hold classes this one lacks
                raise ValueError("classes must be passed on the first call to partial_fit")
            self._encoder = LabelEncoder().fit(y if classes is None else classes)
            self.classes_ = self._encoder.classes_
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y has classes not in classes_ {self.classes_}: {unknown}")
        return self._encoder.transform(y).astype(np.int64)

    def _n_outputs(self, targets: np.ndarray) -> int:
        return len(self.classes_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        return tags


class FFNRegressor(RegressorMixin, _FFNEstimator):
    """The seed's squared error (1/n) sum_i ||f(x_i) - y_i||^2, one or several outputs;
    `hidden_layer_sizes=()` is linear regression (with penalty="l2": ridge)."""

    _task = "regression"

    def partial_fit(self, X, y):
        """One epoch over (X, y) from the current weights."""
        return self._fit(X, y, incremental=True)

    def predict(self, X) -> np.ndarray:
        """-> (n,) when fitted on a 1-D y, else (n, M)."""
        out = self._forward(X).cpu().numpy()
        return out.ravel() if self._y_1d else out

    def _validate(self, X, y, reset: bool):
        return validate_data(
            self,
            X,
            y,
            reset=reset,
            dtype=[np.float64, np.float32],
            multi_output=True,
            y_numeric=True,
        )

    def _targets(self, y, fresh: bool, incremental: bool, classes) -> np.ndarray:
        if fresh:
            self._y_1d = np.ndim(y) == 1
        y = np.asarray(y, dtype=np.float64)
        return y.reshape(len(y), -1)

    def _n_outputs(self, targets: np.ndarray) -> int:
        return targets.shape[1]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


@contextlib.contextmanager
def compute_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads and numpy's BLAS threads set to n inside (None: as they are),
    restored after.

    Small networks run fastest on one thread: a second one only spins, and on a busy machine
    two cost 30x (measured: a 300-step fit, 0.4 s on one thread, 12 s on two at load 7).
    """
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(int(n))
    try:
        with _blas_controller().limit(limits=n, user_api="blas") if n else contextlib.nullcontext():
            yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@functools.cache
def _blas_controller() -> ThreadpoolController:
    """threadpoolctl's view of the BLAS libraries loaded (numpy's, scipy's): 0.2 ms to build."""
    return ThreadpoolController()


def _optimizer_class(choice: OptimizerChoice) -> type[torch.optim.Optimizer]:
    """The class `_target_` names, without torch._dynamo's import (ffn.eager_optim)."""
    module, _, name = choice.target.rpartition(".")
    return eager_class(getattr(importlib.import_module(module), name))


def _writable(a: np.ndarray) -> np.ndarray:
    """a, or a copy if it is read-only (a memmap): torch wants to own writable memory."""
    return a if a.flags.writeable else a.copy()


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(name, value, "an integer >= 1")


class _named_parameters:
    """Re-raise ffn's ConfigError under the estimator's parameter name (penalty.lam -> lam)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, ConfigError) and error.key in _PARAMETER_OF_KEY:
            raise ConfigError(_PARAMETER_OF_KEY[error.key], error.value, error.allowed) from None
        return False
