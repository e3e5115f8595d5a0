"""The service's multi-job state machine (JobBoard), driven by a fake clock: fair share among
jobs, cancel, a client gone, and a worker lost across jobs."""

import json

import pytest
from fakes import FakeClock

from procfleet.master.board import JOB_BITS, MAX_BACKLOG, JobBoard, JobOptions
from procfleet.shared.protocol import CRASH, LEASE_BYTES, OK, Task


def make(lease_timeout=5.0):
    clock = FakeClock()
    return JobBoard(lease_timeout=lease_timeout, clock=clock), clock


def put(board, job, n, name="square", start=0):
    tasks = [Task(0, start + i, name, [start + i], {}) for i in range(n)]
    board.put(job, tasks, [20] * n)


def ok(task) -> tuple:
    """A worker's ok outcome on the wire: (seq, kind, JSON text, error)."""
    return (task[0], OK, str(task[3][0] ** 2), None)


def job_of(task) -> int:
    return task[0] >> JOB_BITS


def lines(board, job):
    return [json.loads(line) for line in board.take(job, 10**6, 10**9)]


def test_a_lease_is_shared_out_among_the_jobs_with_tasks_waiting():
    board, _ = make()
    big, small = board.open_job(JobOptions()), board.open_job(JobOptions())
    put(board, big, 1000)
    put(board, small, 10)
    leased = board.lease("w", 20)
    by_job = [job_of(t) for t in leased]
    assert by_job.count(big.number) == 10 and by_job.count(small.number) == 10


def test_what_one_job_cannot_use_goes_to_the_next():
    board, _ = make()
    big, small = board.open_job(JobOptions()), board.open_job(JobOptions())
    put(board, big, 1000)
    put(board, small, 3)
    leased = board.lease("w", 20)
    assert len(leased) == 20
    assert sum(job_of(t) == small.number for t in leased) == 3


def test_a_small_job_submitted_while_a_big_one_runs_is_done_after_its_own_tasks():
    """Four workers with 8 slots each run a 100,000-task job; a 10-task job submitted later is
    leased on the next calls, not after the big job."""
    board, clock = make()
    big = board.open_job(JobOptions())
    put(board, big, 100_000)
    held = {w: board.lease(w, 8) for w in "abcd"}
    small = board.open_job(JobOptions())
    put(board, small, 10)
    rounds = 0
    while not small.done and rounds < 100:
        rounds += 1
        for w in "abcd":            # each worker finishes what it holds and asks for more
            board.complete(w, [ok(t) for t in held[w]], encoded=True)
            held[w] = board.lease(w, 8)
            clock.advance(0.01)
        if small.dispatcher.finished == 10:
            small.closed = True
    assert small.done and rounds <= 3      # fair share within the job spreads it over calls
    assert big.dispatcher.finished < 100      # the big job is far from done
    assert sorted(r["id"] for r in lines(board, small)) == list(range(10))


def test_results_reach_their_own_job_with_the_job_seq():
    board, _ = make()
    a, b = board.open_job(JobOptions()), board.open_job(JobOptions())
    put(board, a, 2)
    put(board, b, 2, start=100)
    leased = board.lease("w", 10)
    board.complete("w", [ok(t) for t in leased], encoded=True)
    assert sorted(r["id"] for r in lines(board, a)) == [0, 1]
    assert sorted((r["id"], r["result"]) for r in lines(board, b)) == [(100, 10000),
                                                                       (101, 10201)]


def test_cancel_takes_back_only_what_no_worker_holds():
    board, _ = make()
    job = board.open_job(JobOptions())
    put(board, job, 5)
    leased = board.lease("w", 2)
    local = [t[0] - job.base for t in leased]
    assert board.cancel(job, range(5)) == [2, 3, 4]
    assert board.lease("w", 10) == []            # the cancelled ones never run
    board.complete("w", [ok(t) for t in leased], encoded=True)
    job.closed = True
    assert job.done and job.dispatcher.counters.cancelled == 3
    assert sorted(r["id"] for r in lines(board, job)) == local


def test_a_job_whose_client_went_silent_is_dropped_and_its_late_results_counted():
    board, clock = make(lease_timeout=5.0)
    gone, alive = board.open_job(JobOptions()), board.open_job(JobOptions())
    put(board, gone, 100)
    put(board, alive, 100)
    leased = board.lease("w", 10)
    for _ in range(6):
        clock.advance(1.0)
        board.job(alive.id)                      # its client calls in; the other one does not
        board.touch("w")
        board.expire()
    assert gone.id not in board.by_id and alive.id in board.by_id
    assert board.jobs_abandoned == 1
    board.complete("w", [ok(t) for t in leased], encoded=True)
    assert board.dropped_results == sum(job_of(t) == gone.number for t in leased)
    assert all(job_of(t) == alive.number for t in board.lease("w", 50))
    with pytest.raises(ValueError, match="dropped"):
        board.job(gone.id)


