"""FleetExecutor with real worker processes: embedded (its own master and local workers) and a
client of a running `procfleet master --serve`."""

import concurrent.futures as cf
import signal
import sys
import threading

import pytest
from fakes import TEST_KEY
from procs import COUNTING_TASKS, free_port, wait_until

from procfleet.master import FleetExecutor
from procfleet.master.executor import RemoteTraceback
from procfleet.shared.codec import RemoteCallError
from procfleet.shared.errors import TaskFailed, TaskTimeout
from procfleet.shared.tasks import fail, sleep, square

#: long enough for a loaded CI machine; every wait below is bounded by it
RESULT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def counting_module(tmp_path_factory):
    """A task module `counting_tasks` (its `counted` task logs each run to a file), imported
    here once (its @task registers in this process for good)."""
    folder = tmp_path_factory.mktemp("modules")
    (folder / "counting_tasks.py").write_text(COUNTING_TASKS)
    sys.path.insert(0, str(folder))
    import counting_tasks
    yield counting_tasks, folder
    sys.path.remove(str(folder))


@pytest.fixture
def counting(counting_module, tmp_path, monkeypatch):
    """counting_tasks, importable by every worker a test starts; a runs file of the test's."""
    module, folder = counting_module
    monkeypatch.setenv("PYTHONPATH", str(folder))
    return module, tmp_path / "runs.txt"


