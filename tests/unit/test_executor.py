"""Running tasks: one attempt's outcome (run_task), and the executor's task processes — results
exactly once, timeouts, crashes, hand-back, close, and processes that never outlive the worker."""

import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from procfleet.shared.protocol import CRASH, ERROR, MAX_ERROR_CHARS, OK, TIMEOUT, Outcome, Task
from procfleet.shared.tasks import TaskRegistry, registry
from procfleet.worker import executor as executor_module
from procfleet.worker import taskproc
from procfleet.worker.executor import (AHEAD, CHUNK_MAX, CHUNK_SECONDS, CLOSE_TIMEOUT, Executor,
                                       pace)
from procfleet.worker.taskproc import run_task
from bench.procs import alive as process_running
from procs import wait_until

#: the test tasks' module (tests/tasks_for_tests.py); only task processes import it
TEST_TASKS = "tasks_for_tests"
TESTS_DIR = Path(__file__).resolve().parents[1]
#: every wait in these tests gives up after this long
WAIT = 10.0

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="reads process states from /proc")


def square(seq: int, x: int, timeout: float | None = None) -> Task:
    return Task(seq, f"id-{seq}", "square", [x], {}, timeout)


def named(seq: int, name: str, *args, timeout: float | None = None) -> Task:
    return Task(seq, f"id-{seq}", name, list(args), {}, timeout)


