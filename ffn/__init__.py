"""ffn: feed-forward networks whose every backward pass is written by hand."""

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ffn' has no attribute {name!r}")
