"""Per-worker figures (procfleet status, the summary's per_worker, the dashboard), driven by a
fake clock: who ended which task, rates, lost and left workers, a service's jobs added up, and
the lease-to-result histogram."""

import json

from fakes import FakeClock, tasks

from procfleet.master.board import JobBoard, JobOptions
from procfleet.master.figures import RATE_WINDOW, Durations, Watch, worker_rows
from procfleet.master.leases import Dispatcher
from procfleet.master.rpc import DispatcherService
from procfleet.master.service import JobService
from procfleet.shared.protocol import CRASH, ERROR, OK, Task

B = "batch-1"


def make(n=10, **kwargs):
    clock = FakeClock()
    d = Dispatcher(tasks(n), lease_timeout=5.0, max_attempts=kwargs.pop("max_attempts", 3),
                   clock=clock, **kwargs)
    return DispatcherService(d, heartbeat_interval=10.0, batch=B), d, clock


def ok(task):
    return (task[0], OK, str(task[3][0] ** 2), None)


def rows_by_id(service):
    return {row["id"]: row for row in service.status()["workers"]}


def test_each_result_that_ends_a_task_counts_for_the_worker_that_sent_it():
    service, d, clock = make(6, max_attempts=1)
    service.hello("a", {"protocol": 4, "python": "3.12.8", "concurrency": 2, "session": "s"})
    a, _ = service.exchange("a", B, [], 4, 0)
    b, _ = service.exchange("b", B, [], 2, 0)
    service.exchange("a", B, [ok(a[0]), ok(a[1]), (a[2][0], ERROR, None, "boom")], 0, 0)
    service.exchange("b", B, [ok(a[0])], 0, 0)             # a duplicate: ends nothing
    service.exchange("b", B, [(b[0][0], CRASH, None, "died")], 0, 0)   # max_attempts 1: failed
    clock.advance(6)                                        # b and a silent past the lease
    service.exchange("b", B, [], 0, 0)
    service.tick()                                          # a lost: a[3] fails (WorkerLost)
    assert service.snapshot()["per_worker"] == {"a": {"ok": 2, "failed": 2},
                                                "b": {"ok": 0, "failed": 1}}
    rows = rows_by_id(service)
    assert rows["a"] | {"rate": 0, "last_seen_s": 0} == {
        "id": "a", "address": "?", "python": "3.12.8", "concurrency": 2, "state": "lost",
        "held": 0, "ok": 2, "failed": 2, "last_seen_s": 0, "rate": 0}
    assert rows["a"]["last_seen_s"] == 6.0
    assert rows["b"]["state"] == "idle" and rows["b"]["held"] == 0


def test_recent_failures_carry_the_error_text_newest_first():
    service, d, _ = make(3)
    held, _ = service.exchange("a", B, [], 3, 0)
    service.exchange("a", B, [(held[0][0], ERROR, None, "ValueError: first"),
                              (held[1][0], ERROR, None, "ValueError: second"), ok(held[2])],
                     0, 0)
    service.tick()
    assert [(f["id"], f["error"], f["worker"]) for f in service.recent_failures()] == [
        ("1", "ValueError: second", "a"), ("0", "ValueError: first", "a")]


def test_a_worker_that_said_goodbye_is_left_not_lost():
    service, _, _ = make(2)
    service.exchange("a", B, [], 1, 0)
    assert rows_by_id(service)["a"]["state"] == "working"
    service.goodbye("a")
    assert rows_by_id(service)["a"]["state"] == "left"


def test_rate_is_over_the_last_window_or_since_join():
    service, d, clock = make(1000)
    held, _ = service.exchange("a", B, [], 100, 0)
    clock.advance(2)
    service.exchange("a", B, [ok(t) for t in held[:20]], 0, 0)
    assert rows_by_id(service)["a"]["rate"] == 10.0         # 20 in 2 s since it joined
    for second in range(20):                                # then 1 a second, sampled
        clock.advance(1)
        service.exchange("a", B, [ok(held[20 + second])], 0, 0)
        service.tick()
    assert abs(rows_by_id(service)["a"]["rate"] - 1.0) < 0.15
    history = service.history()
    assert history[-1][1:] == (40, 0) and history[0][0] > history[-1][0]


def test_the_fast_path_counts_once_per_call_and_only_its_own_results():
    service, d, _ = make(100)
    held, _ = service.exchange("a", B, [], 100, 0)
    service.exchange("a", B, [ok(t) for t in held], 0, 0)
    assert d.workers["a"].ok == 100 == d.counters.ok


def test_a_service_adds_each_workers_figures_over_its_jobs_closed_ones_too():
    clock = FakeClock()
    board = JobBoard(lease_timeout=5.0, clock=clock)
    service = JobService(board, heartbeat_interval=1.0)
    service.hello("a", {"protocol": 4, "python": "3.13.1", "concurrency": 4})
    first, second = board.open_job(JobOptions(label="one")), board.open_job(JobOptions())
    for job in (first, second):
        board.put(job, [Task(0, i, "square", [i], {}) for i in range(3)], [20] * 3)
    leased, _ = service.exchange("a", service.batch, [], 6, 0)
    service.exchange("a", service.batch, [(t[0], OK, "1", None) for t in leased[:4]], 0, 0)
    board.drop(first)
    status = service.status()
    [row] = status["workers"]
    assert (row["ok"], row["held"], row["python"], row["concurrency"]) == (4, 2, "3.13.1", 4)
    assert status["mode"] == "service" and status["ok"] == 4
    [job] = status["jobs"]
    assert (job["submitted"], job["finished"], job["label"]) == (3, sum(
        1 for t in leased[:4] if t[0] >> 40 == second.number), "")


def test_durations_bucket_lease_to_result_seconds():
    service, d, clock = make(4)
    d.durations = durations = Durations((1.0, 5.0))
    held, _ = service.exchange("a", B, [], 4, 0)
    clock.advance(2)
    service.exchange("a", B, [ok(held[0]), ok(held[1])], 0, 0)
    clock.advance(4)
    service.exchange("a", B, [(held[2][0], ERROR, None, "x"), ok(held[3])], 0, 0)
    buckets, total, count = durations.snapshot()
    assert buckets == [(1.0, 0), (5.0, 2), (float("inf"), 4)]
    assert (total, count) == (16.0, 4)


def test_worker_rows_put_alive_workers_first_and_stop_at_the_limit():
    clock = FakeClock()
    d = Dispatcher(tasks(1), lease_timeout=5.0, max_attempts=1, clock=clock)
    for name in ("c", "b", "a"):
        d.touch(name)
    d.leave("a")
    rows = worker_rows(d.workers, [], Watch(clock), clock(), limit=2)
    assert [r["id"] for r in rows] == ["b", "c"]
    assert json.loads(json.dumps(rows)) == rows         # plain data
    assert RATE_WINDOW > 1
