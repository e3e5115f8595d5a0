"""Result lines are built from a template: they must still be exactly the JSON of the record."""

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from procfleet.shared.records import ERROR, OK, Outcome, Task, outcome_from_wire, result_line

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(task_id=st.text(min_size=1), name=st.text(min_size=1), value=JSON,
       worker=st.none() | st.text(), attempts=st.integers(min_value=1, max_value=10**6))
def test_ok_line_is_the_json_of_its_record(task_id, name, value, worker, attempts):
    task = Task(0, task_id, name, [], {})
    ok, line = result_line(task, Outcome(0, OK, value, None), attempts=attempts, worker=worker)
    assert ok and "\n" not in line
    assert json.loads(line) == {"id": task_id, "task": name, "status": "ok", "result": value,
                                "error": None, "attempts": attempts, "worker": worker}
    assert list(json.loads(line)) == ["id", "task", "status", "result", "error", "attempts",
                                      "worker"]


@settings(max_examples=100, deadline=None)
@given(error=st.text())
def test_failed_line_carries_the_error_text(error):
    ok, line = result_line(Task(0, "a\n\"b", "t", [], {}), Outcome(0, ERROR, None, error),
                           attempts=2, worker="w")
    assert not ok
    assert json.loads(line) == {"id": "a\n\"b", "task": "t", "status": "failed", "result": None,
                                "error": error, "attempts": 2, "worker": "w"}


def test_a_value_json_cannot_carry_becomes_a_failed_result():
    for value in (math.nan, {1, 2}, [math.inf]):
        ok, line = result_line(Task(0, "x", "t", [], {}), Outcome(0, OK, value, None),
                               attempts=1, worker="w")
        record = json.loads(line)
        assert not ok and record["status"] == "failed"
        assert record["error"].startswith("ResultNotJSON: ")


def test_outcome_shape_is_checked():
    assert outcome_from_wire([3, OK, 9, None]) == Outcome(3, OK, 9, None)
    for bad in ((True, OK, 1, None), (1, "maybe", 1, None), (1, OK, 1, 5), (1, OK), "x"):
        try:
            outcome_from_wire(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")
