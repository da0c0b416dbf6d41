"""The optimizer group's choices, as one table: what each `conf/optimizer/<name>.yaml` builds.

The runner composes the YAML files (comments and all, what `python run.py --help` lists); the
estimators (`ffn.sklearn`) read this table, which needs no conf folder beside an installed
package. `tests/test_sklearn.py::test_optimizer_table_is_the_conf_group` composes every file of
the group and checks it against its entry, and that every entry has its file. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class OptimizerChoice:
    """One `optimizer=` choice: its `optimizer` node, and whether it trains on the whole set."""

    node: MappingProxyType[str, Any]  # {"_target_": "torch.optim.SGD", "lr": 0.05, ...}
    full_batch: bool = False  # the file also sets trainer.full_batch (one step an epoch)

    @property
    def target(self) -> str:
        return self.node["_target_"]

    def settings(self) -> dict[str, Any]:
        """The keywords the file passes the class: the node without `_target_`."""
        return {k: v for k, v in self.node.items() if k != "_target_"}


def _choice(target: str, full_batch: bool = False, **settings: Any) -> OptimizerChoice:
    return OptimizerChoice(MappingProxyType({"_target_": target, **settings}), full_batch)


OPTIMIZERS: dict[str, OptimizerChoice] = {
    # the notes' gradient descent: the whole training set every step
    "gd": _choice("torch.optim.SGD", full_batch=True, lr=0.5),
    "sgd": _choice("torch.optim.SGD", lr=0.05),
    # fused: torch's one-kernel update, where its default loops ops per tensor in Python
    "momentum": _choice("torch.optim.SGD", lr=0.05, momentum=0.9, fused=True),
    "adam": _choice("torch.optim.Adam", lr=3.0e-3, fused=True),
    # one iteration an epoch, scipy's history of 10, torch's lr 1 (the line search's first try)
    "lbfgs": _choice(
        "torch.optim.LBFGS",
        full_batch=True,
        lr=1.0,
        max_iter=1,
        max_eval=25,
        history_size=10,
        line_search_fn="strong_wolfe",
    ),
}
