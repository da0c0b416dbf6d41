"""ffn: feed-forward networks whose every backward pass is written by hand."""

from ffn.activations import ACTIVATIONS
from ffn.errors import ConfigError
from ffn.model import FeedForward
from ffn.penalties import Penalty

__all__ = ["ACTIVATIONS", "ConfigError", "FeedForward", "Penalty"]
__version__ = "0.1.0"
