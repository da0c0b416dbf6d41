"""The penalty table as the tests see it: ffn's entries plus a group lasso defined here.

The group lasso over the rows of W (lam sum_i ||W_i,:||_2, zeroing whole input features) is one
new `PenaltyEntry`; the `penalty_table` fixture (conftest.py) puts it into `PENALTIES` for a
test, so every test that loops over `NAMES` shows a new entry needs nothing else to be applied
by both steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ffn.penalties import L1_METHODS, PENALTIES, PenaltyEntry


def _row_norms(w: Tensor) -> Tensor:
    """||w_i||_2 of every row of w: (d, ...) -> (d, 1, ...) (a bias: each entry its own row)."""
    return torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1).reshape(
        -1, *[1] * (w.ndim - 1)
    )


def _group_norm(w: Tensor) -> Tensor:
    return _row_norms(w).sum()


def _group_subgradient(w: Tensor) -> Tensor:
    norms = _row_norms(w)
    return torch.where(norms > 0, w / norms, 0.0)  # 0 is in the subdifferential of a zero row


def _group_prox_(w: Tensor, threshold: float) -> Tensor:
    """w_i <- w_i max(1 - t / ||w_i||, 0): block soft-thresholding, whole rows to exact zero."""
    norms = _row_norms(w)
    return w.mul_(torch.where(norms > threshold, 1 - threshold / norms, 0.0))


GROUP_LASSO = PenaltyEntry(
    "group_lasso",
    "sum_i ||W_i,:||_2",
    nonsmooth=_group_norm,
    subgradient=_group_subgradient,
    prox_=_group_prox_,
)
NAMES = [*PENALTIES, GROUP_LASSO.name]  # the table, and the entry a newcomer would add


def entry(name: str) -> PenaltyEntry:
    return GROUP_LASSO if name == GROUP_LASSO.name else PENALTIES[name]


def methods(name: str) -> tuple[str, ...]:
    """Both methods where the entry has a non-smooth part; the method means nothing otherwise."""
    return L1_METHODS if entry(name).nonsmooth is not None else (L1_METHODS[0],)


CASES = [(name, method) for name in NAMES for method in methods(name)]
CASE_IDS = [f"{name}-{method}" for name, method in CASES]
