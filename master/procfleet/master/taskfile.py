"""Reading a batch: JSON Lines task files (or stdin) and the `--demo` batch.

The whole file is checked before anything is dispatched; every problem is reported with its
file name and line number.
"""

import json
import sys
from collections.abc import Iterable, Iterator

from procfleet.shared.errors import TaskFileError
from procfleet.shared.records import Task

FIELDS = ("id", "task", "args", "kwargs")
#: report at most this many bad lines, then stop reading
MAX_ERRORS = 20


def demo_tasks(count: int, sleep: float = 0.0) -> list[Task]:
    """`count` tasks square(i); with `sleep`, sleep(sleep, i*i) so the batch takes a while."""
    if sleep > 0:
        return [Task(str(i), "sleep", [sleep, i * i], {}) for i in range(count)]
    return [Task(str(i), "square", [i], {}) for i in range(count)]


def read_tasks(path: str) -> list[Task]:
    """Parse the task file at `path` (`-` for stdin); TaskFileError lists what is wrong."""
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            return parse_lines(sys.stdin, name)
        with open(path, encoding="utf-8") as fh:
            return parse_lines(fh, name)
    except OSError as exc:
        raise TaskFileError(f"cannot read tasks file {name!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def parse_lines(lines: Iterable[str], name: str) -> list[Task]:
    tasks: list[Task] = []
    first_line: dict[str, int] = {}
    errors: list[str] = []
    for lineno, task_or_error in _parse(lines, name):
        if isinstance(task_or_error, str):
            errors.append(task_or_error)
        elif task_or_error.id in first_line:
            errors.append(f"{name}:{lineno}: duplicate id {task_or_error.id!r} "
                          f"(first used on line {first_line[task_or_error.id]})")
        else:
            first_line[task_or_error.id] = lineno
            tasks.append(task_or_error)
        if len(errors) >= MAX_ERRORS:
            errors.append(f"{name}: stopped after {MAX_ERRORS} errors")
            break
    if errors:
        raise TaskFileError(
            f"{name}: {len(errors) if len(errors) <= MAX_ERRORS else 'many'} invalid "
            f"line{'s' if len(errors) > 1 else ''}; nothing was dispatched\n  " + "\n  ".join(errors))
    return tasks


def _parse(lines: Iterable[str], name: str) -> Iterator[tuple[int, Task | str]]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, f"{where}: invalid JSON: {exc.msg} (column {exc.colno})"
            continue
        yield lineno, _task_from_object(obj, lineno, where)


def _task_from_object(obj, lineno: int, where: str) -> Task | str:
    if not isinstance(obj, dict):
        return f"{where}: expected a JSON object like {{\"task\": \"square\", \"args\": [3]}}, " \
               f"got {_json_type(obj)}"
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        return f"{where}: unknown field{'s' if len(unknown) > 1 else ''} " \
               f"{', '.join(map(repr, unknown))} (allowed: {', '.join(FIELDS)})"
    if "task" not in obj:
        return f"{where}: missing \"task\" (the name of the task to run)"
    name = obj["task"]
    if not isinstance(name, str) or not name:
        return f"{where}: \"task\" must be a non-empty string, got {_json_type(name)}"
    task_id = obj.get("id", str(lineno))
    if isinstance(task_id, bool) or not isinstance(task_id, (str, int)) or task_id == "":
        return f"{where}: \"id\" must be a non-empty string or an integer, got {_json_type(task_id)}"
    args = obj.get("args", [])
    if not isinstance(args, list):
        return f"{where}: \"args\" must be an array, got {_json_type(args)}"
    kwargs = obj.get("kwargs", {})
    if not isinstance(kwargs, dict):
        return f"{where}: \"kwargs\" must be an object, got {_json_type(kwargs)}"
    return Task(str(task_id), name, args, kwargs)


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "an array"
    return "an object"
