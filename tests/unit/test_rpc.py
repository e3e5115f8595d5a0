"""The served dispatcher: long polls woken by requeues, STOP once the batch is over."""

import json
import logging
import sys
import threading
import types

import pytest

from fakes import FakeClock, ParkingCondition, tasks

from procfleet.master import rpc as rpc_module
from procfleet.master.leases import Dispatcher
from procfleet.master.batch import Batch
from procfleet.master.rpc import DispatcherService
from procfleet.shared.manager import PROTOCOL_VERSION, RUN, STOP
from procfleet.shared.protocol import (CRASH, ERROR, MAX_DEPTH, MAX_ERROR_CHARS, MAX_OUTCOMES,
                                      MAX_WORKER_ID, OK)

B = "batch-1"
#: in the wake-up tests, how long a parked long poll waits when nothing wakes it (MAX_LONG_POLL,
#: the heartbeat and the call's own wait): far longer than WOKEN, so only a wake-up passes
FALLBACK = 120.0
#: a woken long poll returns within this, generous on a busy machine
WOKEN = 10.0


def make(n=2, lease_timeout=5.0, heartbeat_interval=10.0, **kwargs):
    clock = FakeClock()
    d = Dispatcher(tasks(n), lease_timeout=lease_timeout, max_attempts=3, clock=clock)
    service = DispatcherService(d, heartbeat_interval=heartbeat_interval, batch=B, **kwargs)
    service.cond = ParkingCondition()       # the tests see when a long poll is parked
    return service, clock


@pytest.fixture
def no_fallback(monkeypatch):
    """A long poll that nothing wakes stays parked for FALLBACK s, not MAX_LONG_POLL's 1 s
    (which returned the tasks anyway, and hid a missing notify)."""
    monkeypatch.setattr(rpc_module, "MAX_LONG_POLL", FALLBACK)


def hello(service, worker):
    return service.hello(worker, {"protocol": PROTOCOL_VERSION})


def parked_exchange(service, *args):
    """Call service.exchange(*args) in a thread; return once it is parked in its long poll."""
    got = {}
    parked = service.cond.parked + 1
    waiter = threading.Thread(target=lambda: got.update(r=service.exchange(*args)), daemon=True)
    waiter.start()
    service.cond.wait_parked(parked)
    return waiter, got


def woken_reply(service, waiter, got):
    """The parked exchange's reply, which must come well before the fallback."""
    waiter.join(WOKEN)
    if waiter.is_alive():
        service.stop()                          # let the thread go before failing
        waiter.join(WOKEN)
        raise AssertionError(f"the parked long poll was not woken within {WOKEN:g} s "
                             f"(it would have waited {FALLBACK:g} s)")
    return got["r"]


def test_idle_worker_long_poll_is_woken_by_a_requeue(no_fallback):
    service, clock = make(n=1, heartbeat_interval=FALLBACK)
    hello(service, "a")
    hello(service, "b")
    tasks, state = service.exchange("a", B, [], 1, 0)
    assert state == RUN and len(tasks) == 1
    waiter, got = parked_exchange(service, "b", B, [], 1, FALLBACK)
    # b is parked in the long poll; a goes silent past its lease, and the master's tick requeues.
    clock.advance(6)
    service.dispatcher.touch("b")
    service.tick()
    assert woken_reply(service, waiter, got) == ([tasks[0]], RUN)


def test_long_poll_returns_empty_after_its_wait_when_nothing_comes():
    service, _ = make(n=1)
    service.exchange("a", B, [], 1, 0)
    assert service.exchange("b", B, [], 1, 0.05) == ([], RUN)


def test_batch_over_answers_stop_and_counts_who_heard_it():
    service, _ = make(n=1)
    hello(service, "a")
    hello(service, "b")
    [task], _ = service.exchange("a", B, [], 1, 0)
    assert service.exchange("a", B, [(task[0], OK, "0", None)], 1, 0) == ([], STOP)
    assert service.wait_workers_told(0) == ["b"]
    assert service.exchange("b", B, [], 1, 0) == ([], STOP)
    assert service.wait_workers_told(0) == []
    _leased, results, _events = service.tick()
    assert [seq for seq, _record, _ok in results] == [task[0]]


def test_worker_joining_after_the_batch_is_told_to_stop_in_hello():
    service, _ = make(n=0)
    assert hello(service, "late")["state"] == STOP
    assert service.wait_workers_told(0) == []


