"""Result lines are built from a template: they must still be exactly the JSON of the record."""

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

import pytest
from strategies import strict_json

from procfleet.shared.protocol import (ERROR, MAX_DEPTH, OK, Outcome, Task, check_result_text,
                                      deeper_than, result_line,
                                      result_text, utf8_safe)

JSON = strict_json


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


def depth_of(value) -> int:
    """How deeply lists and dicts nest in `value` (0 for a scalar)."""
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


BRACKETY = st.text(alphabet='[]{}"\\ab', max_size=6)      # brackets inside strings do not count
NESTED = st.recursive(
    st.none() | st.integers() | BRACKETY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(BRACKETY, inner, max_size=3),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(value=NESTED, limit=st.integers(1, 8), compact=st.booleans())
def test_deeper_than_measures_the_value_not_its_strings(value, limit, compact):
    text = json.dumps(value, separators=(",", ":") if compact else None)
    depth = depth_of(value)
    assert not deeper_than(text, depth) and (depth == 0 or deeper_than(text, depth - 1))
    assert deeper_than(text, limit) == (depth_of(value) > limit)


@settings(max_examples=300, deadline=None)
@given(value=JSON, ascii_only=st.booleans())
def test_any_json_text_of_one_value_is_a_result_and_written_as_it_is(value, ascii_only):
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert check_result_text(text) is None
    ok, line = result_line(Task(0, "x", "t", [], {}), Outcome(0, OK, text, None), attempts=1,
                           worker="w", encoded=True)
    written = utf8_safe(text)      # as it is, but a lone surrogate (not UTF-8) as its escape
    assert ok and json.loads(line)["result"] == value and f'"result":{written},' in line
    assert check_result_text(result_text(value)) is None


@pytest.mark.parametrize("text", [
    "", " ", "NaN", "Infinity", "{1, 2}", "1 2", "[1,\n2]", '"a\nb"', "[1,\r2]", "'x'", "[1,]",
    '"unterminated', "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
    '{"a":' * (MAX_DEPTH + 1) + "0" + "}" * (MAX_DEPTH + 1), "01", '"\x00"',
])
def test_text_that_is_not_one_json_value_on_one_line_is_no_result(text):
    assert check_result_text(text) is not None


def test_a_result_nested_max_depth_deep_is_one():
    assert check_result_text("[" * MAX_DEPTH + "]" * MAX_DEPTH) is None
    assert check_result_text('"\\ud800"') is None        # a lone surrogate's escape is JSON


def test_a_number_python_cannot_read_back_is_refused_but_the_same_digits_in_text_are_not():
    from procfleet.shared.protocol import MAX_DIGITS, check_result_text, results_text_ok
    digits = "7" * (MAX_DIGITS + 1)
    assert "digits" in check_result_text(digits)
    assert not results_text_ok(["1", digits])
    assert check_result_text(f'"{digits}"') is None and results_text_ok(["1", f'"{digits}"'])
    assert results_text_ok(["7" * MAX_DIGITS])


def test_depth_zero_means_no_brackets_outside_strings():
    from procfleet.shared.protocol import deeper_than
    assert not deeper_than('"[{"', 0)
    assert deeper_than("[]", 0) and deeper_than('{"a":1}', 0)
