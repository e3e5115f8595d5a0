"""Wire records: what crosses the manager connection, as plain tuples of JSON values.

Only builtin types travel, so any Python 3.11-3.13 on either side decodes them and the wire
never needs a procfleet class to be importable on the other end.
"""

import json
from typing import Any, NamedTuple

STATUS_OK = "ok"
STATUS_FAILED = "failed"


class Task(NamedTuple):
    """A task as the master leases it: (id, name, args, kwargs)."""

    id: str
    name: str
    args: list
    kwargs: dict


class Outcome(NamedTuple):
    """What a worker reports for one task: (id, ok, value, error text)."""

    id: str
    ok: bool
    value: Any
    error: str | None


def task_to_wire(task: Task) -> tuple:
    return tuple(task)


def task_from_wire(item: tuple) -> Task:
    return Task(*item)


def outcome_to_wire(outcome: Outcome) -> tuple:
    return tuple(outcome)


def outcome_from_wire(item: tuple) -> Outcome:
    return Outcome(*item)


def result_record(task_id: str, task: str, outcome: Outcome | None, *, attempts: int,
                  worker: str | None, error: str | None = None) -> dict:
    """The JSON Lines result record, one per task id."""
    if outcome is not None and outcome.ok:
        return {"id": task_id, "task": task, "status": STATUS_OK, "result": outcome.value,
                "error": None, "attempts": attempts, "worker": worker}
    return {"id": task_id, "task": task, "status": STATUS_FAILED, "result": None,
            "error": outcome.error if outcome is not None else error,
            "attempts": attempts, "worker": worker}


def dumps(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)
