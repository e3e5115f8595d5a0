"""Connect retries: backoff with jitter, bounded by the timeout, no retry on a wrong key."""

import random
import threading

import pytest

from procfleet.shared.errors import AuthenticationFailed, MasterUnreachable
from procfleet.shared import connection


class FakeTime:
    """A clock and a stop event whose wait() advances the clock instead of sleeping."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []
        self.event = threading.Event()

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.pauses.append(seconds)
        self.now += seconds
        return self.event.is_set()

    def is_set(self) -> bool:
        return self.event.is_set()


def fake_connect(failures: int, error=MasterUnreachable("master x is not reachable")):
    calls = []

    def connect(address, authkey, timeout):
        assert 0 <= timeout <= connection.ATTEMPT_TIMEOUT
        calls.append(address)
        if len(calls) <= failures:
            raise error
        return "proxy"

    return connect, calls


def test_retries_with_growing_jittered_backoff_then_connects(monkeypatch):
    t = FakeTime()
    connect, calls = fake_connect(failures=6)
    monkeypatch.setattr(connection, "connect", connect)
    proxy = connection.connect_with_retry(("h", 1), b"k", 60, t, rng=random.Random(1),
                                          clock=t.clock)
    assert proxy == "proxy" and len(calls) == 7
    assert len(t.pauses) == 6
    for i, pause in enumerate(t.pauses):
        base = min(connection.INITIAL_BACKOFF * 2 ** i, connection.MAX_BACKOFF)
        assert 0.5 * base <= pause < base
    assert len(set(t.pauses)) == len(t.pauses)


def test_gives_up_at_the_timeout(monkeypatch):
    t = FakeTime()
    connect, calls = fake_connect(failures=10 ** 6)
    monkeypatch.setattr(connection, "connect", connect)
    with pytest.raises(MasterUnreachable, match="gave up after 30 s"):
        connection.connect_with_retry(("h", 1), b"k", 30, t, rng=random.Random(2), clock=t.clock)
    assert t.now == pytest.approx(30)
    assert max(t.pauses) < connection.MAX_BACKOFF
    assert len(calls) < 40


def test_wrong_key_is_not_retried(monkeypatch):
    t = FakeTime()
    connect, calls = fake_connect(failures=1, error=AuthenticationFailed("wrong key"))
    monkeypatch.setattr(connection, "connect", connect)
    with pytest.raises(AuthenticationFailed):
        connection.connect_with_retry(("h", 1), b"k", 60, t, clock=t.clock)
    assert len(calls) == 1 and t.pauses == []


def test_stop_while_retrying_returns_none(monkeypatch):
    t = FakeTime()
    t.event.set()
    connect, calls = fake_connect(failures=10)
    monkeypatch.setattr(connection, "connect", connect)
    assert connection.connect_with_retry(("h", 1), b"k", 60, t, clock=t.clock) is None