def ok(seq: int, value) -> Outcome:
    """The outcome of a task that returned `value`: its compact JSON text, as the wire carries
    it, and that text's size in UTF-8 bytes."""
    return ok_text(seq, json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def ok_text(seq: int, text: str) -> Outcome:
    return Outcome(seq, OK, text, None, len(text.encode("utf-8")))


def value(outcome: Outcome):
    """An ok outcome's value, read back from its JSON text."""
    assert outcome.kind == OK and type(outcome.value) is str, outcome
    return json.loads(outcome.value)


def failed(seq: int, kind: str, error: str) -> Outcome:
    return Outcome(seq, kind, None, error, len(error))


def gather(executor: Executor, n: int, timeout: float = WAIT) -> dict[int, Outcome]:
    """Wait on the executor's wakeup until `n` outcomes came; by seq, failing on a duplicate."""
    deadline = time.monotonic() + timeout
    got: dict[int, Outcome] = {}
    while len(got) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not executor.wakeup.wait(remaining):
            raise AssertionError(f"{len(got)} of {n} outcomes within {timeout} s; not ok: "
                                 f"{[o for o in got.values() if not o.ok][:5]}")
        executor.wakeup.clear()
        for outcome in executor.collect():
            assert outcome.seq not in got, f"second outcome for seq {outcome.seq}: {outcome}"
            got[outcome.seq] = outcome
    return got


def read_pid(path: Path) -> int:
    wait_until(path.exists, WAIT, f"a task to write its pid to {path}")
    return int(path.read_text())


@pytest.fixture
def make_executor():
    """Executor factory; every executor made is closed afterwards, its processes gone."""
    made: list[Executor] = []

    def make(concurrency: int = 1, imports=(TEST_TASKS,), reg: TaskRegistry = registry):
        executor = Executor(reg, concurrency, threading.Event(), imports)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.close()
    wait_until(lambda: not multiprocessing.active_children(), WAIT, "task processes to be gone")


def warm_up(executor: Executor) -> None:
    """Run enough quick tasks that the executor sends them in large chunks."""
    executor.submit([square(-i, i) for i in range(1, 401)])
    assert all(o.ok for o in gather(executor, 400).values())


# -- one attempt ---------------------------------------------------------------------------

def test_builtin_square():
    assert run_task(registry, Task(1, "a", "square", [7], {})) == ok(1, 49)


def test_sleep_returns_value():
    assert run_task(registry, Task(2, "s", "sleep", [0], {"value": "v"})) == ok(2, "v")


def test_failure_carries_type_message_and_traceback():
    outcome = run_task(registry, Task(3, "f", "fail", ["boom"], {}))
    assert outcome.kind == ERROR and outcome.value is None
    assert outcome.error.startswith("RuntimeError: boom\n\n")
    assert "Traceback (most recent call last)" in outcome.error
    assert "in fail" in outcome.error


def test_unknown_task_is_an_error():
    outcome = run_task(registry, Task(4, "u", "nope", [], {}))
    assert outcome == failed(4, ERROR, "UnknownTask: unknown task 'nope'")


def test_bad_arguments_are_an_error():
    outcome = run_task(registry, Task(5, "b", "square", [], {}))
    assert outcome.kind == ERROR and outcome.error.startswith("TypeError")


def test_result_not_json_is_an_error():
    reg = TaskRegistry()
    reg.register(lambda: object(), name="obj")
    reg.register(lambda: float("nan"), name="nan")
    reg.register(lambda: (1, [2]), name="tuple")
    obj = run_task(reg, Task(6, "o", "obj", [], {}))
    assert obj.kind == ERROR and obj.error.startswith("ResultNotJSON: task 'obj'")
    assert run_task(reg, Task(7, "n", "nan", [], {})).kind == ERROR
    assert run_task(reg, Task(8, "t", "tuple", [], {})) == ok(8, [1, [2]])


def test_task_calling_sys_exit_is_an_error():
    reg = TaskRegistry()
    reg.register(lambda: sys.exit(3), name="exit")
    outcome = run_task(reg, Task(9, "e", "exit", [], {}))
    assert outcome.kind == ERROR and outcome.error.startswith("SystemExit: 3")


def test_registry_refuses_a_second_function_under_the_same_name():
    reg = TaskRegistry()
    reg.register(lambda: 1, name="x")
    with pytest.raises(ValueError, match="already registered"):
        reg.register(lambda: 2, name="x")


# -- the executor --------------------------------------------------------------------------

# -- pacing: chunk sizes and how much a child holds --------------------------------------------

def test_quick_tasks_grow_to_full_chunks_and_a_child_holds_several():
    target, limit = 1, 1
    for _ in range(20):
        target, limit = pace(target, 2e-6)
    assert target == CHUNK_MAX and limit == AHEAD * CHUNK_MAX > target


def test_a_task_longer_than_a_chunk_goes_alone():
    target, limit = pace(CHUNK_MAX, 10 * CHUNK_SECONDS)
    assert (target, limit) == (1, 1)


@given(st.integers(1, CHUNK_MAX), st.floats(1e-7, 100.0))
def test_a_child_never_holds_more_than_ahead_chunks_of_work(target, per_task):
    new_target, limit = pace(target, per_task)
    assert 1 <= new_target <= min(CHUNK_MAX, 2 * target)
    assert limit >= new_target
    assert limit == 1 or limit * per_task <= AHEAD * CHUNK_SECONDS


def test_every_task_gets_exactly_one_outcome(make_executor):
    executor = make_executor(concurrency=2)
    tasks = [square(i, i) for i in range(3000)]
    tasks += [named(3000, "fail", "boom"), named(3001, "nope")]
    for start in range(0, len(tasks), 500):        # in leases, as the worker submits them
        executor.submit(tasks[start:start + 500])
    assert executor.outstanding() > 0
    got = gather(executor, len(tasks))
    assert set(got) == {t.seq for t in tasks}
    assert all(got[i] == ok(i, i * i) for i in range(3000))
    assert got[3000].kind == ERROR and got[3000].error.startswith("RuntimeError: boom")
    assert got[3001].error == "UnknownTask: unknown task 'nope'"
    assert executor.outstanding() == 0 and executor.collect() == []


def test_tasks_run_in_child_processes_concurrency_at_once(make_executor, tmp_path):
    executor = make_executor(concurrency=3)
    executor.submit([named(i, "test_meet", str(tmp_path), str(i), 3) for i in range(3)])
    got = gather(executor, 3, timeout=WAIT + 5)
    assert all(o.kind == OK for o in got.values()), got
    pids = {value(o) for o in got.values()}
    assert len(pids) == 3 and os.getpid() not in pids


def test_task_past_its_timeout_is_killed_and_the_others_complete(make_executor, monkeypatch):
    monkeypatch.setattr(executor_module, "MAX_WAIT", 60.0)   # found by its deadline, not a poll
    executor = make_executor()
    started = time.monotonic()
    executor.submit([square(0, 0), named(1, "hang", timeout=0.3),
                     named(2, "sleep", 0.05, "slept", timeout=None),   # no limit, not "0 s"
                     named(3, "sleep", 0.05, "in time", timeout=5), square(4, 4)])
    got = gather(executor, 5, timeout=5)
    assert time.monotonic() - started >= 0.3
    assert got[1].kind == TIMEOUT and got[1].value is None
    assert got[1].error.startswith("TaskTimeout: timed out after 0.3 s")
    assert [got[i].value for i in (0, 2, 3, 4)] == ["0", '"slept"', '"in time"', "16"]


def test_timeout_in_the_middle_of_a_chunk_reruns_the_rest_exactly_once(make_executor, monkeypatch):
    monkeypatch.setattr(executor_module, "MAX_WAIT", 60.0)
    executor = make_executor()
    warm_up(executor)
    executor.submit([square(i, i, timeout=5) for i in range(20)]
                    + [named(20, "hang", timeout=0.2)]
                    + [square(i, i, timeout=5) for i in range(21, 60)])
    got = gather(executor, 60, timeout=5)
    assert got[20].kind == TIMEOUT and "timed out after 0.2 s" in got[20].error
    assert all(got[i] == ok(i, i * i) for i in range(60) if i != 20)
    assert executor.outstanding() == 0


def test_a_crash_fails_that_attempt_and_a_new_process_takes_over(make_executor):
    executor = make_executor()
    executor.submit([named(0, "test_pid"), named(1, "crash", 3), square(2, 2),
                     named(3, "test_pid")])
    got = gather(executor, 4)
    assert got[1] == failed(1, CRASH,
                            "WorkerCrash: the process running task 'crash' exited with code 3")
    assert got[2] == ok(2, 4)
    assert value(got[0]) != value(got[3])


def test_a_crash_in_the_middle_of_a_chunk_reruns_the_rest_exactly_once(make_executor):
    executor = make_executor(concurrency=2)
    warm_up(executor)
    executor.submit([square(i, i) for i in range(30)] + [named(30, "crash", 3)]
                    + [square(i, i) for i in range(31, 100)])
    got = gather(executor, 100)
    assert got[30].kind == CRASH and got[30].error.endswith("exited with code 3")
    assert all(got[i] == ok(i, i * i) for i in range(100) if i != 30)
    assert executor.outstanding() == 0


def test_a_segfault_is_a_crash_naming_the_signal(make_executor):
    executor = make_executor()
    executor.submit([named(0, "test_segfault"), square(1, 1)])
    got = gather(executor, 2)
    assert got[0].kind == CRASH
    assert got[0].error == ("WorkerCrash: the process running task 'test_segfault' "
                            "was killed by signal 11 (SIGSEGV)")
    assert got[1] == ok(1, 1)                     # and this process is still here to see it


def test_take_unstarted_hands_back_queued_tasks_which_then_never_run(make_executor, tmp_path):
    executor = make_executor()
    gate = tmp_path / "gate"
    executor.submit([named(0, "test_wait_for_gate", str(tmp_path / "pid"), str(gate))]
                    + [square(i, i) for i in range(1, 6)])
    read_pid(tmp_path / "pid")                     # task 0 is running; the squares wait
    taken = executor.take_unstarted()
    assert {t.seq for t in taken} == {1, 2, 3, 4, 5}
    assert executor.outstanding() == 1 and executor.take_unstarted() == []
    gate.touch()
    assert gather(executor, 1) == {0: ok(0, "opened")}
    executor.submit([square(6, 6)])                # had the squares stayed queued, they came first
    assert gather(executor, 1) == {6: ok(6, 36)}
    assert executor.outstanding() == 0


def test_unstarted_counts_what_no_task_process_has_begun(make_executor, tmp_path):
    """What the worker reports as started (held minus this): with 2 slots busy, 3 of 5
    tasks wait, whether queued here or already sent to a child."""
    executor = make_executor(concurrency=2)
    gate = tmp_path / "gate"
    executor.submit([named(i, "test_wait_for_gate", str(tmp_path / f"pid{i}"), str(gate))
                     for i in range(5)])
    wait_until(lambda: len(list(tmp_path.glob("pid?"))) == 2, WAIT, "two tasks to run")
    assert executor.unstarted() == 3 and executor.outstanding() == 5
    gate.touch()
    gather(executor, 5)
    assert executor.unstarted() == 0


@linux_only
def test_close_kills_a_hanging_child_within_its_bound(make_executor, tmp_path):
    executor = make_executor()
    executor.submit([named(0, "test_hang_after_writing_pid", str(tmp_path / "pid"))])
    pid = read_pid(tmp_path / "pid")
    assert process_running(pid)
    closer = threading.Thread(target=executor.close, daemon=True)
    closer.start()
    closer.join(CLOSE_TIMEOUT + WAIT)              # the task hangs for ever: only a kill ends it
    assert not closer.is_alive(), f"close() still waiting after {CLOSE_TIMEOUT + WAIT:g} s"
    wait_until(lambda: not process_running(pid), WAIT, f"task process {pid} to be gone")
    executor.close()                               # a second close is harmless
    with pytest.raises(RuntimeError, match="closed"):
        executor.submit([square(1, 1)])


def test_children_ignore_sigint_and_sigterm(make_executor):
    executor = make_executor()
    executor.submit([named(0, "test_pid")])
    pid = value(gather(executor, 1)[0])
    os.kill(pid, signal.SIGINT)                    # Ctrl-C and docker stop: the worker's to handle
    os.kill(pid, signal.SIGTERM)
    executor.submit([named(1, "test_pid")])
    assert gather(executor, 1)[1] == ok(1, pid)


@linux_only
def test_children_exit_when_the_worker_dies(tmp_path):
    script = ("import sys, threading, time\n"
              "from procfleet.shared.protocol import Task\n"
              "from procfleet.shared.tasks import registry\n"
              "from procfleet.worker.executor import Executor\n"
              f"ex = Executor(registry, 1, threading.Event(), ({TEST_TASKS!r},))\n"
              "ex.submit([Task(0, '0', 'test_hang_after_writing_pid', [sys.argv[1]], {})])\n"
              "time.sleep(60)\n")
    worker = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "pid")],
                              env={**os.environ, "PYTHONPATH": str(TESTS_DIR)})
    try:
        pid = read_pid(tmp_path / "pid")
        worker.kill()                              # no close(), no atexit: gone at once
        worker.wait(WAIT)
        wait_until(lambda: not process_running(pid), 5.0, f"orphaned task process {pid} to exit")
    finally:
        worker.kill()
        worker.wait(WAIT)


