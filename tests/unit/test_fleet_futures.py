"""How FleetExecutor names a function, writes a call as a task line, and turns a failed result
line back into an exception (no processes)."""

import json
import textwrap

import pytest

from procfleet.master.executor import (RemoteTraceback, chunk_line, exception_of, task_line,
                                       task_name)
from procfleet.shared.tasks import CALL, MAP_CHUNK, task
from procfleet.shared.values import unpack
from procfleet.shared.errors import TaskFailed, TaskTimeout, WorkerCrash, WorkerLost
from procfleet.shared.protocol import MAX_DEPTH
from procfleet.shared.tasks import square


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def record(error: str) -> dict:
    return {"id": 1, "task": "t", "status": "failed", "result": None, "error": error,
            "attempts": 2, "worker": "w1"}


def worker_error(head: str) -> str:
    """An error text as the worker writes it: `Type: message`, a blank line, the traceback."""
    return f"{head}\n\nTraceback (most recent call last):\n  File \"x.py\", line 1\n{head}\n"


def test_a_builtin_exception_comes_back_as_itself_caused_by_the_traceback():
    exc = exception_of(record(worker_error("ValueError: bad\nsecond line")))
    assert type(exc) is ValueError and exc.args == ("bad\nsecond line",)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "File \"x.py\"" in str(exc.__cause__)


def test_a_key_error_keeps_its_key():
    assert exception_of(record(worker_error("KeyError: 'x'"))).args == ("x",)


@pytest.mark.parametrize("head, kind", [
    ("WorkerLost: worker lost 3 times", WorkerLost),
    ("TaskTimeout: timed out after 1 s", TaskTimeout),
    ("WorkerCrash: the process running task 't' died", WorkerCrash),
    ("mymodule.TimeoutError: a user's own class", TaskFailed),
    ("UnknownTask: unknown task 't'", TaskFailed),
    ("UnicodeDecodeError: needs five arguments", TaskFailed),
])
def test_anything_else_is_task_failed_with_its_details(head, kind):
    exc = exception_of(record(worker_error(head)))
    assert type(exc) is kind
    assert (exc.task, exc.attempts, exc.worker) == ("t", 2, "w1")
    assert exc.error.startswith(head)


def test_a_function_travels_by_its_registered_name_or_module_and_name():
    assert task_name(square) == "square"
    assert task_name(textwrap.dedent) == "textwrap:dedent"
    assert task_name("any_name") == "any_name"


@pytest.mark.parametrize("fn, says", [
    (lambda: 1, "lambda"),
    (str.upper, "method_descriptor"),
    ("", "printable text"),
    (print, "builtin_function_or_method"),
])
def test_what_has_no_name_workers_can_import_is_a_type_error(fn, says):
    with pytest.raises(TypeError, match=says):
        task_name(fn)


def test_a_task_line_is_a_task_file_line_of_the_call_task_with_packed_values():
    line = task_line(7, "square", (3, (1, 2)), {"k": None, "b": b"\x00"})
    assert json.loads(line) == {
        "id": 7, "task": CALL,
        "args": ["square", [3, {"$tuple": [1, 2]}], {"k": None, "b": {"$bytes": "AA=="}}]}
    chunk = chunk_line(8, "square", [(1,), ((2, 3),)], timeout=2.0)
    assert json.loads(chunk) == {"id": 8, "task": MAP_CHUNK, "timeout": 2.0,
                                 "args": ["square", [[1], [{"$tuple": [2, 3]}]]]}


def test_the_call_tasks_give_back_what_they_were_given():
    from procfleet.shared.tasks import call, map_chunk
    args = json.loads(task_line(0, "procfleet.test_echo", ((1, 2), {3}), {"k": b"x"}))["args"]
    packed = json.loads(json.dumps(call(*args)))
    assert unpack(packed) == [((1, 2), {3}), {"k": b"x"}]
    args = json.loads(chunk_line(0, "square", [(3,), (float("inf"),)]))["args"]
    assert unpack(json.loads(json.dumps(map_chunk(*args)))) == [9, float("inf")]


@task(name="procfleet.test_echo")
def _echo(*args, **kwargs):
    return [args, kwargs]


@pytest.mark.parametrize("args, says", [
    ((object(),), "args\\[0\\] is a object, which cannot travel"),
    (([1, {"when": 1j}],), "args\\[0\\]\\[1\\]\\['when'\\] is a complex"),
    ((nested(MAX_DEPTH + 1),),
     f"nest more than {MAX_DEPTH} deep"),
    ((nested(100_000),), "nested too deeply"),
])
def test_arguments_that_cannot_travel_are_a_type_error(args, says):
    with pytest.raises(TypeError, match=says):
        task_line(0, "t", args, {})


def test_a_result_that_cannot_travel_back_is_a_type_error_naming_where():
    from procfleet.shared.tasks import call
    with pytest.raises(TypeError, match="task 'procfleet.test_echo' returned a value that cannot "
                       "travel back: its result\\[0\\]\\[1\\] is a object"):
        call("procfleet.test_echo", [{"$dict": []}, object.__new__(object)], {})


def test_map_chunks_stay_single_for_slow_results_and_grow_for_fast_ones():
    from fakes import FakeClock

    from procfleet.master.executor import CHUNKS_PER_SECOND, MAX_AUTO_CHUNK, ChunkSizer
    clock = FakeClock()
    sizer = ChunkSizer(clock)
    assert sizer.size() == 1                     # nothing measured yet
    for _ in range(10):                          # 10 results a second: slow tasks
        clock.advance(0.1)
        sizer.record(1)
    assert sizer.size() == 1
    for _ in range(1000):                        # 100,000 items a second, for a second
        clock.advance(0.001)
        sizer.record(100)
    assert 100_000 // CHUNKS_PER_SECOND <= sizer.size() <= 100_000 // CHUNKS_PER_SECOND + 1
    for _ in range(10_000):                      # far faster: capped
        clock.advance(0.0001)
        sizer.record(1000)
    assert sizer.size() == MAX_AUTO_CHUNK
    clock.advance(10)                            # results stopped: the old rate is forgotten
    sizer.record(1)
    assert sizer.size() == 1


def test_a_result_whose_tags_cannot_be_read_fails_its_future_naming_the_task():
    """A result line holding a tag this procfleet does not know (a newer one's, or forged)
    fails its future with TaskFailed; the others of the same call still resolve."""
    from procfleet.master.executor import FleetExecutor, FleetFuture
    executor = FleetExecutor.__new__(FleetExecutor)         # only what _resolve uses
    executor._futures = {i: FleetFuture(executor, i, "", "mod:f") for i in (1, 2)}
    futures = dict(executor._futures)
    executor._resolve([
        json.dumps({"id": 1, "task": CALL, "status": "ok", "result": {"$pickle": "gAR9"},
                    "error": None, "attempts": 1, "worker": "w1"}),
        json.dumps({"id": 2, "task": CALL, "status": "ok", "result": {"$tuple": [1]},
                    "error": None, "attempts": 1, "worker": "w1"})])
    with pytest.raises(TaskFailed, match="its result cannot be read: a value tagged '\\$pickle'"):
        futures[1].result(0)
    assert futures[1].exception(0).task == "mod:f" and futures[1].exception(0).worker == "w1"
    assert futures[2].result(0) == (1,) and executor._futures == {}