def test_other_protocol_version_is_refused_and_not_registered():
    service, _ = make()
    reply = service.hello("old", {"protocol": PROTOCOL_VERSION + 1})
    assert reply["state"] == STOP and reply["protocol"] == PROTOCOL_VERSION
    assert "old" not in service.dispatcher.workers


def test_goodbye_requeues_what_the_worker_held():
    service, _ = make(n=2)
    tasks, _ = service.exchange("a", B, [], 2, 0)
    service.goodbye("a")
    assert [t[0] for t in service.exchange("b", B, [], 2, 0)[0]] == [t[0] for t in tasks]


def test_hello_tells_the_batch_and_results_of_another_batch_are_ignored():
    service, _ = make(n=1)
    assert hello(service, "a")["batch"] == B
    [task], _ = service.exchange("a", B, [], 1, 0)
    service.exchange("a", "old-batch", [(task[0], OK, "0", None)], 0, 0)
    assert service.dispatcher.finished == 0


def test_malformed_outcomes_refuse_the_call_and_a_good_call_then_ends_the_batch():
    service, _ = make(n=1)
    [task], _ = service.exchange("a", B, [], 1, 0)
    with pytest.raises((TypeError, ValueError)):
        service.exchange("a", B, [("x", OK, "0", None), (task[0], "weird", "0", None), 5,
                                  (task[0], OK, "0", None)], 0, 0)
    assert not service.dispatcher.finished
    service.exchange("a", B, [(task[0], OK, "0", None)], 0, 0)
    assert service.dispatcher.done


def test_release_hands_back_unstarted_tasks_for_others():
    service, _ = make(n=3)
    leased, _ = service.exchange("a", B, [], 3, 0)
    with pytest.raises(TypeError):
        service.release("a", [leased[1][0], leased[2][0], "junk"])     # all or nothing
    assert service.release("a", [leased[1][0], leased[2][0]]) == 2
    again = service.exchange("b", B, [], 3, 0)[0] + service.exchange("b", B, [], 3, 0)[0]
    assert [t[0] for t in again] == [leased[1][0], leased[2][0]]   # a still counts: 1 each
    assert service.dispatcher.counters.released == 2


def test_wait_workers_leases_nothing_until_that_many_joined(no_fallback):
    service, _ = make(n=4, heartbeat_interval=FALLBACK, wait_workers=2)
    hello(service, "a")
    assert service.exchange("a", B, [], 4, 0) == ([], RUN)
    assert service.exchange("a", B, [], 4, 0.05) == ([], RUN)      # a long poll stays empty
    assert service.exchange("b", B, [], 4, 0) == ([], RUN)          # b asks before it joins
    waiter, got = parked_exchange(service, "a", B, [], 4, FALLBACK)
    hello(service, "b")                                             # the second one joins
    leased, state = woken_reply(service, waiter, got)
    assert state == RUN and len(leased) == 2                        # fair share of 4 over 2


def test_a_lost_reply_is_taken_back_at_the_next_call_and_wakes_a_parked_worker(no_fallback):
    """The separate-hosts hang: a's request reached the master, its reply did not; a calls
    again (new connection) saying the last reply it got. The master must not keep those tasks
    with a, whose heartbeats would keep the lease alive for ever."""
    service, _ = make(n=1, heartbeat_interval=FALLBACK)
    service.hello("a", {"protocol": PROTOCOL_VERSION, "session": "sa"})
    service.hello("b", {"protocol": PROTOCOL_VERSION, "session": "sb"})
    [task], _ = service.exchange("a", B, [], 1, 0, ("sa", 1, 0))      # reply lost
    waiter, got = parked_exchange(service, "b", B, [], 1, FALLBACK, ("sb", 1, 0))
    assert service.exchange("a", B, [], 0, 0, ("sa", 2, 0)) == ([], RUN)
    assert woken_reply(service, waiter, got) == ([task], RUN)
    assert service.dispatcher.counters.unacked == 1


def test_a_malformed_cursor_is_refused():
    service, _ = make(n=1)
    for cursor in (("s", "1", 0), ("s", 1), ["s", 1, 0], (1, 1, 0)):
        try:
            service.exchange("a", B, [], 1, 0, cursor)
        except (TypeError, ValueError):
            continue
        raise AssertionError(f"cursor {cursor!r} was accepted")
    assert service.dispatcher.running() == 0


