"""Datasets for ffn: scikit-learn's shipped sets, MNIST-1D, synthetic sets and the user's files.

`load_dataset(cfg, seed=...)` returns train/val/test tensors, split with the seed (stratified
for classification) and standardised with statistics of the train part only.
"""

from ffn.data.config import DatasetConfig
from ffn.data.dataset import Dataset
from ffn.data.load import DATASETS, load_dataset

__all__ = ["DATASETS", "Dataset", "DatasetConfig", "load_dataset"]
