"""ffn: feed-forward networks whose every backward pass is written by hand."""

from collections.abc import Callable
from importlib import import_module
from typing import Any

__all__ = ["ACTIVATIONS", "ConfigError", "FeedForward", "Penalty"]
__version__ = "0.1.0"

# Resolved on first use: `python run.py --help` and a bad command line need Hydra, not torch.
_LAZY = {
    "ACTIVATIONS": "ffn.activations",
    "ConfigError": "ffn.errors",
    "FeedForward": "ffn.model",
    "Penalty": "ffn.penalties",
}


def lazy_attributes(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module's `__getattr__` that imports `table[name]` (a module path) on first use."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_attributes(__name__, _LAZY)
