"""scikit-learn's `train_test_split` (ShuffleSplit, StratifiedShuffleSplit), index for index.

Importing scikit-learn takes 0.7-1.2 s, a quarter of the default job, for a split that is
thirty lines of numpy. These are sklearn's own steps (sklearn/model_selection/_split.py, and
`_approximate_mode` from sklearn/utils/extmath.py), drawing from the same `RandomState` in the
same order, so the rows are the same; tests/test_data.py checks that against sklearn itself.
"""

from __future__ import annotations

import numpy as np


def train_test_split(
    rows: np.ndarray, n_test: int, seed: int, stratify: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`sklearn.model_selection.train_test_split(rows, test_size=n_test, random_state=seed,
    stratify=stratify)`.  rows: (n,), stratify: (n,) labels or None -> (train, test) rows.

    Raises ValueError where sklearn does (a class of one, a part smaller than the classes).
    """
    n = len(rows)
    n_train = n - n_test
    if not 0 < n_test < n:
        raise ValueError(f"test_size={n_test} should be in [1, {n - 1}] for {n} samples")
    rng = np.random.RandomState(seed)  # sklearn's check_random_state(int)
    if stratify is None:
        permutation = rng.permutation(n)
        return rows[permutation[n_test:]], rows[permutation[:n_test]]
    classes, y_indices, class_counts = np.unique(stratify, return_inverse=True, return_counts=True)
    if class_counts.min() < 2:
        raise ValueError("The least populated class in y has only 1 member, which is too few")
    if min(n_train, n_test) < len(classes):
        raise ValueError(f"train ({n_train}) and test ({n_test}) need one sample of each class")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        permutation = rng.permutation(class_counts[i])
        in_class = class_indices[i].take(permutation, mode="clip")
        train.extend(in_class[: n_i[i]])
        test.extend(in_class[n_i[i] : n_i[i] + t_i[i]])
    return rows[rng.permutation(train)], rows[rng.permutation(test)]


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState):
    """Samples per class, (C,) ints summing to n_draws: the floor of the proportional share, plus
    one for the largest remainders, ties broken at random (sklearn's approximation to the mode
    of the multivariate hypergeometric)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        # the distinct remainders, largest first (np.unique here would import numpy.ma: 15 ms)
        for value in sorted(set(remainder.tolist()), reverse=True):
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
