"""The served dispatcher: long polls woken by requeues, STOP once the batch is over."""

import threading

from procfleet.master.dispatcher import Dispatcher
from procfleet.master.service import DispatcherService
from procfleet.shared.manager import PROTOCOL_VERSION, RUN, STOP
from procfleet.shared.records import Task
from test_dispatcher import FakeClock


def make(n=2, lease_timeout=5.0):
    clock = FakeClock()
    d = Dispatcher([Task(str(i), "square", [i], {}) for i in range(n)],
                   lease_timeout=lease_timeout, max_attempts=3, clock=clock)
    return DispatcherService(d, heartbeat_interval=10.0), clock


def hello(service, worker):
    return service.hello(worker, {"protocol": PROTOCOL_VERSION})


def test_idle_worker_long_poll_is_woken_by_a_requeue():
    service, clock = make(n=1)
    hello(service, "a")
    hello(service, "b")
    tasks, state = service.exchange("a", [], 1, 0)
    assert state == RUN and len(tasks) == 1
    got = {}
    waiter = threading.Thread(target=lambda: got.update(r=service.exchange("b", [], 1, 30)))
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
    service.exchange("a", [], 1, 0)
    assert service.exchange("b", [], 1, 0.05) == ([], RUN)


def test_batch_over_answers_stop_and_counts_who_heard_it():
    service, _ = make(n=1)
    hello(service, "a")
    hello(service, "b")
    [task], _ = service.exchange("a", [], 1, 0)
    assert service.exchange("a", [(task[0], True, 0, None)], 1, 0) == ([], STOP)
    assert service.wait_workers_told(0) == ["b"]
    assert service.exchange("b", [], 1, 0) == ([], STOP)
    assert service.wait_workers_told(0) == []
    results, _ = service.tick()
    assert [r["id"] for r in results] == [task[0]]


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
    tasks, _ = service.exchange("a", [], 2, 0)
    service.goodbye("a")
    assert [t[0] for t in service.exchange("b", [], 2, 0)[0]] == [t[0] for t in tasks]