def runs(path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_the_done_when_line_works():
    with FleetExecutor(local_workers=4) as ex:
        assert list(ex.map(square, range(10))) == [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]


def test_submit_map_errors_and_waiting_on_an_embedded_executor():
    with FleetExecutor(local_workers=2, task_timeout=5) as ex:
        assert ex.submit(square, 7).result(RESULT_TIMEOUT) == 49
        assert ex.submit("square", x=5).result(RESULT_TIMEOUT) == 25
        assert list(ex.map(square, range(100), chunksize=7)) == [i * i for i in range(100)]
        assert ex.submit(sleep, 0, (1, [2])).result(RESULT_TIMEOUT) == (1, [2])

        with pytest.raises(RuntimeError, match="^boom$") as raised:
            ex.submit(fail, "boom").result(RESULT_TIMEOUT)
        assert isinstance(raised.value.__cause__, RemoteTraceback)
        assert "RuntimeError: boom" in raised.value.__cause__.text
        assert "Traceback" in raised.value.__cause__.text

        with pytest.raises(TaskFailed, match="UnknownTask") as unknown:
            ex.submit("no_such_task").result(RESULT_TIMEOUT)
        assert unknown.value.task == "no_such_task" and unknown.value.attempts == 1
        assert unknown.value.worker.startswith("local-")

        futures = [ex.submit(square, i) for i in range(50)]
        done, not_done = cf.wait(futures, timeout=RESULT_TIMEOUT)
        assert not not_done
        assert sorted(f.result() for f in cf.as_completed(futures)) == \
            sorted(i * i for i in range(50))


def test_a_task_past_its_timeout_raises_task_timeout():
    with FleetExecutor(local_workers=1, task_timeout=0.5) as ex:
        with pytest.raises(TaskTimeout) as raised:
            ex.submit(sleep, 30).result(RESULT_TIMEOUT)
    assert raised.value.task == "sleep" and "timed out after 0.5 s" in raised.value.error


def test_submit_from_several_threads():
    with FleetExecutor(local_workers=2) as ex:
        out: dict[int, cf.Future] = {}

        def submit_many(start):
            for i in range(start, start + 200):
                out[i] = ex.submit(square, i)

        threads = [threading.Thread(target=submit_many, args=(n * 200,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(RESULT_TIMEOUT)
        assert {i: f.result(RESULT_TIMEOUT) for i, f in out.items()} == \
            {i: i * i for i in range(800)}


def test_map_timeout_is_the_standard_librarys():
    with FleetExecutor(local_workers=1) as ex:
        results = ex.map(sleep, [5], timeout=0.3)
        with pytest.raises(cf.TimeoutError):
            next(results)
        ex.shutdown(cancel_futures=True)


def _local():
    return 1


def _closure():
    def inner(x):
        return x
    return inner


@pytest.mark.parametrize("fn, says", [
    (lambda x: x, "it is a lambda"),
    (_local, "is not in this executor's imports"),
    (_closure(), "defined inside another function"),
    ([].append, "a builtin_function_or_method"),
])
def test_what_cannot_travel_is_a_type_error_at_submit(fn, says):
    with FleetExecutor(local_workers=0) as ex:
        with pytest.raises(TypeError, match=says):
            ex.submit(fn, 1)
        with pytest.raises(TypeError, match="cannot travel to a worker"):
            ex.submit(square, object())
        with pytest.raises(TypeError, match=r"args\[0\]\[1\] is a complex"):
            ex.submit(square, (1, 2j))


#: values JSON would change or refuse, and what a user's "$" key must not be taken for
TYPED = [(1, [2, (3,)]), b"\x00\xff", bytearray(b"z"), {1, 2}, frozenset({"a"}),
         {1: "x", (2, 3): None}, float("-inf"), {"$tuple": [1]}, [{b"k": {4}}]]


def assert_typed_round_trips(ex) -> None:
    """Each TYPED value sent as an argument comes back as it went (sleep(0, v) returns v),
    through submit, map one item a task, and map in chunks."""
    for value in TYPED:
        got = ex.submit(sleep, 0, value).result(RESULT_TIMEOUT)
        assert got == value and type(got) is type(value), (got, value)
    for chunksize in (1, 4):
        got = list(ex.map(sleep, [0] * len(TYPED), TYPED, chunksize=chunksize))
        assert got == TYPED and [type(v) for v in got] == [type(v) for v in TYPED]


def test_tuples_bytes_sets_and_other_keys_come_back_as_they_went_embedded():
    with FleetExecutor(local_workers=2) as ex:
        assert_typed_round_trips(ex)


def test_cancel_takes_back_a_task_no_worker_leased_and_it_never_runs(counting):
    module, path = counting
    with FleetExecutor(local_workers=1, imports=["counting_tasks"]) as ex:
        first = ex.submit(module.counted, str(path), 1.0, -1)
        wait_until(lambda: runs(path), RESULT_TIMEOUT, "the first task to start")
        later = [ex.submit(module.counted, str(path), 0.0, i) for i in range(40)]
        cancelled = {i for i, future in enumerate(later) if future.cancel()}
        assert first.result(RESULT_TIMEOUT) == 1
        for i, future in enumerate(later):
            if i in cancelled:
                assert future.cancelled()
            else:
                assert future.result(RESULT_TIMEOUT) == i * i
    ran = runs(path)
    assert len(cancelled) >= 20, "most of them were still at the master"
    assert not cancelled & set(ran), "a cancelled task ran"
    assert sorted(ran) == [-1] + sorted(set(range(40)) - cancelled)


def test_shutdown_cancel_futures_cancels_what_has_not_started(counting):
    module, path = counting
    ex = FleetExecutor(local_workers=1, imports=["counting_tasks"])
    first = ex.submit(module.counted, str(path), 1.0, -1)
    wait_until(lambda: runs(path), RESULT_TIMEOUT, "the first task to start")
    rest = [ex.submit(module.counted, str(path), 0.0, i) for i in range(30)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result(0) == 1
    assert all(f.done() for f in rest)
    assert sum(f.cancelled() for f in rest) >= 15
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


def test_a_module_level_function_of_an_imported_module_runs_by_name(tmp_path, monkeypatch):
    (tmp_path / "plain_tasks.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    import plain_tasks
    try:
        with FleetExecutor(local_workers=1, imports=["plain_tasks"]) as ex:
            assert list(ex.map(plain_tasks.triple, [1, 2, 3])) == [3, 6, 9]
    finally:
        sys.modules.pop("plain_tasks", None)


@pytest.fixture
def service(spawn, counting_module, counting):
    """A running `procfleet master --serve` with two workers that import counting_tasks."""
    port = free_port()
    master = spawn("master", "--serve", "--bind", f"127.0.0.1:{port}", "--lease-timeout", "1.5")
    master.wait_for(r"serving jobs on")
    workers = [spawn("worker", "--master", f"127.0.0.1:{port}", "--import", "counting_tasks",
                     "--id", f"w{i}", "--concurrency", "2", env={"PYTHONPATH": str(counting_module[1])})
               for i in (1, 2)]
    for worker in workers:
        worker.wait_for(r"connected to master")
    return f"127.0.0.1:{port}", master, workers


def test_a_worker_killed_mid_map_and_every_future_resolves_once(service, counting):
    address, master, workers = service
    module, path = counting
    got = []
    with FleetExecutor(master=address, authkey=TEST_KEY) as ex:
        results = ex.map(module.counted, [str(path)] * 300, [0.01] * 300, range(300))
        for value in results:
            got.append(value)
            if len(got) == 60:
                workers[0].signal(signal.SIGKILL)
    assert got == [i * i for i in range(300)]
    assert master.wait_for(r"worker w1 silent for more than 1.5 s: requeued")


def test_typed_values_come_back_as_they_went_through_a_running_service(service):
    address, _master, _workers = service
    with FleetExecutor(master=address, authkey=TEST_KEY) as ex:
        assert_typed_round_trips(ex)


def test_the_remote_executor_needs_a_key(monkeypatch):
    monkeypatch.delenv("PROCFLEET_AUTHKEY", raising=False)
    monkeypatch.delenv("PROCFLEET_AUTHKEY_FILE", raising=False)
    with pytest.raises(Exception, match="needs the cluster's key"):
        FleetExecutor(master="127.0.0.1:1")


def test_a_batch_master_refuses_a_client_in_one_line(spawn, tmp_path):
    port = free_port()
    spawn("master", "--demo", "5", "--bind", f"127.0.0.1:{port}", "--wait-workers", "1",
          "--results", tmp_path / "r.jsonl").wait_for(r"serving 5 tasks")
    with pytest.raises(RemoteCallError, match="this master runs one batch"):
        FleetExecutor(master=f"127.0.0.1:{port}", authkey=TEST_KEY)


def test_a_worker_stopped_past_its_lease_and_every_future_resolves_once(service, counting):
    """SIGSTOP a worker for longer than the lease: its tasks go to the other worker; when it
    wakes, its late results are dropped as duplicates, never resolved twice."""
    address, master, workers = service
    module, path = counting
    got = []
    with FleetExecutor(master=address, authkey=TEST_KEY) as ex:
        for value in ex.map(module.counted, [str(path)] * 200, [0.01] * 200, range(200)):
            got.append(value)
            if len(got) == 40:
                workers[0].signal(signal.SIGSTOP)
                master.wait_for(r"worker w1 silent for more than 1.5 s: requeued [1-9]")
                workers[0].signal(signal.SIGCONT)
    assert got == [i * i for i in range(200)]
    assert len(runs(path)) >= 200


def test_map_of_many_tiny_tasks_is_chunked_and_keeps_order_and_errors():
    with FleetExecutor(local_workers=2) as ex:
        assert list(ex.map(square, range(30_000))) == [i * i for i in range(30_000)]
        with pytest.raises(TypeError):             # square("x") raised on a worker
            list(ex.map(square, list(range(5000)) + ["x"] + list(range(5000))))
        assert list(ex.map(square, range(50), chunksize=1)) == [i * i for i in range(50)]
