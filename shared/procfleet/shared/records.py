"""Wire records: what crosses the manager connection, as plain tuples of JSON values.

Only builtin types travel, so any Python 3.11-3.13 on either side decodes them and the wire
never needs a procfleet class to be importable on the other end. Tasks are addressed on the wire
by `seq`, their position in the batch; the user's `id` travels along for logs and results.
"""

import json
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
    return Task(*item)


def outcome_to_wire(outcome: Outcome) -> tuple:
    return tuple(outcome)


def outcome_from_wire(item) -> Outcome:
    """Check the shape of a worker's outcome; ValueError if it is not one."""
    if not isinstance(item, (tuple, list)) or len(item) != 4:
        raise ValueError(f"an outcome is (seq, kind, value, error), got {type(item).__name__}")
    seq, kind, value, error = item
    if isinstance(seq, bool) or not isinstance(seq, int) or kind not in OUTCOME_KINDS \
            or not (error is None or isinstance(error, str)):
        raise ValueError(f"malformed outcome {item!r:.200}")
    return Outcome(seq, kind, value, error)


def result_record(task: Task, outcome: Outcome | None, *, attempts: int,
                  worker: str | None, error: str | None = None) -> dict:
    """The JSON Lines result record, one per task id."""
    if outcome is not None and outcome.ok:
        return {"id": task.id, "task": task.name, "status": STATUS_OK, "result": outcome.value,
                "error": None, "attempts": attempts, "worker": worker}
    return {"id": task.id, "task": task.name, "status": STATUS_FAILED, "result": None,
            "error": outcome.error if outcome is not None else error,
            "attempts": attempts, "worker": worker}


def dumps(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)
