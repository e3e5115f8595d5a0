"""The lease state machine, driven by a fake clock."""

import pytest

from procfleet.master.dispatcher import Dispatcher
from procfleet.shared.records import Outcome, Task


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(n=6, lease_timeout=5.0, max_attempts=3):
    clock = FakeClock()
    tasks = [Task(str(i), "square", [i], {}) for i in range(n)]
    return Dispatcher(tasks, lease_timeout=lease_timeout, max_attempts=max_attempts,
                      clock=clock), clock


def ok(task: Task) -> Outcome:
    return Outcome(task.id, True, task.args[0] ** 2, None)


def test_lease_hands_out_each_task_once_in_order():
    d, _ = make(6)
    a = d.lease("a", 2)
    b = d.lease("b", 10)
    assert [t.id for t in a] == ["0", "1"]
    assert [t.id for t in b] == ["2", "3", "4", "5"][:len(b)]
    assert {t.id for t in a}.isdisjoint({t.id for t in b})
    assert d.running() == len(a) + len(b)


def test_fair_share_caps_a_lease_near_the_end():
    d, _ = make(4)
    d.touch("a")
    d.touch("b")
    assert len(d.lease("a", 100)) == 2      # 4 pending, 2 workers: half each
    assert len(d.lease("b", 100)) == 1      # 2 pending, 2 workers
    assert len(d.lease("a", 100)) == 1


def test_complete_records_result_once():
    d, _ = make(2)
    tasks = d.lease("a", 2)
    d.complete("a", [ok(t) for t in tasks])
    records = d.take_results()
    assert [(r["id"], r["status"], r["result"], r["attempts"], r["worker"]) for r in records] == [
        ("0", "ok", 0, 1, "a"), ("1", "ok", 1, 1, "a")]
    assert d.done
    assert d.take_results() == []


def test_heartbeat_keeps_a_lease_alive():
    d, clock = make(1, lease_timeout=5)
    d.lease("a", 1)
    for _ in range(5):
        clock.advance(4)
        d.touch("a")
        assert d.expire() == []
    assert d.running() == 1


def test_silent_worker_is_expired_and_its_tasks_requeued_first():
    d, clock = make(3, lease_timeout=5)
    held = d.lease("a", 1)
    clock.advance(5)
    assert d.expire() == []                  # exactly the timeout is still alive
    clock.advance(0.01)
    assert d.expire() == ["a"]
    assert d.counters.requeued == 1
    assert d.lease("b", 1)[0].id == held[0].id  # requeued to the front
    assert d.tasks[held[0].id].attempts == 2


def test_late_duplicate_is_dropped_and_counted():
    d, clock = make(1, lease_timeout=5)
    [task] = d.lease("a", 1)
    clock.advance(6)
    d.expire()
    d.lease("b", 1)
    d.complete("b", [ok(task)])
    d.complete("a", [ok(task)])              # a comes back with its late result
    records = d.take_results()
    assert len(records) == 1 and records[0]["worker"] == "b"
    assert d.counters.duplicates == 1


def test_late_result_of_expired_worker_wins_while_task_waits_in_queue():
    d, clock = make(1, lease_timeout=5)
    [task] = d.lease("a", 1)
    clock.advance(6)
    d.expire()
    d.complete("a", [ok(task)])              # back before anyone re-leased it
    assert d.done
    assert d.lease("b", 1) == []             # not handed out again
    assert [r["worker"] for r in d.take_results()] == ["a"]


def test_task_fails_after_max_attempts_of_lost_workers():
    d, clock = make(1, lease_timeout=5, max_attempts=3)
    for i in range(3):
        assert len(d.lease(f"w{i}", 1)) == 1
        clock.advance(6)
        d.expire()
    [record] = d.take_results()
    assert record["status"] == "failed"
    assert "worker lost 3 times" in record["error"]
    assert record["attempts"] == 3
    assert d.done and d.counters.failed == 1


def test_returning_worker_is_alive_again_with_no_tasks():
    d, clock = make(2, lease_timeout=5)
    d.lease("a", 1)
    clock.advance(6)
    d.expire()
    assert "a" not in d.alive_workers()
    d.touch("a")
    assert "a" in d.alive_workers()
    assert not d.workers["a"].held
    assert any("is back" in e for e in d.take_events())


def test_leave_hands_tasks_back_without_counting_them_lost():
    d, _ = make(3)
    leased = d.lease("a", 3)
    d.complete("a", [ok(leased[0])])
    d.leave("a")
    assert d.counters.released == 2
    assert d.tasks[leased[1].id].lost == 0
    assert [t.id for t in d.lease("b", 5)] == [leased[1].id, leased[2].id]


def test_stray_result_ids_are_ignored():
    d, _ = make(1)
    d.complete("a", [Outcome("nope", True, 1, None)])
    assert d.finished == 0 and d.take_results() == []
    assert any("unknown task id 'nope'" in e for e in d.take_events())


def test_duplicate_task_ids_are_refused():
    with pytest.raises(ValueError):
        Dispatcher([Task("x", "square", [1], {})] * 2, lease_timeout=1, max_attempts=1)
