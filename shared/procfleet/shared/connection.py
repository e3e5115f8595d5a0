"""Reaching the master: retries with exponential backoff and jitter, bounded by a deadline."""

import logging
import random
import threading
import time

from .backoff import backoff_delay
from .errors import MasterUnreachable
from .manager import ATTEMPT_TIMEOUT, DispatcherProxy, connect
from .settings import format_address

log = logging.getLogger(__name__)

INITIAL_BACKOFF = 0.1
MAX_BACKOFF = 5.0


def connect_with_retry(address: tuple[str, int], authkey: bytes, timeout: float,
                       stop: threading.Event, *, rng: random.Random | None = None,
                       clock=time.monotonic) -> DispatcherProxy | None:
    """Connect, retrying until `timeout` seconds have passed; None if `stop` was set meanwhile.

    A name that does not resolve yet is retried like a refused port (orchestrators create a
    service's DNS name after its clients may have started). Each kind of failure is logged
    once, not once per attempt. A wrong key (AuthenticationFailed) is not retried: no amount
    of waiting fixes it.
    """
    rng = rng or random.Random()
    started = clock()
    deadline = started + timeout
    attempt = 0
    logged: set[type] = set()
    while not stop.is_set():
        attempt += 1
        try:
            return connect(address, authkey, timeout=min(ATTEMPT_TIMEOUT, deadline - clock()))
        except MasterUnreachable as exc:
            remaining = deadline - clock()
            if remaining <= 0:
                raise type(exc)(
                    f"{exc}; gave up after {clock() - started:.0f} s and {attempt} attempts "
                    f"({exc.hint})") from None
            if type(exc) not in logged:
                logged.add(type(exc))
                log.info("%s; retrying for up to %.0f s", exc, remaining)
            stop.wait(min(remaining, backoff_delay(attempt, INITIAL_BACKOFF, MAX_BACKOFF,
                                                   rng.random)))
    log.info("stopped while waiting for master %s", format_address(address))
    return None
