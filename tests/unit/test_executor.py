"""Running one task: values, failures, unknown names, results that are not JSON."""

import threading

from procfleet.shared.records import Task
from procfleet.shared.tasks import TaskRegistry, registry
from procfleet.worker.executor import Executor, run_task


def test_builtin_square():
    assert run_task(registry, Task("1", "square", [7], {})) == ("1", True, 49, None)


def test_sleep_returns_value():
    assert run_task(registry, Task("s", "sleep", [0], {"value": "v"})).value == "v"


def test_failure_carries_type_message_and_traceback():
    outcome = run_task(registry, Task("f", "fail", ["boom"], {}))
    assert not outcome.ok and outcome.value is None
    assert outcome.error.startswith("RuntimeError: boom")
    assert "Traceback (most recent call last)" in outcome.error
    assert "in fail" in outcome.error


def test_unknown_task_is_a_failed_outcome():
    outcome = run_task(registry, Task("u", "nope", [], {}))
    assert not outcome.ok and "unknown task 'nope'" in outcome.error


def test_bad_arguments_are_a_failed_outcome():
    outcome = run_task(registry, Task("b", "square", [], {}))
    assert not outcome.ok and outcome.error.startswith("TypeError")


def test_result_not_json_is_a_failed_outcome():
    reg = TaskRegistry()
    reg.register(lambda: object(), name="obj")
    reg.register(lambda: float("nan"), name="nan")
    reg.register(lambda: (1, [2]), name="tuple")
    assert "not JSON-serialisable" in run_task(reg, Task("o", "obj", [], {})).error
    assert not run_task(reg, Task("n", "nan", [], {})).ok
    assert run_task(reg, Task("t", "tuple", [], {})).value == [1, [2]]


def test_task_calling_sys_exit_does_not_escape():
    reg = TaskRegistry()
    reg.register(lambda: exit(3), name="exit")
    assert not run_task(reg, Task("e", "exit", [], {})).ok


def test_registry_refuses_a_second_function_under_the_same_name():
    reg = TaskRegistry()
    reg.register(lambda: 1, name="x")
    try:
        reg.register(lambda: 2, name="x")
    except ValueError as exc:
        assert "already registered" in str(exc)
    else:
        raise AssertionError("second registration was accepted")


def test_executor_runs_up_to_concurrency_tasks_at_once():
    barrier = threading.Barrier(4, timeout=5)   # breaks unless 4 tasks wait on it together
    reg = TaskRegistry()
    reg.register(lambda i: (barrier.wait(), i)[1], name="meet")
    wakeup = threading.Event()
    ex = Executor(reg, 4, wakeup)
    ex.submit([Task(str(i), "meet", [i], {}) for i in range(4)])
    got = []
    for _ in range(40):
        if not wakeup.wait(1):
            break
        wakeup.clear()
        got += ex.collect()
        if len(got) == 4:
            break
    assert sorted(o.value for o in got) == [0, 1, 2, 3]
    assert all(o.ok for o in got)
