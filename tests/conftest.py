"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from penalty_cases import GROUP_LASSO

from ffn.penalties import PENALTIES


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: a second intra-op thread only spins, and on a busy 2-core box costs 5x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def penalty_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """PENALTIES with the tests' group lasso in it (tests/penalty_cases.py), for one test."""
    monkeypatch.setitem(PENALTIES, GROUP_LASSO.name, GROUP_LASSO)
