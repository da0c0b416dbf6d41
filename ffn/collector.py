"""Python's cyclic garbage collector, kept off the objects that the imports make.

Importing torch, Hydra and TensorBoard makes millions of objects that live as long as the
process; every full collection walks all of them (70-240 ms each on a 2-core machine, four of
them in a default run, and 50 younger ones: 0.8-0.9 s of a 5-10 s run, measured with
gc.callbacks). So `python run.py` pauses the collector while it imports (`pause`), and the
first run of the process freezes what the imports made (gc.freeze: never scanned again, never
freed before the exit, which frees them anyway) and resumes collecting (`imports_done`): the
loop's own garbage is collected as before, and a full collection walks the run's objects only.
A process that did not call `pause` (tests, the estimators, a notebook) is left as it is.
"""

from __future__ import annotations

import gc

_PAUSED = False  # whether `pause` turned the collector off (and nobody has turned it back on)


def pause() -> None:
    """Stop collecting cycles until `imports_done` (only if collecting is on)."""
    global _PAUSED
    if gc.isenabled():
        gc.disable()
        _PAUSED = True


def imports_done() -> None:
    """After `pause`: freeze every object alive now, and collect again. Otherwise nothing."""
    global _PAUSED
    if not _PAUSED:
        return
    _PAUSED = False
    gc.freeze()
    gc.enable()
