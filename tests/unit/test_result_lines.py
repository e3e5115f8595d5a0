"""The dispatcher writes a first-time `ok` result line inline, for speed: it must be exactly
the line protocol.result_line makes, for any id, task name, worker id and JSON value."""

import json

from hypothesis import given, strategies as st

from procfleet.master.leases import Dispatcher
from procfleet.shared.protocol import OK, Task, result_line, result_text

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8)


@given(task_id=st.text(min_size=1), name=st.text(min_size=1), worker=st.text(min_size=1),
       value=json_values)
def test_the_inline_ok_line_is_result_line(task_id, name, worker, value):
    task = Task(0, task_id, name, [], {})
    d = Dispatcher([task], lease_timeout=5, max_attempts=3)
    assert d.lease(worker, 1) == [task]
    d.complete(worker, [(0, OK, value, None)])
    [(seq, line)] = d.take_results()
    assert seq == 0 and d.done and d.counters.ok == 1
    assert line == result_line(task, (0, OK, value, None), attempts=1, worker=worker)[1]
    assert json.loads(line)["result"] == value


@given(task_id=st.text(min_size=1), name=st.text(min_size=1), worker=st.text(min_size=1),
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
    [(seq, line)] = d.take_results()
    attempts = 2 if retried else 1
    assert seq == 0 and d.done and d.counters.ok == 1
    assert line == result_line(task, (0, OK, value, None), attempts=attempts, worker=worker)[1]
    assert json.loads(line)["result"] == value
