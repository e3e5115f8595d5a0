"""Reading a batch: JSON Lines task files (or stdin) and the `--demo` batch, as task sources.

A task file is read twice and never held in memory: one pass checks every line (reporting each
problem with its file name and line number) before anything is dispatched, the second streams
tasks to the dispatcher as workers lease them.
"""

import codecs
import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator

from procfleet.shared.errors import TaskFileError
from procfleet.shared.records import Task

FIELDS = ("id", "task", "args", "kwargs", "timeout")
_FIELD_SET = frozenset(FIELDS)
#: report at most this many bad lines, then stop reading
MAX_ERRORS = 20
#: bits in the duplicate-id bitmap (16 MiB); more ids than ~1/30 of this means more re-checks
ID_BITMAP_BITS = 1 << 27


class DemoSource:
    """`count` tasks square(i); with `sleep`, sleep(sleep, i*i) so the batch takes a while."""

    def __init__(self, count: int, sleep: float = 0.0, timeout: float | None = None) -> None:
        self.total = count
        self.sleep = sleep
        self.timeout = timeout
        self.name = f"--demo {count}"
        self.fingerprint = f"demo:{count}:{sleep!r}"
        self.rereadable = True

    def __iter__(self) -> Iterator[Task]:
        # A Task without its __new__, and one shared empty kwargs (the master never changes it).
        t, sleep, new, none = self.timeout, self.sleep, tuple.__new__, {}
        if sleep > 0:
            return (new(Task, (i, str(i), "sleep", [sleep, i * i], none, t))
                    for i in range(self.total))
        return (new(Task, (i, str(i), "square", [i], none, t)) for i in range(self.total))


class FileSource:
    """A checked JSON Lines task file, streamed again each time it is iterated."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path = path
        self.name = path
        self.timeout = timeout
        self.rereadable = True
        digest = hashlib.sha256()
        first_pass = True

        def lines():
            nonlocal first_pass
            with _open(path) as fh:
                if not first_pass:
                    yield from fh
                    return
                first_pass = False
                for line in fh:
                    digest.update(line.encode("utf-8"))
                    yield line

        self.total = check_lines(lines, path)
        self.fingerprint = f"file:{digest.hexdigest()}"

    def __iter__(self) -> Iterator[Task]:
        with _open(self.path) as fh:
            for seq, (_lineno, task) in enumerate(_tasks(fh, self.path, self.timeout)):
                if isinstance(task, str):
                    raise TaskFileError(f"{task} (the file changed while the batch ran)")
                yield task._replace(seq=seq)


class ListSource:
    """Tasks already in memory: stdin, which cannot be read twice, and tests."""

    def __init__(self, tasks: list[Task], name: str = "<stdin>") -> None:
        self.tasks = tasks
        self.total = len(tasks)
        self.name = name
        self.fingerprint = None
        self.rereadable = False

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)


def open_source(path: str, timeout: float | None = None):
    """The task source for `--tasks PATH` (`-` for stdin); TaskFileError lists what is wrong."""
    if path == "-":
        try:
            return ListSource(parse_lines(sys.stdin, "<stdin>", timeout))
        except UnicodeDecodeError as exc:
            raise TaskFileError(f"<stdin>: not UTF-8 text ({exc.reason} at byte {exc.start})") \
                from None
    try:
        return FileSource(path, timeout)
    except OSError as exc:
        raise TaskFileError(f"cannot read tasks file {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"{path}: not UTF-8 text ({exc.reason} at byte "
                            f"{_first_bad_byte(path)})") from None


def _first_bad_byte(path: str) -> int | str:
    """Offset of the first byte that is not UTF-8, from the start of the file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                pending = len(decoder.getstate()[0])
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    return offset - pending + exc.start
                offset += len(chunk)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                return offset - pending + exc.start
    except OSError:
        pass
    return "?"


def demo_tasks(count: int, sleep: float = 0.0) -> list[Task]:
    return list(DemoSource(count, sleep))


def parse_lines(lines: Iterable[str], name: str, timeout: float | None = None) -> list[Task]:
    """Every task of `lines` in memory, after the same checks as a task file gets."""
    lines = list(lines)
    check_lines(lambda: lines, name)
    return [task._replace(seq=seq) for seq, (_n, task) in enumerate(_tasks(lines, name, timeout))]


