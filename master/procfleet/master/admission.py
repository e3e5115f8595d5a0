"""The manager server's admission rules, kept apart from sockets so they can be tested alone.

`PendingHandshakes` holds the connections that have not authenticated yet: how many there are
(they are capped) and when each must be cut off. `opening_refusal` and `call_refusal` say which
requests an authenticated peer may make: only what a worker needs. `ThrottledCounter` counts
every refusal of one kind but lets only some of them have a log line, so a flood cannot flood
the log.
"""

import threading
import time
from collections.abc import Callable, Hashable

from procfleet.shared.manager import DISPATCHER, DISPATCHER_METHODS


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


def opening_refusal(request) -> str | None:
    """Why the first request on a connection is refused, or None if it is one a worker sends.

    A worker opens each connection with one request, as FleetManager and its proxy send them:
    `dummy` (BaseManager.connect), `create` of the dispatcher's typeid (FleetManager.dispatcher)
    or `accept_connection` (the proxy's own connection, which then carries its calls; the
    proxy is made with incref=False, so no `incref` is ever sent, nor a `decref`).
    """
    wrong = _misshapen(request)
    if wrong:
        return wrong
    _ident, name, args, kwds = request
    if kwds:
        return f"{_shown(name)} with keyword arguments: no request takes any"
    if name == "dummy" and not args:
        return None
    if name == "create" and len(args) == 1 and args[0] == DISPATCHER:
        return None
    if name == "accept_connection" and len(args) == 1 and isinstance(args[0], str):
        return None
    if name == "create":
        return f"create of {_shown(args[0] if len(args) == 1 else args)}: only " \
               f"{DISPATCHER!r} is served"
    return f"{_shown(name)} with {len(args)} arguments: a connection may open only with " \
           "dummy(), create('dispatcher') or accept_connection(name)"


def call_refusal(request, dispatcher_id: str) -> str | None:
    """Why a call on a served (accepted) connection is refused, or None if it may be made.

    Only the dispatcher's own methods (DISPATCHER_METHODS) on its id: no '#GETVALUE', '__str__',
    '__repr__' or other fallbacks of the stock server, and no other object.
    """
    wrong = _misshapen(request)
    if wrong:
        return wrong
    ident, name, _args, _kwds = request
    if ident != dispatcher_id:
        return f"a call on object {_shown(ident)}: only the dispatcher ({dispatcher_id}) is served"
    if name not in DISPATCHER_METHODS:
        return f"{_shown(name)} is not a dispatcher method ({', '.join(DISPATCHER_METHODS)})"
    return None


def _misshapen(request) -> str | None:
    """Why `request` is not (ident, name: str, args: tuple or list, kwds: dict), or None."""
    if not isinstance(request, tuple) or len(request) != 4:
        return f"not a request (ident, name, args, kwds) but {_shown(request)}"
    _ident, name, args, kwds = request
    if not isinstance(name, str) or not isinstance(args, (tuple, list)) \
            or not isinstance(kwds, dict):
        return f"a request of {_shown(name)} whose name, arguments or keyword arguments " \
               "have the wrong type"
    return None


def _shown(value) -> str:
    """A peer's value as it may go into a log line: a short str repr (one line), else its type."""
    if isinstance(value, str) or value is None:
        return repr(value if value is None or len(value) <= 60 else value[:60] + "...")
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a value of type {type(value).__name__}"


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
