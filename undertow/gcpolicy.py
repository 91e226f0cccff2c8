"""CPython's cyclic garbage collector, tuned while records are in flight.

A sync holds its batches' records (thousands of dicts each) for seconds: while a job is
polled, while a request is paced, while the next batch is shaped. With CPython's default
thresholds (a collection every 700 new container objects, a full one whenever the
survivors grew by a quarter) every full collection walks all of them again: a 270,000-
record Klaviyo sync spent half of Undertow's CPU seconds in the collector (22 full
collections of ~300,000 objects, 4.4 of 9.6 s), and a fake holding the account's records
more than half of its own (5.3 of 8.3 s). Records are JSON values: they hold no reference
cycles and are freed by reference counting as soon as a batch is done, so collecting
less often loses no memory that matters while a run lasts.

:func:`batch_collection` raises the thresholds for the duration of a block (a run, a
served fake) and puts back what was there when the last block ends; blocks may nest and
run on several threads at once (the thresholds are the process's). Thresholds already
higher, or automatic collection switched off (a threshold of 0), are left as they are.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

THRESHOLDS = (50_000, 20, 10)
"""Generation 0 collected every 50,000 new container objects (default 700), generation 1
every 20 of those, a full collection every 10 of those (and only when the survivors
grew by a quarter, as always)."""

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def batch_collection() -> Iterator[None]:
    """Collect cyclic garbage at :data:`THRESHOLDS` inside the block (see the module)."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            current = gc.get_threshold()
            # only ever raised: 0 (automatic collection off) or higher settings are kept
            if 0 < current[0] < THRESHOLDS[0]:
                _saved = (current[0], current[1], current[2])
                gc.set_threshold(*THRESHOLDS)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None


__all__ = ["THRESHOLDS", "batch_collection"]
