"""Connect retries: backoff with jitter, bounded by the timeout, no retry on a wrong key, a
name that resolves late retried like a refused port and logged once."""

import logging
import random
import socket
import threading

import pytest

from procfleet.shared import connection, manager
from procfleet.shared.errors import (EXIT_UNFINISHED, AuthenticationFailed,
                                     MasterNameUnresolved, MasterUnreachable)


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


def failing_then_connecting(errors: list[Exception]):
    calls = []

    def connect(address, authkey, timeout):
        calls.append(address)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "proxy"

    return connect, calls


def test_a_name_that_resolves_late_is_retried_and_logged_once(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=connection.__name__)
    t = FakeTime()
    unresolved = MasterNameUnresolved("master master:50000 is not reachable: its name "
                                      "'master' does not resolve (Name or service not known)")
    refused = MasterUnreachable("master master:50000 is not reachable: Connection refused")
    connect, calls = failing_then_connecting([unresolved] * 5 + [refused] * 3)
    monkeypatch.setattr(connection, "connect", connect)
    assert connection.connect_with_retry(("master", 50000), b"k", 60, t, clock=t.clock) == "proxy"
    assert len(calls) == 9
    # one line per kind of failure, not one per attempt
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [str(unresolved),
                                                                      str(refused)]
    assert "retrying for up to 60 s" in caplog.records[0].getMessage()


def test_a_name_that_never_resolves_gives_up_naming_it(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=connection.__name__)
    t = FakeTime()
    unresolved = MasterNameUnresolved("master nosuchhost.invalid:1 is not reachable: its name "
                                      "'nosuchhost.invalid' does not resolve (Name or service "
                                      "not known)")
    connect, calls = failing_then_connecting([unresolved] * 10 ** 6)
    monkeypatch.setattr(connection, "connect", connect)
    with pytest.raises(MasterNameUnresolved) as raised:
        connection.connect_with_retry(("nosuchhost.invalid", 1), b"k", 20, t, clock=t.clock)
    message = str(raised.value)
    assert "'nosuchhost.invalid' does not resolve" in message
    assert "gave up after 20 s" in message and "check the name in --master" in message
    assert raised.value.exit_code == EXIT_UNFINISHED
    assert t.now == pytest.approx(20) and len(caplog.records) == 1


def test_connect_says_which_name_does_not_resolve(monkeypatch):
    def getaddrinfo(host, *_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(MasterNameUnresolved,
                       match=r"master late-master:50000 is not reachable: its name "
                             r"'late-master' does not resolve \(Name or service not known\)"):
        manager.connect(("late-master", 50000), b"k" * 16, timeout=1)