def test_children_import_the_user_modules_given(make_executor):
    assert "test_pid" not in registry.names()     # this process never imported them
    executor = make_executor(imports=(TEST_TASKS,))
    executor.submit([named(0, "test_pid")])
    outcome = gather(executor, 1)[0]
    assert value(outcome) != os.getpid()


def test_a_registry_of_module_level_functions_reaches_the_children(make_executor):
    reg = TaskRegistry()
    reg.register(os.getpid, name="pid")
    executor = make_executor(imports=(), reg=reg)
    executor.submit([named(0, "pid"), named(1, "square", 2)])
    got = gather(executor, 2)
    assert value(got[0]) != os.getpid()
    assert got[1].error == "UnknownTask: unknown task 'square'"   # this registry, not procfleet's


def test_a_registry_children_cannot_import_is_refused():
    reg = TaskRegistry()
    reg.register(lambda: 1, name="local")
    with pytest.raises(ValueError, match="module-level"):
        Executor(reg, 1, threading.Event())


def test_large_tasks_and_results_do_not_jam_the_pipes(make_executor):
    """Chunks and result batches far over a pipe's buffer, both ways at once."""
    executor = make_executor(concurrency=2)
    warm_up(executor)                              # so chunks are large too
    big = "x" * 300_000
    executor.submit([named(i, "sleep", 0, big + str(i)) for i in range(60)])
    got = gather(executor, 60, timeout=30)
    assert all(got[i] == ok(i, big + str(i)) for i in range(60))


