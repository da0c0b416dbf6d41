"""Datasets for ffn: scikit-learn's shipped sets, MNIST-1D, synthetic sets and the user's files.

`load_dataset(cfg, seed=...)` returns train/val/test tensors, split with the seed (stratified
for classification) and standardised with statistics of the train part only.
"""

from ffn import lazy_attributes
from ffn.data.config import DatasetConfig

__all__ = ["DATASETS", "Dataset", "DatasetConfig", "load_dataset"]

# The schema alone is imported eagerly (the config needs it before anything runs); the loaders
# bring scikit-learn and torch, seconds of imports that `--help` should not pay.
_LAZY = {
    "DATASETS": "ffn.data.load",
    "load_dataset": "ffn.data.load",
    "Dataset": "ffn.data.dataset",
}

__getattr__ = lazy_attributes(__name__, _LAZY)
