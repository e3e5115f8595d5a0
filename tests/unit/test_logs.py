"""Logging: --log-format json (one object per line), and -v's debug lines about busy paths,
summed so that a worker's thousands of calls a second are one line a second."""

import io
import json
import logging
import sys

import pytest

from fakes import FakeClock, tasks

from procfleet.master.leases import Dispatcher
from procfleet.master.rpc import DispatcherService
from procfleet.shared.logs import JSON, TEXT, Tally, configure_logging, json_logs
from procfleet.shared.protocol import OK

B = "batch-1"


@pytest.fixture
def stderr(capsys):
    """What the test writes to sys.stderr (capsys's, set for the test's own body); the root
    logger is put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield lambda: capsys.readouterr().err
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_time_actor_level_message_and_fields(stderr):
    configure_logging(0, "worker w-1", JSON)
    log = logging.getLogger("procfleet.test")
    log.info("leased %d tasks", 32, extra={"worker": "w-1", "count": 32})
    log.debug("not shown without -v")
    try:
        raise RuntimeError("kaput\nsecond line")
    except RuntimeError:
        log.warning("task failed: %s", "x\ny", exc_info=True)
    lines = stderr().splitlines()
    assert len(lines) == 2, lines                   # a traceback stays inside its object
    first, second = map(json.loads, lines)
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert {k: first[k] for k in ("actor", "level", "logger", "message", "worker", "count")} == {
        "actor": "worker w-1", "level": "info", "logger": "procfleet.test",
        "message": "leased 32 tasks", "worker": "w-1", "count": 32}
    assert second["level"] == "warning" and second["message"] == "task failed: x\ny"
    assert "RuntimeError: kaput" in second["traceback"]
    assert json_logs()


def test_text_lines_keep_the_actor_prefix_and_debug_needs_v(stderr):
    configure_logging(1, "master", TEXT)
    logging.getLogger("procfleet.test").debug("a %s line", "debug")
    assert stderr().rstrip().endswith(" master: a debug line")
    assert not json_logs()


def test_the_handler_writes_to_sys_stderr_as_it_is_now(stderr, monkeypatch):
    """A live progress bar puts a stand-in on sys.stderr while it runs: log lines go there."""
    configure_logging(0, "master")
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("procfleet.test").info("above the bar")
    monkeypatch.undo()
    assert "above the bar" in later.getvalue() and stderr() == ""


def test_tally_sums_a_key_for_one_line_per_interval():
    clock = FakeClock()
    tally = Tally(interval=1.0, clock=clock)
    for _ in range(500):
        assert tally.add("w1", calls=1, results=4) is None
        clock.advance(0.001)
    clock.advance(0.5)
    assert tally.add("w2", calls=1) is None
    clock.advance(0.5)
    sums = tally.add("w1", calls=1, results=4)
    assert sums == {"calls": 501, "results": 2004, "seconds": pytest.approx(1.5)}
    assert tally.due() == []                    # w2's window is 0.5 s old
    clock.advance(0.6)
    assert [(key, s["calls"]) for key, s in tally.due()] == [("w2", 1)]
    assert tally.due() == [] and tally.open == {}
    tally.add("w3", calls=1)
    assert tally.due() == [] and [k for k, _ in tally.due(everything=True)] == ["w3"]


def debug_service(caplog, n=10_000):
    caplog.set_level(logging.DEBUG, logger="procfleet.master.rpc")
    clock = FakeClock()
    d = Dispatcher(tasks(n), lease_timeout=5.0, max_attempts=3, clock=clock)
    return DispatcherService(d, heartbeat_interval=1.0, batch=B), clock


def debug_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.DEBUG and "calls in" in r.message]


def test_v_logs_each_workers_calls_once_a_second_however_many(caplog):
    """-v once added nothing during a batch; one line per call would drown a 200k-task one."""
    service, clock = debug_service(caplog)
    for _ in range(1000):
        for worker in ("a", "b"):
            held, _ = service.exchange(worker, B, [], 4, 0)
            service.exchange(worker, B, [(t[0], OK, "0", None) for t in held], 0, 0)
        clock.advance(0.0015)           # 1.5 s in all
    lines = debug_lines(caplog)
    assert sorted(r.worker for r in lines) == ["a", "b"]
    a = next(r for r in lines if r.worker == "a")
    # the line closes a 1 s window on a lease call: every pair of calls before it, plus it
    assert a.results == a.leased == 4 * 667 and a.calls == 2 * 667 + 1
    assert (f"worker a: {a.calls} calls in 1.0 s: {a.results} results in, {a.leased} tasks "
            "leased; 0 long polls") in a.message
    caplog.clear()
    clock.advance(1.0)
    service.tick()                      # a quiet worker's last calls still get their line
    assert sorted(r.worker for r in debug_lines(caplog)) == ["a", "b"]
    caplog.clear()
    clock.advance(5.0)
    service.tick()
    assert debug_lines(caplog) == []


def test_v_says_how_long_polls_woke(caplog):
    service, clock = debug_service(caplog, n=1)
    service.exchange("a", B, [], 4, 0)
    service.exchange("b", B, [], 4, 0.2)          # nothing left to lease: the poll times out
    clock.advance(1.0)
    service.tick()
    [line] = [r for r in debug_lines(caplog) if r.worker == "b"]
    assert (line.polls, line.woke, line.leased) == (1, 0, 0)
    assert "1 long polls (0 woke with tasks" in line.message


def test_without_v_nothing_is_tallied(caplog):
    caplog.set_level(logging.INFO, logger="procfleet.master.rpc")
    d = Dispatcher(tasks(10), lease_timeout=5.0, max_attempts=3, clock=FakeClock())
    service = DispatcherService(d, heartbeat_interval=1.0, batch=B)
    assert service.call_tally is None