def nested(depth):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


def nested_text(depth: int) -> str:
    """The JSON text of a value nested `depth` deep, as a worker sends an ok result."""
    return "[" * depth + "0" + "]" * depth


BAD_OUTCOMES = {
    "a value nested 1,500 deep": (1, OK, nested_text(1500), None),
    "a value nested MAX_DEPTH + 1 deep": (1, OK, nested_text(MAX_DEPTH + 1), None),
    "a value nested MAX_DEPTH + 1 deep in objects":
        (1, OK, '{"a":' * (MAX_DEPTH + 1) + "0" + "}" * (MAX_DEPTH + 1), None),
    "a value that is not text": (1, OK, 0, None),
    "a value that is a nested list": (1, OK, nested(3), None),
    "a value that is not JSON": (1, OK, "{1, 2}", None),
    "a value of NaN": (1, OK, "NaN", None),
    "a value of two values": (1, OK, "1 2", None),
    "a value with a line break": (1, OK, "[1,\n2]", None),
    "a value that is empty": (1, OK, "", None),
    "a seq of 5,000 digits": (10 ** 5000, OK, "0", None),
    "a seq past the batch": (10, OK, "0", None),
    "a negative seq": (-1, OK, "0", None),
    "a bool seq": (True, OK, "0", None),
    "a seq nested 1,500 deep": (nested(1500), OK, "0", None),
    "an unknown kind": (1, "weird", "0", None),
    "a kind that is not text": (1, [OK], "0", None),
    "an error that is not text": (1, ERROR, None, 5),
    "an error over MAX_ERROR_CHARS": (1, ERROR, None, "x" * (MAX_ERROR_CHARS + 1)),
    "a value on a crash": (1, CRASH, nested_text(1500), "boom"),
    "a value on an error": (1, ERROR, '"x"', "boom"),
    "three fields": (1, OK, "0"),
    "a list, not a tuple": [1, OK, "0", None],
    "not an outcome at all": 5,
}


@pytest.mark.parametrize("bad", BAD_OUTCOMES.values(), ids=BAD_OUTCOMES.keys())
def test_a_bad_outcome_refuses_the_whole_call_and_changes_nothing(bad):
    """An outcome that raised midway once left results written but not counted and the
    batch unable to end. Now the call is refused whole: nothing written, nothing counted."""
    service, _ = make(n=3)
    held, _ = service.exchange("a", B, [], 3, 0)
    good = [(t[0], OK, str(t[0] ** 2), None) for t in held]
    with pytest.raises((TypeError, ValueError)) as refused:
        service.exchange("a", B, [good[0], bad, good[2]], 0, 0)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 300
    _leased, results, _events = service.tick()
    d = service.dispatcher
    assert results == [] and d.finished == 0 and d.counters.ok == 0 and d.running() == 3
    assert service.exchange("a", B, good, 0, 0) == ([], STOP)     # a good call ends it
    _leased, results, _events = service.tick()
    assert len(results) == d.counters.ok == 3 and d.counters.duplicates == 0
    assert sorted(json.loads(line)["result"] for _seq, line, _ok in results) == \
        sorted(t[0] ** 2 for t in held)


def test_too_many_outcomes_in_one_call_are_refused_at_once():
    service, _ = make(n=1)
    with pytest.raises(ValueError, match="MAX_OUTCOMES"):
        service.exchange("a", B, [("x", OK, "0", None)] * (MAX_OUTCOMES + 1), 0, 0)


def test_a_well_formed_result_text_is_written_as_it_is():
    """Depth up to MAX_DEPTH passes, and the worker's JSON text goes into the result line
    unchanged: the master checks a peer's result, it never decodes it. (Text that is not JSON
    refuses the whole call: BAD_OUTCOMES.)"""
    service, _ = make(n=4)
    held, _ = service.exchange("a", B, [], 4, 0)
    seqs = [t[0] for t in held]
    texts = [nested_text(MAX_DEPTH), '"\\ud800 \u00e9"', '{"a":[1,2.5e300,null,true]}', '-0']
    service.exchange("a", B, [(seq, OK, text, None) for seq, text in zip(seqs, texts)], 0, 0)
    _leased, results, _events = service.tick()
    lines = {seq: line for seq, line, _ok in results}
    for seq, text in zip(seqs, texts):
        assert f'"result":{text},' in lines[seq]
        record = json.loads(lines[seq].encode("utf-8"))
        assert record["status"] == "ok" and record["result"] == json.loads(text)


