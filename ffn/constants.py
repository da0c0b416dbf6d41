"""Names and bounds that several modules check against, one home each; torch-free, so that the
config schema and `python run.py --help` import them without loading torch."""

from __future__ import annotations

TASKS = ("classification", "regression")  # ffn.losses.LOSSES holds one loss for each
DTYPES = ("float32", "float64")  # trainer.dtype: names of torch dtypes
MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which scikit-learn uses, takes no more
