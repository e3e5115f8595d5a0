"""The promise, as a property: whatever a task file holds and whatever its tasks return, each
task ends with exactly one valid JSON line (or the file is refused before anything runs).

One example is a whole batch, in process and without sockets, through every piece a task's
data passes: the task file check, the dispatcher's leases (with replies lost and results sent
twice, as over a bad network), the wire codec both ways (the master decoding each exchange
against its schema and checking its outcomes, as the server and service do), the worker's run of
the task and the JSON text it makes of the result, the child's pipe, the master's result lines,
and the results file, read back as strict UTF-8.
"""

import json
import pickle
import random

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from procfleet.master.leases import Dispatcher
from procfleet.master.results import ResultWriter
from procfleet.master.schemas import CALLS, ENVELOPE, decode_args
from procfleet.master.taskfile import open_source
from procfleet.shared import codec
from procfleet.shared.errors import TaskFileError
from procfleet.shared.protocol import MAX_DEPTH, check_outcomes, task_from_wire
from procfleet.shared.tasks import TaskRegistry
from procfleet.worker.taskproc import _attempt
from strategies import ANY_CHAR, json_values

PROPERTY = settings(deadline=None, database=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def nested(depth: int, leaf=0):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# What a task may return: any JSON value, and what JSON cannot carry or can barely carry.
returns = st.one_of(
    json_values,
    st.integers(min_value=10 ** 4290, max_value=10 ** 4310),     # around the 4300-digit limit
    st.integers(min_value=1, max_value=3000).map(nested),         # shallow to very deep
    st.sampled_from([float("nan"), float("inf"), "\ud800", "\udfff\ud800x", (1, 2), {1, 2},
                     b"bytes", {"k": {3}}, 2 ** 64]),
    st.integers(min_value=0, max_value=1024 * 1024).map(lambda n: "x" * n),
)
# What a task line may hold besides: ids of both JSON types, arguments of any shape and depth.
task_ids = st.one_of(st.text(ANY_CHAR, min_size=1, max_size=8), st.integers(-10**30, 10**30))
arguments = st.one_of(json_values, st.integers(min_value=1, max_value=150).map(nested),
                      st.integers(min_value=10 ** 4290, max_value=10 ** 4299))


def exchange_outcomes(held: list[tuple], cursor: tuple) -> list[tuple]:
    """The outcomes of an exchange call, sent and decoded as the master's server does it."""
    request = ("ident", "exchange", ("w", "batch", held, 4, 0.0, cursor, 0), {})
    _ident, name, raw, _kwds = codec.decode(codec.encode(request), ENVELOPE)
    return decode_args(CALLS, name, raw, "a dispatcher method")[2]


def run_batch(tmp, specs, network: random.Random) -> list[bytes]:
    """Run the batch of `specs` [(id, argument, return value)] through every stage; return the
    results file's lines as bytes."""
    values = [ret for _id, _arg, ret in specs]
    registry = TaskRegistry()
    registry.register(lambda index, _arg: values[index], name="give")
    path = tmp / "tasks.jsonl"
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for index, (task_id, arg, _ret) in enumerate(specs):
            spec = {"id": task_id, "task": "give", "args": [index, arg]}
            line = json.dumps(spec, ensure_ascii=network.random() < 0.5)
            if not line.isascii() and any("\ud800" <= c <= "\udfff" for c in line):
                line = json.dumps(spec)          # a file holds lone surrogates as \u escapes
            fh.write(line + "\n")
    source = open_source(str(path))
    dispatcher = Dispatcher(source, source.total, lease_timeout=5.0, max_attempts=3,
                            sizes=getattr(source, "sizes", None))
    out = tmp / "results.jsonl"
    writer = ResultWriter(str(out))
    calls, acked, held = 0, 0, []
    for _round in range(20 * len(specs) + 20):
        if dispatcher.done:
            break
        calls += 1
        outcomes = exchange_outcomes(held, ("session", calls, acked))  # the wire, master-bound
        if not dispatcher.begin_call("w", "session", calls, acked):
            raise AssertionError("a call in order was taken as stale")
        if outcomes:
            check_outcomes(outcomes, dispatcher.total)
            dispatcher.complete("w", outcomes, encoded=True)
            if network.random() < 0.2:                          # a result that arrives twice
                dispatcher.complete("w", outcomes, encoded=True)
        leased = [tuple(t) for t in dispatcher.lease("w", network.randint(1, 4), call=calls)]
        reply = codec.decode(codec.encode((leased, "run")))      # the wire, worker-bound
        held = []
        if network.random() < 0.2:
            continue                                            # the reply was lost
        acked = calls
        for item in reply[0]:
            task = task_from_wire(item)
            result = _attempt(registry, task.seq, task.name, task.args, task.kwargs)
            result = pickle.loads(pickle.dumps(result, pickle.HIGHEST_PROTOCOL))  # child pipe
            held.append(tuple(result[:4]))
        writer.write_lines([line for _seq, line, _ok in dispatcher.take_results()])
    writer.write_lines([line for _seq, line, _ok in dispatcher.take_results()])
    writer.close()
    assert dispatcher.done, "the batch did not end"
    return out.read_bytes().splitlines()


@PROPERTY
@example(specs=[("k", {"\ud800": [2 ** 64, "\udfff"]}, {"\ud800": 1})], seed=1)  # a lease once failed
@given(specs=st.lists(st.tuples(task_ids, arguments, returns), min_size=1, max_size=6,
                      unique_by=lambda spec: str(spec[0])),
       seed=st.integers(0, 2 ** 32))
def test_each_task_ends_with_exactly_one_valid_line(tmp_path_factory, specs, seed):
    tmp = tmp_path_factory.mktemp("batch")
    try:
        lines = run_batch(tmp, specs, random.Random(seed))
    except TaskFileError as exc:
        # Refused up front, naming a line: only for arguments nested too deeply.
        assert any(json.dumps(arg).count("[") > MAX_DEPTH - 3 for _id, arg, _ret in specs), exc
        assert "tasks.jsonl:" in str(exc)
        return
    records = [json.loads(line.decode("utf-8")) for line in lines]    # strict UTF-8, valid JSON
    assert sorted(map(repr, (r["id"] for r in records))) == \
        sorted(map(repr, (task_id for task_id, _arg, _ret in specs)))  # once each, type kept
    by_id = {repr(r["id"]): r for r in records}
    for task_id, _arg, ret in specs:
        record = by_id[repr(task_id)]
        if record["status"] == "ok":
            assert record["result"] == json.loads(json.dumps(ret))
        else:
            assert record["error"].startswith(("ResultNotJSON", "ResultTooLarge")), record
