"""The dispatcher writes a first-time `ok` result line inline, for speed: it must be exactly
the line records.result_line makes, for any id, task name, worker id and JSON value."""

import json

from hypothesis import given, strategies as st

from procfleet.master.dispatcher import Dispatcher
from procfleet.shared.records import OK, Task, result_line

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