BAD_IDS = ["", "w\nsummary: tasks=0 ok=0", "w\rx", "\x1b[2Jw", "x" * (MAX_WORKER_ID + 1), 5, None,
           b"w", ("w",)]


@pytest.mark.parametrize("worker_id", BAD_IDS, ids=repr)
def test_a_worker_id_is_printable_text_in_every_call(worker_id):
    """A newline in an id forged a `summary:` line; a non-text id crashed the batch's end."""
    service, _ = make(n=2)
    calls = [lambda: service.hello(worker_id, {"protocol": PROTOCOL_VERSION}),
             lambda: service.exchange(worker_id, B, [], 1, 0),
             lambda: service.exchange(worker_id, B, [], 1, 0, ("s", 1, 0)),
             lambda: service.release(worker_id, []),
             lambda: service.goodbye(worker_id)]
    for call in calls:
        with pytest.raises((TypeError, ValueError)):
            call()
    assert service.dispatcher.workers == {}
    hello(service, "x" * MAX_WORKER_ID)         # the longest id that is allowed
    assert list(service.dispatcher.workers) == ["x" * MAX_WORKER_ID]


@pytest.mark.parametrize("info", [
    {"protocol": PROTOCOL_VERSION, "python": "3.12\nsummary: forged"},
    {"protocol": PROTOCOL_VERSION, "python": ValueError("x")},
    {"protocol": PROTOCOL_VERSION, "session": ["s"]},
    {"protocol": 10 ** 5000},
    {("k",): 1},
    {f"k{i}": i for i in range(100)},
    ["protocol", PROTOCOL_VERSION],
], ids=["newline", "exception", "list", "huge int", "tuple key", "100 keys", "not a dict"])
def test_hello_info_is_plain_short_values(info):
    service, _ = make()
    with pytest.raises((TypeError, ValueError)):
        service.hello("a", info)
    assert service.dispatcher.workers == {}


@pytest.mark.parametrize("args", [
    ("a", B, [], -1, 0), ("a", B, [], True, 0), ("a", B, [], 1, float("nan")),
    ("a", B, [], 1, -1), ("a", B, [], 1, 1e9), ("a", 5, [], 1, 0), ("a", "b\nc", [], 1, 0),
    ("a", B, (), 1, 0), ("a", B, [], 1, 0, ("s" * 300, 1, 0)),
    ("a", B, [], 1, 0, ("s", 10 ** 5000, 0)), ("a", B, [], 1, 0, ("s", 1, -1)),
], ids=["negative want", "bool want", "nan wait", "negative wait", "huge wait", "batch int",
        "batch newline", "outcomes tuple", "long session", "huge call", "negative acked"])
def test_exchange_arguments_are_checked(args):
    service, _ = make()
    with pytest.raises((TypeError, ValueError)):
        service.exchange(*args)
    assert service.dispatcher.workers == {} and service.dispatcher.running() == 0


@pytest.mark.parametrize("seqs", [[10 ** 5000], [-1], [2], [True], list(range(MAX_OUTCOMES + 1)),
                                  (0,)], ids=["huge", "negative", "past the batch", "bool",
                                              "too many", "tuple"])
def test_release_is_all_or_nothing(seqs):
    service, _ = make(n=2)
    held, _ = service.exchange("a", B, [], 2, 0)
    with pytest.raises((TypeError, ValueError)):
        service.release("a", [held[0][0], *seqs] if type(seqs) is list else seqs)
    assert service.dispatcher.running() == 2 and service.dispatcher.counters.released == 0


def service_lines(caplog, level=logging.WARNING):
    return [r for r in caplog.records
            if r.name == "procfleet.master.rpc" and r.levelno >= level]


