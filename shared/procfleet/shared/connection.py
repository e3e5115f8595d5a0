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

    A wrong key (AuthenticationFailed) is not retried: no amount of waiting fixes it.
    """
    rng = rng or random.Random()
    started = clock()
    deadline = started + timeout
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            return connect(address, authkey, timeout=min(ATTEMPT_TIMEOUT, deadline - clock()))
        except MasterUnreachable as exc:
            remaining = deadline - clock()
            if remaining <= 0:
                raise MasterUnreachable(
                    f"{exc}; gave up after {clock() - started:.0f} s and {attempt} attempts "
                    "(is the master running? see --master and --connect-timeout)") from None
            if attempt == 1:
                log.info("%s; retrying for up to %.0f s", exc, remaining)
            stop.wait(min(remaining, backoff_delay(attempt, INITIAL_BACKOFF, MAX_BACKOFF,
                                                   rng.random)))
    log.info("stopped while waiting for master %s", format_address(address))
    return None
