"""The served dispatcher: long polls woken by requeues, STOP once the batch is over."""

import threading

from procfleet.master.dispatcher import Dispatcher
from procfleet.master.service import DispatcherService
from procfleet.shared.manager import PROTOCOL_VERSION, RUN, STOP
from procfleet.shared.records import OK
from test_dispatcher import FakeClock, tasks

B = "batch-1"


def make(n=2, lease_timeout=5.0):
    clock = FakeClock()
    d = Dispatcher(tasks(n), lease_timeout=lease_timeout, max_attempts=3, clock=clock)
    return DispatcherService(d, heartbeat_interval=10.0, batch=B), clock


def hello(service, worker):
    return service.hello(worker, {"protocol": PROTOCOL_VERSION})


def test_idle_worker_long_poll_is_woken_by_a_requeue():
    service, clock = make(n=1)
    hello(service, "a")
    hello(service, "b")
    tasks, state = service.exchange("a", B, [], 1, 0)
    assert state == RUN and len(tasks) == 1
    got = {}
    waiter = threading.Thread(target=lambda: got.update(r=service.exchange("b", B, [], 1, 30)))
    waiter.start()
    # b is parked in the long poll; a goes silent past its lease, and the master's tick requeues.
    with service.cond:
        service.cond.wait_for(lambda: len(service.cond._waiters) > 0, timeout=5)
    clock.advance(6)
    service.dispatcher.touch("b")
    service.tick()
    waiter.join(5)
    assert not waiter.is_alive()
    assert got["r"] == ([tasks[0]], RUN)


def test_long_poll_returns_empty_after_its_wait_when_nothing_comes():
    service, _ = make(n=1)
    service.exchange("a", B, [], 1, 0)
    assert service.exchange("b", B, [], 1, 0.05) == ([], RUN)


def test_batch_over_answers_stop_and_counts_who_heard_it():
    service, _ = make(n=1)
    hello(service, "a")
    hello(service, "b")
    [task], _ = service.exchange("a", B, [], 1, 0)
    assert service.exchange("a", B, [(task[0], OK, 0, None)], 1, 0) == ([], STOP)
    assert service.wait_workers_told(0) == ["b"]
    assert service.exchange("b", B, [], 1, 0) == ([], STOP)
    assert service.wait_workers_told(0) == []
    _leased, results, _events = service.tick()
    assert [seq for seq, _record in results] == [task[0]]


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
    service.exchange("a", "old-batch", [(task[0], OK, 0, None)], 0, 0)
    assert service.dispatcher.finished == 0


def test_malformed_outcomes_are_skipped_not_fatal():
    service, _ = make(n=1)
    [task], _ = service.exchange("a", B, [], 1, 0)
    service.exchange("a", B, [("x", OK, 0, None), (task[0], "weird", 0, None), 5,
                              (task[0], OK, 0, None)], 0, 0)
    assert service.dispatcher.done


def test_release_hands_back_unstarted_tasks_for_others():
    service, _ = make(n=3)
    leased, _ = service.exchange("a", B, [], 3, 0)
    assert service.release("a", [leased[1][0], leased[2][0], "junk"]) == 2
    again = service.exchange("b", B, [], 3, 0)[0] + service.exchange("b", B, [], 3, 0)[0]
    assert [t[0] for t in again] == [leased[1][0], leased[2][0]]   # a still counts: 1 each
    assert service.dispatcher.counters.released == 2


def test_wait_workers_leases_nothing_until_that_many_joined():
    clock = FakeClock()
    d = Dispatcher(tasks(4), lease_timeout=5, max_attempts=3, clock=clock)
    service = DispatcherService(d, heartbeat_interval=10.0, batch=B, wait_workers=2)
    hello(service, "a")
    assert service.exchange("a", B, [], 4, 0) == ([], RUN)
    assert service.exchange("a", B, [], 4, 0.05) == ([], RUN)      # a long poll stays empty
    got = {}
    waiter = threading.Thread(target=lambda: got.update(r=service.exchange("a", B, [], 4, 30)))
    waiter.start()
    with service.cond:
        service.cond.wait_for(lambda: len(service.cond._waiters) > 0, timeout=5)
    hello(service, "b")                                             # the second one joins
    waiter.join(5)
    assert not waiter.is_alive() and len(got["r"][0]) == 2          # fair share of 4 over 2


def test_a_lost_reply_is_taken_back_at_the_next_call_and_wakes_a_parked_worker():
    """The separate-hosts hang: a's request reached the master, its reply did not; a calls
    again (new connection) saying the last reply it got. The master must not keep those tasks
    with a, whose heartbeats would keep the lease alive for ever."""
    service, _ = make(n=1)
    service.hello("a", {"protocol": PROTOCOL_VERSION, "session": "sa"})
    service.hello("b", {"protocol": PROTOCOL_VERSION, "session": "sb"})
    [task], _ = service.exchange("a", B, [], 1, 0, ("sa", 1, 0))      # reply lost
    got = {}
    waiter = threading.Thread(
        target=lambda: got.update(r=service.exchange("b", B, [], 1, 30, ("sb", 1, 0))))
    waiter.start()
    with service.cond:                               # b is parked in its long poll
        service.cond.wait_for(lambda: len(service.cond._waiters) > 0, timeout=5)
    assert service.exchange("a", B, [], 0, 0, ("sa", 2, 0)) == ([], RUN)
    waiter.join(5)
    assert not waiter.is_alive()
    assert got["r"] == ([task], RUN)
    assert service.dispatcher.counters.unacked == 1


def test_a_malformed_cursor_is_refused():
    service, _ = make(n=1)
    for cursor in (("s", "1", 0), ("s", 1), ["s", 1, 0], (1, 1, 0)):
        try:
            service.exchange("a", B, [], 1, 0, cursor)
        except TypeError:
            continue
        raise AssertionError(f"cursor {cursor!r} was accepted")
    assert service.dispatcher.running() == 0
