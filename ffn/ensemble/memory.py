"""The sweep process told to keep the memory it frees: an ensemble's tensors are E times a run's.

glibc's malloc maps a large block fresh from the kernel and unmaps it on free (the threshold
grows with what was freed, but the heap's top is trimmed back past twice that): each epoch's
evaluation of a stack then faults its pages in again. 32 digits members' hidden layer,
(32, 1168, 128) float32, is 19 MB; the 32-job digits sweep took 785k page faults and 2.7-3.3 s
of system time, 156k and 1.5 s with the thresholds below (an evaluation 43 -> 35 ms, one
thread). Raised once, in the ensemble's process only; where malloc is not glibc's, or the user
tuned it (MALLOC_*_ environment variables, GLIBC_TUNABLES), nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
# Blocks below this come from the heap, reused once freed: glibc's own ceiling for its dynamic
# threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX), fixed there
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 256 * 2**20  # free memory at the heap's top kept, up to this
_TUNED_BY_USER = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (process-wide); True if they were set."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _TUNED_BY_USER):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
