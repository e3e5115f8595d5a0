"""The manager server's admission rules, kept apart from sockets so they can be tested alone.

`PendingHandshakes` holds the connections that have not authenticated yet: how many there are
(they are capped) and when each must be cut off. `ByteBudget` bounds the bytes of large
messages being read and decoded at once. `ThrottledCounter` counts every refusal of one kind
but lets only some of them have a log line, so a flood cannot flood the log. (Which requests a
peer may make is in `requests`.)
"""

import threading
import time
from collections.abc import Callable, Hashable



class PendingHandshakes:
    """Connections accepted but not yet authenticated: at most `limit`, each with a deadline.

    A connection is admitted before its thread starts and finished (whatever the outcome) before
    its socket is closed; `cut_overdue` runs its callback under the same lock, so it never
    touches a socket that was closed (and whose descriptor may already be reused).
    """

    def __init__(self, limit: int, timeout: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._deadlines: dict[Hashable, float] = {}
        self._overdue: set[Hashable] = set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._deadlines)

    def admit(self, key: Hashable) -> bool:
        """Start the clock for `key`; False if `limit` connections are already pending."""
        with self._lock:
            if len(self._deadlines) >= self.limit:
                return False
            self._deadlines[key] = self.clock() + self.timeout
            return True

    def finish(self, key: Hashable) -> bool:
        """The handshake of `key` is over; True if it had been cut off for being overdue."""
        with self._lock:
            self._deadlines.pop(key, None)
            if key in self._overdue:
                self._overdue.discard(key)
                return True
            return False

    def cut_overdue(self, cut: Callable[[Hashable], None], everything: bool = False) -> int:
        """Call `cut` once for each connection past its deadline (or for all); return how many."""
        with self._lock:
            now = self.clock()
            due = [key for key, deadline in self._deadlines.items()
                   if key not in self._overdue and (everything or deadline <= now)]
            for key in due:
                self._overdue.add(key)
                cut(key)
            return len(due)


class ByteBudget:
    """The bytes of large messages being read and decoded at once, across all connections.

    A connection takes its message's size before reading the body and gives it back once the
    message is decoded; while `limit` bytes are taken, the next one waits (up to a timeout).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, size: int, timeout: float) -> bool:
        """Take `size` bytes, waiting up to `timeout` s; False if they cannot be had."""
        if size > self.limit:
            return False
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + size <= self.limit, timeout):
                return False
            self.used += size
            self.peak = max(self.peak, self.used)
            return True

    def release(self, size: int) -> None:
        if size:
            with self._cond:
                self.used -= size
                self._cond.notify_all()


class ThrottledCounter:
    """Counts every event of one kind and says which of them may have a log line of their own.

    Up to `burst` events are logged one by one; the allowance refills by one every `refill`
    seconds. The others are only counted, and `summary()` hands out their number at most once
    every `interval` seconds.
    """

    def __init__(self, one: str = "event", many: str = "events", burst: int = 10,
                 refill: float = 6.0, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.one, self.many = one, many       # what one event is called in a log line, and several
        self.burst = burst
        self.refill = refill
        self.interval = interval
        self.clock = clock
        self.total = 0
        self._lock = threading.Lock()
        self._allowance = float(burst)
        self._updated = self._last_summary = clock()
        self._suppressed = 0

    def record(self) -> tuple[int, bool]:
        """Count one event; return (events so far, whether this one gets its own log line)."""
        with self._lock:
            self.total += 1
            now = self.clock()
            self._allowance = min(self.burst,
                                  self._allowance + (now - self._updated) / self.refill)
            self._updated = now
            if self._allowance >= 1:
                self._allowance -= 1
                return self.total, True
            self._suppressed += 1
            return self.total, False

    def summary(self) -> tuple[int, int]:
        """(events not logged since the last summary, events so far) if a summary is due, else
        (0, events so far)."""
        with self._lock:
            now = self.clock()
            if not self._suppressed or now - self._last_summary < self.interval:
                return 0, self.total
            suppressed, self._suppressed = self._suppressed, 0
            self._last_summary = now
            return suppressed, self.total
