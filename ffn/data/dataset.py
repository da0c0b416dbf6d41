"""The split, scaled tensors a model trains on, and what a runner asks of them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(repr=False)
class Dataset:
    """x_*: (n_part, d) float; y_*: (n_part,) int64 labels 0..C-1, or (n_part, M) float targets.

    For regression with standardize=True, y was scaled as (y - y_mean) / y_std, both (M,)
    from the train part; multiply a prediction by y_std and add y_mean for the original units.
    """

    name: str
    task: str  # "classification" | "regression"
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int | None  # None for regression
    y_mean: Tensor | None = None  # (M,), regression with standardize=True only
    y_std: Tensor | None = None

    @property
    def in_features(self) -> int:
        """d, the width of x."""
        return self.x_train.shape[1]

    @property
    def out_features(self) -> int:
        """C for classification, M for regression: the width of the model's output."""
        return self.n_classes if self.n_classes is not None else self.y_train.shape[1]

    @property
    def n_train(self) -> int:
        """Rows in the train part."""
        return self.x_train.shape[0]

    @property
    def n_val(self) -> int:
        """Rows in the val part."""
        return self.x_val.shape[0]

    @property
    def n_test(self) -> int:
        """Rows in the test part."""
        return self.x_test.shape[0]

    def __repr__(self) -> str:
        """One line, not six tensors."""
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, train={self.n_train}, "
            f"val={self.n_val}, test={self.n_test}, in={self.in_features}, "
            f"out={self.out_features}, dtype={self.x_train.dtype}, device={self.x_train.device})"
        )