def test_a_flood_of_malformed_calls_is_counted_in_a_few_log_lines(caplog):
    """One call with 200k malformed outcomes once wrote 200k warning lines (21.8 MB)."""
    caplog.set_level(logging.INFO, logger="procfleet.master.rpc")
    service, clock = make(n=1)
    with pytest.raises((TypeError, ValueError)):
        service.exchange("a", B, [("x", OK, "0", None)] * 20_000, 0, 0)
    assert len(service_lines(caplog)) == 1
    for i in range(1000):
        with pytest.raises((TypeError, ValueError)):
            service.exchange("a", B, [(i, "weird", "0", None)], 0, 0)
        with pytest.raises((TypeError, ValueError)):
            service.hello(f"w\n{i}", {"protocol": PROTOCOL_VERSION})
        service.hello(f"old-{i}", {"protocol": PROTOCOL_VERSION - 1})
        service.exchange("a", "another-batch", [(0, OK, "0", None)], 0, 0)
    assert len(service_lines(caplog)) <= 40, "refused calls are throttled per kind"
    clock.advance(2)
    service.tick()
    text = "\n".join(r.getMessage() for r in service_lines(caplog))
    assert "(2001 in all)" in text                              # every refusal is counted
    assert "(1000 in all)" in text                              # each kind on its own
    assert all("\n" not in r.getMessage() for r in service_lines(caplog, logging.INFO))


def test_a_storm_of_new_ids_logs_joins_throttled(caplog):
    caplog.set_level(logging.INFO, logger="procfleet.master.rpc")
    service, _ = make(n=1)
    for i in range(3000):
        hello(service, f"fake-{i}")
    assert len(service_lines(caplog, logging.INFO)) <= 300


def test_the_dispatchers_events_are_throttled_per_kind():
    service, clock = make(n=200, lease_timeout=5.0)
    for i in range(100):
        service.exchange(f"w{i}", B, [], 1, 0)
    clock.advance(6)                                    # all 100 go silent past the lease
    _leased, _results, events = service.tick()
    assert 1 <= len(events) <= 21
    clock.advance(2)
    _leased, _results, events = service.tick()
    assert any("more silent events" in e and "(100 in all)" in e for e in events)


def test_progress_and_summary_read_a_snapshot_during_a_storm_of_joins(caplog, monkeypatch):
    """The 5 s progress line read the worker table without the lock; workers joining under
    new ids crashed the master (dictionary changed size during iteration)."""
    from procfleet.master import leases as leases_module
    monkeypatch.setattr(leases_module, "MAX_IDLE_WORKERS", 10 ** 9)   # joins all let in
    caplog.set_level(logging.INFO, logger="procfleet.master.batch")
    service, _ = make(n=10)
    d = service.dispatcher
    for i in range(3000):
        service.exchange(f"old-{i}", B, [], 0, 0)
    batch = Batch.__new__(Batch)
    batch.service, batch.dispatcher, batch.resumed, batch.done_at_start = service, d, False, 0
    batch.settings = types.SimpleNamespace(timeout=1.0)
    stop = threading.Event()
    errors = []

    def storm(prefix):
        for i in range(20_000):
            if stop.is_set():
                return
            try:
                hello(service, f"{prefix}-{i}")
            except Exception as exc:     # noqa: BLE001 - the test reports it
                errors.append(exc)
                return

    threads = [threading.Thread(target=storm, args=(f"s{n}",)) for n in range(4)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for _ in range(300):
            batch._progress(1.0)
            batch._report("timeout", 1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        sys.setswitchinterval(switch)
    assert not errors
    progress = [r.getMessage() for r in caplog.records if "progress:" in r.getMessage()]
    assert len(progress) == 300
    snap = service.snapshot()
    assert snap["workers"] == len(d.workers) and snap["alive_workers"] == len(d.workers)


def test_snapshot_is_plain_numbers_matching_the_dispatcher():
    service, _ = make(n=4)
    held, _ = service.exchange("a", B, [], 3, 0)
    service.exchange("a", B, [(held[0][0], OK, "0", None)], 0, 0)
    snap = service.snapshot()
    assert {k: snap[k] for k in ("total", "finished", "ok", "failed", "running",
                                 "alive_workers", "workers")} == {
        "total": 4, "finished": 1, "ok": 1, "failed": 0, "running": 2, "alive_workers": 1,
        "workers": 1}
    assert snap.pop("per_worker") == {"a": {"ok": 1, "failed": 0}}
    assert all(type(v) in (int, float, type(None)) for v in snap.values())


def test_workers_that_only_said_hello_do_not_shrink_the_fair_share():
    """3,000 idle ids kept alive by hello() made a batch 5-6x slower."""
    service, _ = make(n=4000)
    for i in range(3000):
        hello(service, f"idle-{i}")
    tasks, _ = service.exchange("a", B, [], 500, 0)
    assert len(tasks) == 500