def check_lines(lines: Callable[[], Iterable[str]], name: str) -> int:
    """Check every line of `lines()`; return the number of tasks, or TaskFileError listing errors.

    Duplicate ids are found in constant memory: each id's hash sets one bit of a fixed bitmap
    (16 MiB), and only when a bit was already set (a duplicate, or two ids sharing a bit) does a
    second pass over the lines compare the ids behind those bits.
    """
    errors: list[str] = []
    bitmap = bytearray(ID_BITMAP_BITS >> 3)
    shared: set[int] = set()
    count = 0
    for _lineno, task in _tasks(lines(), name, None):
        if isinstance(task, str):
            errors.append(task)
            if len(errors) >= MAX_ERRORS:
                errors.append(f"{name}: stopped after {MAX_ERRORS} errors")
                break
            continue
        bit = hash(str(task.id)) & (ID_BITMAP_BITS - 1)
        if bitmap[bit >> 3] & (1 << (bit & 7)):
            shared.add(bit)
        else:
            bitmap[bit >> 3] |= 1 << (bit & 7)
        count += 1
    del bitmap
    if not errors and shared:
        errors.extend(_duplicate_ids(lines(), name, shared))
    if errors:
        shown = len(errors) if len(errors) <= MAX_ERRORS else "many"
        raise TaskFileError(
            f"{name}: {shown} invalid line{'s' if len(errors) > 1 else ''}; nothing was "
            "dispatched\n  " + "\n  ".join(errors[:MAX_ERRORS + 1]))
    return count


def _duplicate_ids(lines: Iterable[str], name: str, shared: set[int]) -> list[str]:
    first_line: dict[str, int] = {}
    errors = []
    for lineno, task in _tasks(lines, name, None):
        key = str(task.id)     # 1 and "1" are the same id
        if hash(key) & (ID_BITMAP_BITS - 1) not in shared:
            continue
        if key in first_line:
            errors.append(f"{name}:{lineno}: duplicate id {task.id!r} "
                          f"(first used on line {first_line[key]})")
            if len(errors) >= MAX_ERRORS:
                break
        else:
            first_line[key] = lineno
    return errors


def _open(path: str):
    return open(path, encoding="utf-8")


def _tasks(lines: Iterable[str], name: str,
           timeout: float | None) -> Iterator[tuple[int, Task | str]]:
    """(line number, Task or error text) for every non-blank line; seq is filled in by callers."""
    loads = json.loads
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, f"{name}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
            continue
        except ValueError as exc:       # e.g. an integer of more than 4300 digits
            yield lineno, f"{name}:{lineno}: invalid JSON: {exc}"
            continue
        except RecursionError:
            yield lineno, f"{name}:{lineno}: invalid JSON: nested too deeply"
            continue
        yield lineno, _task_from_object(obj, lineno, f"{name}:{lineno}", timeout)


def _task_from_object(obj, lineno: int, where: str, timeout: float | None) -> Task | str:
    if not isinstance(obj, dict):
        return f"{where}: expected a JSON object like {{\"task\": \"square\", \"args\": [3]}}, " \
               f"got {_json_type(obj)}"
    if not obj.keys() <= _FIELD_SET:
        unknown = sorted(obj.keys() - _FIELD_SET)
        return f"{where}: unknown field{'s' if len(unknown) > 1 else ''} " \
               f"{', '.join(map(repr, unknown))} (allowed: {', '.join(FIELDS)})"
    if "task" not in obj:
        return f"{where}: missing \"task\" (the name of the task to run)"
    name = obj["task"]
    if not isinstance(name, str) or not name:
        return f"{where}: \"task\" must be a non-empty string, got {_json_type(name)}"
    task_id = obj.get("id", lineno)
    if isinstance(task_id, bool) or not isinstance(task_id, (str, int)) or task_id == "":
        return f"{where}: \"id\" must be a non-empty string or an integer, got {_json_type(task_id)}"
    args = obj.get("args", [])
    if not isinstance(args, list):
        return f"{where}: \"args\" must be an array, got {_json_type(args)}"
    kwargs = obj.get("kwargs", {})
    if not isinstance(kwargs, dict):
        return f"{where}: \"kwargs\" must be an object, got {_json_type(kwargs)}"
    if "timeout" in obj:
        timeout = obj["timeout"]
        seconds = _seconds(timeout)
        if seconds is None:
            return f"{where}: \"timeout\" must be a positive number of seconds, " \
                   f"got {_json_type(timeout)}"
        timeout = seconds
    return Task(0, task_id, name, args, kwargs, timeout)


def _seconds(value) -> float | None:
    """`value` as a positive finite float, or None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number" if not isinstance(value, float) or math.isfinite(value) \
            else f"{value!r}"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "an array"
    return "an object"
