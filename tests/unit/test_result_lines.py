"""Every result line comes from protocol.ResultLines: the dispatcher's inline `ok` lines (built
a call at a time) and its other paths (retries, lost workers, results JSON cannot carry) must
give exactly the line result_line makes, for any id, task name, worker id and JSON value, and
that line must hold the documented fields in their order."""

import json

from hypothesis import given, strategies as st

from procfleet.master.leases import Dispatcher
from procfleet.shared.protocol import (ERROR, MAX_CACHED_NAMES, OK, ResultLines, Task,
                                      result_line, result_text)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8)
ids = st.text(min_size=1) | st.integers()


#: the fields of a result line, in the order the README documents
FIELDS = ["id", "task", "status", "result", "error", "attempts", "worker"]


def check_record(line: str, task: Task, status: str, result, error, attempts: int,
                 worker: str) -> None:
    """The line is valid UTF-8 JSON holding exactly these fields, in FIELDS order."""
    line.encode("utf-8")
    record = json.loads(line)
    assert list(record) == FIELDS
    assert record == {"id": task.id, "task": task.name, "status": status, "result": result,
                      "error": error, "attempts": attempts, "worker": worker}


@given(task_id=ids, name=st.text(min_size=1), worker=st.text(min_size=1), value=json_values)
def test_the_inline_ok_line_is_result_line(task_id, name, worker, value):
    task = Task(0, task_id, name, [], {})
    d = Dispatcher([task], lease_timeout=5, max_attempts=3)
    assert d.lease(worker, 1) == [task]
    d.complete(worker, [(0, OK, value, None)])
    [(seq, line, ok)] = d.take_results()
    assert seq == 0 and ok and d.done and d.counters.ok == 1
    assert line == result_line(task, (0, OK, value, None), attempts=1, worker=worker)[1]
    check_record(line, task, "ok", value, None, 1, worker)


@given(task_id=ids, name=st.text(min_size=1), worker=st.text(min_size=1),
       value=json_values, retried=st.booleans())
def test_a_result_sent_as_json_text_is_written_as_that_value(task_id, name, worker, value,
                                                             retried):
    """What the service passes (encoded=True): the worker's JSON text, written as it is, gives
    the line the value itself would, inline and (after a lost lease) through the slow path."""
    task = Task(0, task_id, name, [], {})
    d = Dispatcher([task], lease_timeout=5, max_attempts=3)
    d.lease("other" if retried else worker, 1)
    if retried:
        d.leave("other")
        assert d.lease(worker, 1) == [task]
    d.complete(worker, [(0, OK, result_text(value), None)], encoded=True)
    [(seq, line, ok)] = d.take_results()
    attempts = 2 if retried else 1
    assert seq == 0 and ok and d.done and d.counters.ok == 1
    assert line == result_line(task, (0, OK, value, None), attempts=attempts, worker=worker)[1]
    assert json.loads(line)["result"] == value


@given(task_id=ids, name=st.text(min_size=1), worker=st.text(min_size=1),
       error=st.text())
def test_a_failed_line_holds_the_same_fields_in_the_same_order(task_id, name, worker, error):
    task = Task(0, task_id, name, [], {})
    d = Dispatcher([task], lease_timeout=5, max_attempts=3)
    d.lease(worker, 1)
    d.complete(worker, [(0, ERROR, None, error)])
    [(seq, line, ok)] = d.take_results()
    assert seq == 0 and not ok and d.counters.failed == 1
    check_record(line, task, "failed", None, error, 1, worker)


def test_a_task_name_is_kept_once_and_the_cache_is_bounded():
    lines = ResultLines()
    tail = lines.tail(1, "w")
    many = [Task(i, i, f"name-{i}", [], {}) for i in range(MAX_CACHED_NAMES + 50)]
    built = lines.ok_lines(many + many, ["1"] * (2 * len(many)), tail)
    assert len(lines._names) == MAX_CACHED_NAMES
    assert [json.loads(line)["task"] for line in built] == [t.name for t in many + many]
