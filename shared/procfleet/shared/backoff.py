"""Exponential backoff with jitter, written once: reconnects, task retries and restarts use it."""

import random
from collections.abc import Callable

#: past this many doublings every delay is at its cap anyway (and 2 ** n stays a small number)
_MAX_DOUBLINGS = 64


def backoff_delay(attempt: int, first: float, cap: float,
                  rng: Callable[[], float] = random.random) -> float:
    """The pause before retry number `attempt` (1 for the first): `first` doubled for each
    earlier retry, at most `cap`, times a jitter factor in [0.5, 1) so that many retrying at
    once spread out, and none waits longer than the cap."""
    delay = min(first * 2.0 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS), cap)
    return delay * (0.5 + rng() / 2)
