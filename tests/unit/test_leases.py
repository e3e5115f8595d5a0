"""The lease state machine, driven by a fake clock."""

import json

from fakes import FakeClock, tasks

from procfleet.master.leases import ASKED_RECENTLY, MAX_RETRY_DELAY, Dispatcher, TaskState
from procfleet.shared.protocol import CRASH, ERROR, OK, TIMEOUT, Outcome, Task


def make(n=6, lease_timeout=5.0, max_attempts=3, **kwargs):
    clock = FakeClock()
    return Dispatcher(tasks(n), lease_timeout=lease_timeout, max_attempts=max_attempts,
                      clock=clock, **kwargs), clock


def ok(task: Task) -> Outcome:
    return Outcome(task.seq, OK, task.args[0] ** 2, None)


def records(d):
    return [json.loads(line) for _seq, line, _ok in d.take_results()]


def test_lease_hands_out_each_task_once_in_order():
    d, _ = make(6)
    a = d.lease("a", 2)
    b = d.lease("b", 10)
    assert [t.id for t in a] == ["0", "1"]
    assert [t.id for t in b] == ["2", "3"]          # a holds tasks: 4 pending over 2 is 2 each
    assert {t.id for t in a}.isdisjoint({t.id for t in b})
    assert d.held() == len(a) + len(b)


def test_fair_share_caps_a_lease_near_the_end():
    d, _ = make(5)
    d.wants("a")                            # both asked for tasks
    d.wants("b")
    assert len(d.lease("a", 100)) == 3      # 5 pending, 2 workers: half each, rounded up
    assert len(d.lease("b", 100)) == 1      # 2 pending, 2 workers
    assert len(d.lease("a", 100)) == 1


def test_fair_share_ignores_workers_that_only_said_hello():
    """3,000 ids kept alive by hello() (or heartbeats holding nothing) once made every lease
    1/3000 of what was left: the batch crawled. Only workers that work share."""
    d, clock = make(4000, lease_timeout=30)
    for i in range(3000):
        d.touch(f"idle-{i}")               # what hello() does
    assert len(d.lease("a", 100)) == 100
    clock.advance(1)
    for i in range(3000):
        d.touch(f"idle-{i}")               # still alive, still asking for nothing
    assert d.lease("idle-0", 0) == []      # a heartbeat with want=0 is not asking either
    assert len(d.lease("a", 100)) == 100
    assert d.sharers() == 1


def test_fair_share_counts_holders_and_recent_askers_only():
    d, clock = make(12, lease_timeout=60)
    assert len(d.lease("a", 2)) == 2        # a holds 2
    b = d.lease("b", 1, call=None)          # b holds 1
    assert b
    d.wants("c")                            # c asked, got nothing yet
    assert d.sharers() == 3
    clock.advance(ASKED_RECENTLY + 0.5)
    assert d.sharers() == 2                 # c has not asked again: it no longer shares
    d.complete("b", [ok(t) for t in b])
    assert d.sharers() == 1                 # b holds nothing and asked long ago
    assert len(d.lease("c", 100)) == 5      # 9 pending over a and c: ceil(9 / 2)
    d.expire()
    clock.advance(61)
    d.expire()                              # a and c silent past the lease: lost
    assert d.sharers() == 1 and len(d.lease("d", 100)) == 11


