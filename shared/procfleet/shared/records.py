"""Wire records: what crosses the manager connection, as plain tuples of JSON values.

Only builtin types travel, so any Python 3.11-3.13 on either side decodes them and the wire
never needs a procfleet class to be importable on the other end. Tasks are addressed on the wire
by `seq`, their position in the batch; the user's `id` travels along for logs and results.
"""

import json
from json.encoder import encode_basestring
from typing import Any, NamedTuple

STATUS_OK = "ok"
STATUS_FAILED = "failed"

#: how one attempt at a task ended, as the worker reports it
OK = "ok"            # returned a JSON value
ERROR = "error"      # raised; the master may retry it (--retries)
TIMEOUT = "timeout"  # ran past its timeout and was killed; final
CRASH = "crash"      # the process running it died; counts as a lost attempt (--max-attempts)
OUTCOME_KINDS = (OK, ERROR, TIMEOUT, CRASH)


class Task(NamedTuple):
    """A task as the master leases it."""

    seq: int
    id: str
    name: str
    args: list
    kwargs: dict
    timeout: float | None = None   # seconds; None: no limit


class Outcome(NamedTuple):
    """What a worker reports for one attempt at a task: (seq, kind, value, error text)."""

    seq: int
    kind: str
    value: Any
    error: str | None

    @property
    def ok(self) -> bool:
        return self.kind == OK


def task_to_wire(task: Task) -> tuple:
    return tuple(task)


def task_from_wire(item) -> Task:
    """A leased task; six fields, as task_to_wire sends them (checked by length only)."""
    if len(item) != len(Task._fields):
        raise ValueError(f"a task has {len(Task._fields)} fields, got {len(item)}")
    return tuple.__new__(Task, item)


def outcome_to_wire(outcome: Outcome) -> tuple:
    return tuple(outcome)


def outcome_checked(item) -> bool:
    """Whether `item` is a well-formed outcome tuple (the fast check, for every result)."""
    return (type(item) is tuple and len(item) == 4 and type(item[0]) is int
            and item[1] in OUTCOME_KINDS and (item[3] is None or type(item[3]) is str))


def outcome_from_wire(item) -> Outcome:
    """Check the shape of a worker's outcome; ValueError if it is not one."""
    if not isinstance(item, (tuple, list)) or len(item) != 4:
        raise ValueError(f"an outcome is (seq, kind, value, error), got {type(item).__name__}")
    seq, kind, value, error = item
    if isinstance(seq, bool) or not isinstance(seq, int) or kind not in OUTCOME_KINDS \
            or not (error is None or isinstance(error, str)):
        raise ValueError(f"malformed outcome {item!r:.200}")
    return Outcome(seq, kind, value, error)


def result_line(task: Task, outcome: tuple | None, *, attempts: int, worker: str | None,
                error: str | None = None) -> tuple[bool, str]:
    """(ok?, the JSON Lines result record), one per task id, built without a dict.

    `outcome` is an Outcome or a (seq, kind, value, error) tuple. Field order: id, task,
    status, result, error, attempts, worker. This runs once per task in the master, so it is a
    template around the parts that vary, not json.dumps of a dict.
    """
    head = f'{{"id":{encode_basestring(task.id)},"task":{encode_basestring(task.name)},'
    tail = f',"attempts":{attempts:d},"worker":{_str(worker)}}}'
    if outcome is not None and outcome[1] == OK:
        try:
            value = encode_value(outcome[2])
        except (TypeError, ValueError) as exc:      # a worker sent what JSON cannot carry
            outcome, error = None, f"ResultNotJSON: {exc}"
        else:
            return True, f'{head}"status":"ok","result":{value},"error":null{tail}'
    text = outcome[3] if outcome is not None else error
    return False, f'{head}"status":"failed","result":null,"error":{_str(text)}{tail}'


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_value(value) -> str:
    """`value` as compact JSON (ints and strings by a shortcut); TypeError/ValueError if it
    is not a JSON value."""
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is str:
        return encode_basestring(value)
    return _encode(value)


def _str(text: str | None) -> str:
    return "null" if text is None else encode_basestring(text)