def test_wait_started_returns_once_every_slot_has_its_task_process(make_executor):
    executor = make_executor(concurrency=3)
    assert executor.wait_started(30)
    pids = [slot.child.proc.pid for slot in executor._slots]
    assert len(set(pids)) == 3 and all(os.path.exists(f"/proc/{pid}") for pid in pids)


# -- results the wire cannot carry, errors too long for it, tasks that break their process ------
# Module-level, so the registry pickles to the task processes (which import this module).

def deep(depth: int) -> list:
    """A list nested `depth` deep, built without recursion."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def digits(n: int) -> int:
    return 10 ** (n - 1)


def not_a_number() -> float:
    return float("nan")


def a_set() -> set:
    return {1, 2}


def long_text(n: int) -> str:
    return "x" * n


def surrogate() -> str:
    return "\ud800"


def surrogate_pair() -> str:
    return "\ud800\udc00"


def raise_long(n: int) -> None:
    raise ValueError("x" * n)


def interrupt() -> None:
    raise KeyboardInterrupt


def recurse(depth: int = 0) -> int:
    return recurse(depth + 1)


def out_of_memory() -> bytearray:
    return bytearray(1 << 62)                       # refused at once: MemoryError, nothing taken


def echo(*args):
    return None


class UnpicklableStr(str):
    """JSON can write it (as a str), pickle cannot."""

    def __reduce__(self):
        raise TypeError("this str does not pickle")


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object does not pickle")


def unpicklable_str() -> str:
    return UnpicklableStr("text")


def unpicklable_object() -> Unpicklable:
    return Unpicklable()


def _refuse_to_load():
    raise RuntimeError("this argument cannot be loaded in a task process")


class LoadsBadly:
    """Pickles here; unpickling it raises, so the task process receiving it dies."""

    def __reduce__(self):
        return _refuse_to_load, ()


AWKWARD = TaskRegistry()
for _func in (deep, digits, not_a_number, a_set, long_text, surrogate, surrogate_pair, raise_long,
              interrupt, recurse, out_of_memory, echo, unpicklable_str, unpicklable_object):
    AWKWARD.register(_func)
AWKWARD.register(registry.get("square"), name="square")
AWKWARD.register(os.getpid, name="pid")


def run_among_quick_tasks(executor: Executor, task: Task) -> tuple[Outcome, int]:
    """Run `task` in one chunk between quick tasks on a warmed-up child; check that those are
    unaffected and that the same process runs the next task. (task's outcome, its size)"""
    warm_up(executor)
    executor.submit([named(100, "pid")])
    pid = value(gather(executor, 1)[100])
    executor.submit([square(0, 0), square(1, 1), task, square(3, 3), named(4, "pid")])
    got = gather(executor, 5)
    assert [got[i] for i in (0, 1, 3)] == [ok(0, 0), ok(1, 1), ok(3, 9)]
    assert got[4] == ok(4, pid)                     # the same task process, still going
    executor.submit([square(5, 5)])
    assert gather(executor, 1) == {5: ok(5, 25)}
    return got[task.seq]


@pytest.mark.parametrize("task, prefix, says", [
    (named(2, "digits", 5000), "ResultNotJSON: task 'digits' returned", "4300"),
    (named(2, "deep", 150), "ResultNotJSON: task 'deep' returned", "nested more than 100"),
    (named(2, "deep", 600), "ResultNotJSON: task 'deep' returned", "nested more than 100"),
    (named(2, "deep", 1000), "ResultNotJSON: task 'deep' returned", "nested more than 100"),
    (named(2, "deep", 5000), "ResultNotJSON: task 'deep' returned", "nested more than 100"),
    (named(2, "not_a_number"), "ResultNotJSON: task 'not_a_number' returned", "nan"),
    (named(2, "a_set"), "ResultNotJSON: task 'a_set' returned", "set"),
    (named(2, "unpicklable_object"), "ResultNotJSON: task 'unpicklable_object'", "Unpicklable"),
    (named(2, "long_text", 20_000_000), "ResultTooLarge: task 'long_text' returned",
     "20,000,002 bytes"),
    (named(2, "raise_long", 20_000_000), "ValueError: xxxxxxxx", "clipped: "),
    (named(2, "interrupt"), "KeyboardInterrupt", "Traceback"),
    (named(2, "recurse"), "RecursionError: maximum recursion depth", "in recurse"),
    (named(2, "out_of_memory"), "MemoryError", "in out_of_memory"),
], ids=lambda v: f"{v.name}{v.args}" if isinstance(v, Task) else "")
def test_a_result_or_error_the_wire_cannot_carry_fails_that_task_alone(make_executor, task,
                                                                      prefix, says):
    outcome = run_among_quick_tasks(make_executor(imports=(), reg=AWKWARD), task)
    assert outcome.kind == ERROR and outcome.value is None
    assert outcome.error.startswith(prefix) and says in outcome.error
    assert len(outcome.error) <= MAX_ERROR_CHARS and outcome.size == len(outcome.error)


@pytest.mark.parametrize("task, text, result", [
    # a lone surrogate is written as its escape, so the text is UTF-8 and means the same
    (named(2, "surrogate"), '"\\ud800"', "\ud800"),
    (named(2, "surrogate_pair"), '"\\ud800\\udc00"', "\U00010000"),   # as JSON reads a pair
    (named(2, "unpicklable_str"), '"text"', "text"),   # a plain str, which pickles
    (named(2, "deep", 100), json.dumps(deep(100), separators=(",", ":")), deep(100)),
    (named(2, "digits", 4300), "1" + "0" * 4299, 10 ** 4299),
], ids=lambda v: f"{v.name}{v.args}" if isinstance(v, Task) else "")
def test_awkward_results_json_can_carry_come_back_equal(make_executor, task, text, result):
    outcome = run_among_quick_tasks(make_executor(imports=(), reg=AWKWARD), task)
    assert outcome == ok_text(2, text) and type(outcome.value) is str
    assert value(outcome) == result and outcome.value.encode("utf-8")


def test_task_arguments_that_cannot_be_pickled_fail_those_tasks_alone(make_executor):
    executor = make_executor(imports=(), reg=AWKWARD)
    warm_up(executor)
    executor.submit([square(0, 0), named(1, "echo", deep(5000)), square(2, 2),
                     named(3, "echo", lambda: None), square(4, 4)])
    got = gather(executor, 5)
    assert [got[i] for i in (0, 2, 4)] == [ok(0, 0), ok(2, 4), ok(4, 16)]
    for seq in (1, 3):
        assert got[seq].kind == ERROR and got[seq].size == len(got[seq].error)
        assert got[seq].error.startswith("TaskNotSent: task 'echo' cannot be sent to a task "
                                         "process: its arguments do not pickle: ")
    assert "nested too deeply" in got[1].error
    executor.submit([square(5, 5)])
    assert gather(executor, 1) == {5: ok(5, 25)}
    assert executor.outstanding() == 0


def test_a_task_that_kills_its_process_between_tasks_fails_after_max_strikes(make_executor):
    executor = make_executor(imports=(), reg=AWKWARD)
    warm_up(executor)                              # so the poison arrives in a chunk of 20
    executor.submit([square(i, i) for i in range(10)] + [named(10, "echo", LoadsBadly())]
                    + [square(i, i) for i in range(11, 20)])
    got = gather(executor, 20, timeout=2 * WAIT)
    assert all(got[i] == ok(i, i * i) for i in range(20) if i != 10)
    strikes = executor_module.MAX_STRIKES
    assert got[10] == failed(10, ERROR, f"TaskNotRun: {strikes} task processes failed outside "
                                        "any task while holding task 'echo' (last: its task "
                                        "process exited with code 1 between tasks); it is not "
                                        "tried again here")
    executor.submit([square(20, 20)])
    assert gather(executor, 1) == {20: ok(20, 400)}
    assert executor.outstanding() == 0 and not executor._strikes


def test_a_result_that_cannot_be_pickled_is_sent_as_an_error_for_its_task_alone():
    here, there = multiprocessing.Pipe()
    results = [(0, OK, "0", None, 1), (1, OK, deep(5000), None, 1), (2, OK, lambda: 2, None, 1),
               (3, OK, UnpicklableStr("3"), None, 3), (4, OK, '"four"', None, 6)]
    taskproc._send_results(there, 0.5, results)
    messages = []
    while here.poll(0):
        messages.append(pickle.loads(here.recv_bytes()))
    got = [result for _, batch in messages for result in batch]
    assert sorted(r[0] for r in got) == [0, 1, 2, 3, 4]        # one each, in some message
    by_seq = {r[0]: r for r in got}
    assert by_seq[0] == results[0] and by_seq[4] == results[4]
    for seq in (1, 2, 3):
        seq_, kind, value, error, size = by_seq[seq]
        assert kind == ERROR and value is None and size == len(error)
        assert error.startswith("ResultNotJSON: cannot be sent: ")
    assert "nested too deeply" in by_seq[1][3]
    assert sum(busy for busy, _ in messages) == pytest.approx(0.5)
    here.close()
    with pytest.raises(SystemExit):                # only a closed pipe ends a task process
        taskproc._send_results(there, 0.1, results[:1])
