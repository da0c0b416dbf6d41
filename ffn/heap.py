"""glibc's heap kept during a training loop, so that the step's tensors reuse pages, not fault them.

Every graph-free step allocates its activations, deltas and gradients anew (torch's CPU
allocator is malloc), and frees them when the step ends. glibc hands free memory at the top of
its heap back to the kernel once more than its trim threshold is free, so the next step's
tensors fault every page in again: a 100-iteration L-BFGS fit on 5000 x 10 with 64 hidden units
took 269,000 minor page faults and 0.6 s of system time out of 1.1 s of CPU; with 256 MiB of top
pad, 3,400-7,800 faults and 0.34-0.40 s in all (tests/test_sklearn.py::
test_lbfgs_fit_reuses_pages_across_steps checks the faults; docs/sklearn.md
has the figures). scikit-learn's MLP reuses its own buffers, so it never meets this.

Inside `kept_heap`, M_TOP_PAD is how much free memory glibc keeps at the top of the heap when it
trims (only pages the loop touched are mapped), and `malloc_trim(0)` returns it at the end.
Tensors below 32 MiB come from the heap, and the heap is trimmed once 64 MiB are free: those
two stay for the rest of the process (they are where glibc's own adaptive thresholds end up,
and any mallopt stops the adapting).
Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # malloc.h
DEFAULT_TOP_PAD = 128 * 1024  # glibc's default (mallopt(3))
LOOP_TOP_PAD = 256 * 1024 * 1024
# Where glibc's own adaptive thresholds end up on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX, and
# twice that for trimming), once it has freed a chunk that large
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, if it is glibc (mallopt and malloc_trim are glibc's)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (absent from musl, macOS)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def kept_heap(top_pad: int = LOOP_TOP_PAD) -> Iterator[None]:
    """Inside, freed memory up to `top_pad` bytes stays in the heap; after, it is given back."""
    libc = _glibc()
    if libc is None:
        yield
        return
    # Below the threshold a tensor comes from the heap (whose top the pad keeps), above it from
    # its own mmap, faulted in anew each time: glibc's adaptive threshold gets there only after
    # the first free of each size, and stops adapting once any mallopt is set.
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    libc.mallopt(M_TOP_PAD, top_pad)
    try:
        yield
    finally:
        libc.mallopt(M_TOP_PAD, DEFAULT_TOP_PAD)
        libc.malloc_trim(0)
