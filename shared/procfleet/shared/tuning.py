"""Interpreter settings for procfleet's busy processes: the master, a worker and its task processes.

Each of them unpickles and builds thousands of small tuples, lists and dicts per second (a lease
of 2,000 tasks is 6,000 container objects), and CPython's young-generation collector runs every
700 allocations by default: a worker spent a fifth of its time in collections that find nothing,
since task records hold no reference cycles. Collecting every GC_THRESHOLD allocations instead
keeps cycles (tracebacks make some) bounded while the collector is no longer in the hot path.
"""

import gc

#: allocations between young-generation collections (CPython's default: 700)
GC_THRESHOLD = 50_000


def tune_gc() -> None:
    """Freeze what is loaded so far (it lives as long as the process) and collect less often."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