def test_complete_records_result_once():
    d, _ = make(2)
    tasks = d.lease("a", 2)
    d.complete("a", [ok(t) for t in tasks])
    got = records(d)
    assert [(r["id"], r["status"], r["result"], r["attempts"], r["worker"]) for r in got] == [
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
    assert d.held() == 1


def test_silent_worker_is_expired_and_its_tasks_requeued_first():
    d, clock = make(3, lease_timeout=5)
    held = d.lease("a", 1)
    clock.advance(5)
    assert d.expire() == []                  # exactly the timeout is still alive
    clock.advance(0.01)
    assert d.expire() == ["a"]
    assert d.counters.requeued == 1
    [again] = d.lease("b", 1)
    assert again.id == held[0].id               # requeued to the front
    d.complete("b", [ok(again)])
    assert [r["attempts"] for r in records(d)] == [2]


def test_late_duplicate_is_dropped_and_counted():
    d, clock = make(1, lease_timeout=5)
    [task] = d.lease("a", 1)
    clock.advance(6)
    d.expire()
    d.lease("b", 1)
    d.complete("b", [ok(task)])
    d.complete("a", [ok(task)])              # a comes back with its late result
    got = records(d)
    assert len(got) == 1 and got[0]["worker"] == "b"
    assert d.counters.duplicates == 1


def test_late_result_of_expired_worker_wins_while_task_waits_in_queue():
    d, clock = make(1, lease_timeout=5)
    [task] = d.lease("a", 1)
    clock.advance(6)
    d.expire()
    d.complete("a", [ok(task)])              # back before anyone re-leased it
    assert d.done
    assert d.lease("b", 1) == []             # not handed out again
    assert [r["worker"] for r in records(d)] == ["a"]


def test_task_fails_after_max_attempts_of_lost_workers():
    d, clock = make(1, lease_timeout=5, max_attempts=3)
    for i in range(3):
        assert len(d.lease(f"w{i}", 1)) == 1
        clock.advance(6)
        d.expire()
    [record] = records(d)
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
    assert any("is back" in e for _kind, e in d.take_events())


def test_leave_hands_tasks_back_without_counting_them_lost():
    d, _ = make(3)
    leased = d.lease("a", 3)
    d.complete("a", [ok(leased[0])])
    d.leave("a")
    assert d.counters.released == 2
    d.leased_log = []
    assert [t.id for t in d.lease("b", 5)] == [leased[1].id, leased[2].id]
    # (seq, attempts, lost, errors), as the journal keeps them: handed back is not lost
    assert d.take_leased() == [(leased[1].seq, 2, 0, 0), (leased[2].seq, 2, 0, 0)]


def test_result_for_a_seq_outside_the_batch_is_ignored():
    d, _ = make(1)
    d.complete("a", [Outcome(7, OK, 1, None)])
    assert d.finished == 0 and d.take_results() == []
    assert any("#7, which this batch does not have" in e for _kind, e in d.take_events())


def test_result_for_a_task_not_in_flight_here_is_stale():
    d, _ = make(2)
    d.complete("a", [Outcome(1, OK, 1, None)])   # leased by a master before a restart
    assert d.finished == 0 and d.counters.stale == 1
    assert [t.seq for t in d.lease("a", 2)] == [0, 1]


def test_tasks_stream_from_the_source_as_they_are_leased():
    pulled = []

    def source():
        for task in tasks(1000):
            pulled.append(task.seq)
            yield task

    d = Dispatcher(source(), 1000, lease_timeout=5, max_attempts=3, clock=FakeClock())
    d.lease("a", 10)
    assert len(pulled) <= 11
    done = d.lease("a", 5)
    d.complete("a", [ok(t) for t in done])
    assert len(d.active) == 10       # only what is in flight is kept


def test_errors_are_retried_with_exponential_backoff_then_fail_with_the_last_error():
    d, clock = make(1, retries=2, retry_backoff=1.0, rng=lambda: 1.0)   # no jitter
    for delay, attempt in [(1.0, 1), (2.0, 2)]:
        [task] = d.lease("a", 1)
        d.complete("a", [Outcome(task.seq, ERROR, None, f"RuntimeError: try {attempt}")])
        assert d.take_results() == [] and d.lease("a", 1) == []
        clock.advance(delay - 0.01)
        assert not d.has_pending()
        clock.advance(0.02)
        assert d.has_pending()
    [task] = d.lease("a", 1)
    d.complete("a", [Outcome(task.seq, ERROR, None, "RuntimeError: try 3")])
    [record] = records(d)
    assert record["status"] == "failed" and record["attempts"] == 3
    assert record["error"].startswith("RuntimeError: try 3")
    assert "failed on each of 3 tries; --retries 2" in record["error"]
    assert d.counters.retried == 2


def test_retry_delay_has_jitter():
    d, clock = make(1, retries=1, retry_backoff=4.0, rng=lambda: 0.0)  # half the delay
    [task] = d.lease("a", 1)
    d.complete("a", [Outcome(task.seq, ERROR, None, "E")])
    clock.advance(2.01)
    assert len(d.lease("a", 1)) == 1


def test_a_success_after_a_retry_is_ok():
    d, clock = make(1, retries=3, retry_backoff=0.0)
    [task] = d.lease("a", 1)
    d.complete("a", [Outcome(task.seq, ERROR, None, "E")])
    [task] = d.lease("b", 1)
    d.complete("b", [ok(task)])
    [record] = records(d)
    assert record["status"] == "ok" and record["attempts"] == 2 and record["worker"] == "b"


def test_timeout_is_final_even_with_retries():
    d, _ = make(1, retries=3)
    [task] = d.lease("a", 1)
    d.complete("a", [Outcome(task.seq, TIMEOUT, None, "TaskTimeout: timed out after 2 s")])
    [record] = records(d)
    assert record["status"] == "failed" and "timed out after 2 s" in record["error"]


def test_a_crash_is_a_lost_attempt_and_a_poison_task_fails_after_max_attempts():
    d, _ = make(2, max_attempts=3)
    for i in range(3):
        leased = d.lease(f"w{i}", 1)
        assert [t.seq for t in leased] == [0]      # requeued to the front each time
        d.complete(f"w{i}", [Outcome(0, CRASH, None, "WorkerCrash: exited with code 1")])
    [record] = records(d)
    assert record["id"] == "0" and record["status"] == "failed" and record["attempts"] == 3
    assert "exited with code 1" in record["error"] and "crashed 3 times" in record["error"]
    assert d.counters.crashed == 3
    [task] = d.lease("w0", 1)                      # the rest of the batch goes on
    d.complete("w0", [ok(task)])
    assert d.done and d.counters.ok == 1


def test_resume_skips_finished_tasks_and_requeues_in_flight_ones_first():
    restored = [TaskState(tasks(5)[3], attempts=1, lost=0, errors=0)]
    d = Dispatcher(tasks(5), 5, lease_timeout=5, max_attempts=3, done=[0, 1],
                   restored=restored, clock=FakeClock())
    assert d.finished == 2 and d.pending() == 3
    leased = d.lease("a", 10)
    assert [t.seq for t in leased] == [3, 2, 4]
    d.complete("a", [ok(t) for t in leased] + [ok(tasks(5)[0])])
    assert d.done and d.counters.duplicates == 1
    attempts = {seq: json.loads(line)["attempts"] for seq, line, _ok in d.take_results()}
    assert attempts == {2: 1, 3: 2, 4: 1}                  # 3 was leased before the restart


def test_leases_are_logged_for_the_journal_when_asked():
    d, _ = make(3)
    d.leased_log = []
    d.lease("a", 2)
    assert [(seq, attempts) for seq, attempts, _lost, _errors in d.take_leased()] == [(0, 1), (1, 1)]


def test_the_journal_sees_a_lease_with_its_counts_as_of_the_tick():
    d, clock = make(3, lease_timeout=5)
    d.leased_log = []
    first = d.lease("a", 1)
    d.lease("b", 1)
    d.complete("b", [Outcome(1, OK, 1, None)])      # finished: its result row says the rest
    clock.advance(6)
    d.touch("b")
    d.expire()                                       # a is lost: its task now has lost=1
    assert d.take_leased() == [(first[0].seq, 1, 1, 0)]
    assert d.take_leased() == []


def test_a_result_from_a_worker_that_does_not_hold_the_task_is_taken_once():
    d, _ = make(2)
    a = d.lease("a", 1)
    d.complete("b", [ok(a[0])])                      # e.g. b had it before a restart
    assert [r["worker"] for r in records(d)] == ["b"]
    assert not d.workers["a"].held and d.held() == 0
    d.complete("a", [ok(a[0])])
    assert d.counters.duplicates == 1
    assert [t.seq for t in d.lease("c", 5)] == [1]           # it is not leased again


def test_an_error_on_a_first_lease_keeps_its_attempt_count():
    d, clock = make(2, retries=1, rng=lambda: 0.0)
    a = d.lease("a", 1)
    d.complete("a", [Outcome(a[0].seq, ERROR, None, "RuntimeError: x")])
    assert d.held() == 0                              # a holds it no more
    clock.advance(MAX_RETRY_DELAY)
    d.leased_log = []
    assert d.lease("b", 1) == a                          # its retry
    assert d.take_leased() == [(a[0].seq, 2, 0, 1)]      # the 2nd attempt, after 1 error


# -- reconciliation: what a worker holds is what reached it ---------------------------------

def test_a_lease_whose_reply_was_lost_is_requeued_at_the_workers_next_call():
    d, _ = make(4)
    assert d.begin_call("a", "s1", 1, 0)
    lost = d.lease("a", 2, call=1)                  # this reply never reaches a
    assert d.begin_call("a", "s1", 2, 0)            # a's next call: the last reply it got is 0
    assert d.counters.unacked == 2 and d.held() == 0
    again = d.lease("b", 2)
    assert [t.seq for t in again] == [t.seq for t in lost]      # first in line, in order
    d.complete("b", [ok(t) for t in again])
    assert [r["attempts"] for r in records(d)] == [1, 1]         # a never had them


def test_a_lease_whose_reply_arrived_stays_with_the_worker():
    d, _ = make(4)
    d.begin_call("a", "s1", 1, 0)
    held = d.lease("a", 2, call=1)
    assert d.begin_call("a", "s1", 2, 1)
    assert d.counters.unacked == 0 and d.held() == 2
    assert d.workers["a"].unacked == {}
    d.complete("a", [ok(t) for t in held])
    assert d.finished == 2


def test_a_call_that_arrives_after_a_later_one_leases_nothing():
    d, _ = make(4)
    d.begin_call("a", "s1", 1, 0)
    d.lease("a", 1, call=1)
    assert d.begin_call("a", "s1", 3, 1)
    assert not d.begin_call("a", "s1", 2, 1)        # late, on a connection a gave up
    assert d.lease("a", 2, call=2) == []
    assert d.held() == 1


def test_a_long_poll_overtaken_by_the_workers_next_call_leases_nothing():
    d, _ = make(4)
    d.begin_call("a", "s1", 5, 4)                   # parked in a long poll ...
    d.begin_call("a", "s1", 6, 4)                   # ... while a already gave up on it
    assert d.lease("a", 2, call=5) == []
    assert len(d.lease("a", 2, call=6)) == 2


def test_results_of_a_stale_call_still_count_once():
    d, _ = make(2)
    d.begin_call("a", "s1", 1, 0)
    held = d.lease("a", 2, call=1)
    d.begin_call("a", "s1", 2, 1)
    d.complete("a", [ok(held[0])])
    assert not d.begin_call("a", "s1", 1, 0)
    d.complete("a", [ok(held[0]), ok(held[1])])     # the same results, arriving late
    assert d.done and d.counters.duplicates == 1
    assert sorted(r["id"] for r in records(d)) == ["0", "1"]


def test_a_new_process_under_a_known_id_loses_what_the_old_one_held():
    d, _ = make(3)
    d.new_session("a", "old")
    d.begin_call("a", "old", 1, 0)
    held = d.lease("a", 2, call=1)
    d.begin_call("a", "old", 2, 1)
    assert d.new_session("a", "old") == 0           # a reconnect of the same process
    assert d.held() == 2
    assert d.new_session("a", "new") == 2           # the container restarted: same id
    assert d.held() == 0 and d.counters.requeued == 2
    assert d.begin_call("a", "new", 1, 0)           # its calls count from 1 again
    assert [t.seq for t in d.lease("a", 3, call=1)] == [t.seq for t in held] + [2]
    assert not d.begin_call("a", "old", 3, 2)       # the old process's late call is stale


def test_an_expired_worker_forgets_its_unacknowledged_leases():
    d, clock = make(2)
    d.begin_call("a", "s1", 1, 0)
    d.lease("a", 2, call=1)
    clock.advance(6)
    d.expire()
    assert d.workers["a"].unacked == {} and d.counters.requeued == 2
    d.begin_call("a", "s1", 2, 0)                   # back: nothing more is requeued twice
    assert d.counters.unacked == 0 and len(d.requeued) == 2


# -- sizes ------------------------------------------------------------------------------------

def test_big_tasks_are_leased_within_the_byte_budget_and_each_exactly_once():
    from array import array

    from procfleet.shared.protocol import LEASE_BYTES, SMALL_TASK_BYTES
    mib = 1024 * 1024
    sizes = array("I", [6 * mib, 10, 3 * mib, 3 * mib, 10, 10, 5 * mib, 10])
    d, _ = make(len(sizes), sizes=sizes)
    leases = []
    for _ in range(20):
        got = d.lease("a", 100)
        if not got:
            break
        leases.append([t.seq for t in got])
        assert got, "a lease always carries at least one task"
        total = sum(max(sizes[t.seq], SMALL_TASK_BYTES) for t in got)
        assert total <= LEASE_BYTES or len(got) == 1
    assert sorted(seq for lease in leases for seq in lease) == list(range(len(sizes)))
    assert leases[0] == [0]                         # 6 MiB alone
    d.leave("a")                                    # requeued ones are measured too
    again = d.lease("b", 100)
    assert [t.seq for t in again] == [0]


def test_a_result_json_cannot_carry_fails_that_task_alone_and_the_counts_match_the_lines():
    d, _ = make(3)
    held = d.lease("a", 3)
    d.complete("a", [ok(held[0]), Outcome(held[1].seq, OK, 10 ** 5000, None), ok(held[2])])
    lines = d.take_results()
    assert len(lines) == 3 and d.finished == 3 and d.done
    assert (d.counters.ok, d.counters.failed) == (2, 1)
    bad = json.loads({seq: line for seq, line, _ok in lines}[held[1].seq])
    assert bad["status"] == "failed" and bad["error"].startswith("ResultNotJSON:")


def test_lone_surrogates_in_ids_and_results_make_valid_utf8_lines():
    d, _ = make(0)
    d = Dispatcher([Task(0, "\udc00id", "square", [], {}), Task(1, 7, "square", [], {})],
                   lease_timeout=5.0, max_attempts=3)
    held = d.lease("w\ud800", 2)
    d.complete("w\ud800", [Outcome(held[0].seq, OK, ["\ud800", "é"], None),
                           Outcome(held[1].seq, ERROR, None, "boom \udfff")])
    for _seq, line, _ok in d.take_results():
        line.encode("utf-8")                        # raises on a lone surrogate
        record = json.loads(line)
        assert record["worker"] == "w\ud800"
        if record["status"] == "ok":
            assert record["id"] == "\udc00id" and record["result"] == ["\ud800", "é"]
        else:
            assert record["id"] == 7 and record["error"] == "boom \udfff"


def test_a_lease_taken_back_unacked_is_journalled_with_its_lowered_attempts():
    d, _ = make(2)
    d.leased_log = []
    d.begin_call("a", "s1", 1, 0)
    d.lease("a", 2, call=1)
    assert d.take_leased() == [(0, 1, 0, 0), (1, 1, 0, 0)]
    d.begin_call("a", "s1", 2, 0)                   # the reply of call 1 never arrived
    assert d.take_leased() == [(0, 0, 0, 0), (1, 0, 0, 0)]


def test_trimming_the_done_flags_of_a_long_stream_keeps_every_answer():
    """A streamed batch drops the flags of the done tasks that lead it; a late result for one
    of them is still a duplicate, and the rest of the batch goes on as before."""
    from procfleet.master.leases import Feed
    d = Dispatcher(Feed(), 0, lease_timeout=5.0, max_attempts=3, clock=FakeClock())
    d.open_input = True
    d.extend(tasks(10))
    first = d.lease("a", 6)
    d.complete("a", [ok(t) for t in first])
    assert d.trim_done(keep=4) == 6 and d.done_below == 6 and len(d.done_flags) == 4
    assert d.trim_done(keep=0) == 0                 # task 6 is not done: nothing more
    d.complete("b", [ok(first[0])])                  # late, below the trimmed line
    assert d.counters.duplicates == 1
    assert d.cancel([2, 9]) == [9]
    d.extend([Task(10, "10", "square", [10], {})])
    rest = d.lease("a", 10)
    assert [t.seq for t in rest] == [6, 7, 8, 10]
    d.complete("a", [ok(t) for t in rest])
    d.open_input = False
    assert d.done and d.finished == 11
    assert [r["id"] for r in records(d)] == [str(i) for i in range(9)] + ["10"]