def test_a_silent_worker_loses_what_it_held_in_every_job():
    board, clock = make(lease_timeout=5.0)
    a, b = board.open_job(JobOptions()), board.open_job(JobOptions())
    put(board, a, 4)
    put(board, b, 4)
    first = board.lease("w1", 4)
    assert {job_of(t) for t in first} == {a.number, b.number}
    clock.advance(6)
    board.job(a.id), board.job(b.id)
    assert board.expire() == ["w1"]
    again = board.lease("w2", 8)
    assert sorted(t[0] for t in again) == sorted(t[0] for t in board_all(a, b, 4))
    board.complete("w2", [ok(t) for t in again], encoded=True)
    board.complete("w1", [ok(t) for t in first], encoded=True)      # late: duplicates
    assert a.dispatcher.counters.duplicates + b.dispatcher.counters.duplicates == 4
    assert len(lines(board, a)) == 4 and len(lines(board, b)) == 4


def board_all(a, b, n):
    return [(job.base + i,) for job in (a, b) for i in range(n)]


def test_a_lease_reply_that_never_arrived_is_taken_back_in_each_job():
    board, _ = make()
    a, b = board.open_job(JobOptions()), board.open_job(JobOptions())
    put(board, a, 3)
    put(board, b, 3)
    board.new_session("w", "s1")
    assert board.begin_call("w", "s1", 1, 0)
    lost = board.lease("w", 4, call=1)
    assert {job_of(t) for t in lost} == {a.number, b.number}
    assert board.begin_call("w", "s1", 2, 0)     # call 1's reply never arrived
    assert board.counters.unacked == 4
    again = board.lease("w", 10, call=2)
    assert sorted(t[0] for t in again) == sorted(
        [a.base + i for i in range(3)] + [b.base + i for i in range(3)])


def test_a_crash_is_retried_within_its_job_under_its_own_options():
    board, _ = make()
    job = board.open_job(JobOptions(max_attempts=2))
    put(board, job, 1)
    for attempt in range(2):
        (task,) = board.lease("w", 1)
        board.complete("w", [(task[0], CRASH, None, "WorkerCrash: killed")], encoded=True)
    job.closed = True
    (record,) = lines(board, job)
    assert record["status"] == "failed" and "--max-attempts 2" in record["error"]
    assert job.done


def test_a_streamed_job_is_done_only_once_its_client_sent_the_last_task():
    board, _ = make()
    job = board.open_job(JobOptions())
    put(board, job, 2)
    board.complete("w", [ok(t) for t in board.lease("w", 2)], encoded=True)
    assert job.dispatcher.done and not job.done
    put(board, job, 1, start=2)
    board.complete("w", [ok(t) for t in board.lease("w", 2)], encoded=True)
    job.closed = True
    assert job.done and [r["id"] for r in lines(board, job)] == [0, 1, 2]


def test_backlog_is_bounded_and_frees_as_workers_lease():
    board, _ = make()
    job = board.open_job(JobOptions())
    put(board, job, MAX_BACKLOG)
    assert board.room(job) == 0
    board.lease("w", 100)
    assert board.room(job) == 100


def test_a_dropped_job_leaves_nothing_behind():
    board, _ = make()
    for _ in range(100):
        job = board.open_job(JobOptions())
        put(board, job, 50)
        board.lease("w", 10)
        board.drop(job, abandoned=True)
    assert board.jobs == {} and board.by_id == {} and board.ready_jobs == set()
    assert board.jobs_abandoned == 100 and board.lease("w", 10) == []


def test_big_tasks_of_a_job_are_leased_within_the_lease_bytes():
    board, _ = make()
    job = board.open_job(JobOptions())
    big = LEASE_BYTES // 4
    board.put(job, [Task(0, i, "square", [i], {}) for i in range(10)], [big] * 10)
    assert len(board.lease("w", 100)) == 4
    assert job.dispatcher.sizes[0] == big and len(job.dispatcher.sizes) == 10
    small = board.open_job(JobOptions())
    put(board, small, 1000)
    assert len(small.dispatcher.sizes) == 0          # small lines cost nothing per task


def test_a_new_job_is_shared_among_every_worker_that_asks_for_work():
    """Four idle workers long-poll; a job of 80 arrives: the first to ask takes a quarter,
    not the whole job (its dispatcher has seen none of them yet), and each after it a share of
    what is left, as in a batch."""
    board, _ = make()
    for w in "abcd":
        assert board.lease(w, 100) == []         # idle: asking, nothing to lease
    job = board.open_job(JobOptions())
    put(board, job, 80)
    assert [len(board.lease(w, 100)) for w in "abcd"] == [20, 15, 12, 9]


def test_a_service_snapshot_has_running_and_queued_on_workers_across_jobs():
    """Each worker says how many of its tasks began, whichever jobs they belong to."""
    from procfleet.master.service import JobService
    board, _ = make()
    service = JobService(board, heartbeat_interval=10.0)
    a, b = board.open_job(JobOptions()), board.open_job(JobOptions())
    put(board, a, 10)
    put(board, b, 10)
    held, _ = service.exchange("w", service.batch, [], 6, 0, None, 0)
    assert {job_of(t) for t in held} == {a.number, b.number}
    service.exchange("w", service.batch, [], 0, 0, None, 2)
    snap = service.snapshot()
    assert (snap["running"], snap["queued_on_workers"], snap["pending"]) == (2, 4, 14)
    service.exchange("w", service.batch, [ok(t) for t in held[:5]], 0, 0, None, 9)  # holds 1
    snap = service.snapshot()
    assert (snap["running"], snap["queued_on_workers"]) == (1, 0)
