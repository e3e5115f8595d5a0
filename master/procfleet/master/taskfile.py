"""Reading a batch: JSON Lines task files (or stdin) and the `--demo` batch, as task sources.

A task file is never held in memory. It is checked whole before anything is dispatched (every
line, each problem reported with its file name and line number; a second pass only when two ids
may be the same), then streamed to the lease state machine (leases.py) as workers lease tasks.
Every pass reads the same open file, so a file replaced under its name is not what the batch
runs; a file changed during the batch is noticed (its name's stat, its streamed lines, its
digest) and recorded in `changed`, never raised: the stream runs inside a worker's lease.
Stdin cannot be read twice: its lines are checked one by one as they arrive and streamed in
(StdinStream), so a live producer's tasks run before it ends.
"""

import array
import codecs
import hashlib
import io
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator

from procfleet.shared.errors import TaskFileError
from procfleet.shared.permissions import is_permission_error, read_hint
from procfleet.shared.protocol import (MAX_DEPTH, MAX_TASK_BYTES, SMALL_TASK_BYTES, Task,
                                      deeper_than)

from .leases import BigLineSizes

FIELDS = ("id", "task", "args", "kwargs", "timeout")
_FIELD_SET = frozenset(FIELDS)
#: report at most this many bad lines, then stop reading
MAX_ERRORS = 20
#: bits in the duplicate-id bitmap (16 MiB); more ids than ~1/30 of this means more re-checks
ID_BITMAP_BITS = 1 << 27
#: what a Windows editor writes at the start of a UTF-8 file
BOM = "\ufeff"
#: the task file is read in pieces of this many bytes
READ_SIZE = 1 << 20


class DemoSource:
    """`count` tasks square(i); with `sleep`, sleep(sleep, i*i) so the batch takes a while."""

    sizes = None        # every demo task is small
    changed = None

    def __init__(self, count: int, sleep: float = 0.0, timeout: float | None = None) -> None:
        self.total = count
        self.sleep = sleep
        self.timeout = timeout
        self.name = f"--demo {count}"
        self.fingerprint = f"demo:{count}:{sleep!r}"

    def __iter__(self) -> Iterator[Task]:
        # A Task without its __new__, and one shared empty kwargs (the master never changes it).
        t, sleep, new, none = self.timeout, self.sleep, tuple.__new__, {}
        if sleep > 0:
            return (new(Task, (i, str(i), "sleep", [sleep, i * i], none, t))
                    for i in range(self.total))
        return (new(Task, (i, str(i), "square", [i], none, t)) for i in range(self.total))

    def check_unchanged(self) -> str | None:
        return None

    def close(self) -> None:
        pass


class _Pread(io.RawIOBase):
    """A file descriptor read from offset 0 with pread: each pass has its own position."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = os.pread(self.fd, len(buffer), self.pos)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What says a file is still the one that was checked."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class FileSource:
    """A checked JSON Lines task file, streamed again each time it is iterated.

    `sizes`: None when every task line is at most SMALL_TASK_BYTES long, else each task's line
    length in bytes, indexed by seq. `changed`: why the file is no longer the checked one, set
    by the stream or by check_unchanged(); the runner stops the batch when it is set.
    """

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path = path
        self.name = path
        self.timeout = timeout
        self.changed: str | None = None
        self._fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise TaskFileError(f"--tasks {path}: not a regular file (a task file is read "
                                    "twice); for a pipe use --tasks - and give it on stdin")
            self._identity = _identity(st)
            digest = hashlib.sha256()
            passes = iter((digest, None))

            def lines():
                return _read_lines(self._reader(), next(passes, None))

            self.total, self.sizes = check_lines(lines, path)
            if (_identity(os.fstat(self._fd)) != self._identity
                    or self.check_unchanged() is not None):
                raise TaskFileError(f"{path}: changed while it was being checked; run the "
                                    "command again once nothing writes to it")
        except BaseException:
            self.close()
            raise
        self._digest = digest.hexdigest()
        self.fingerprint = f"file:{self._digest}"

    def _reader(self) -> io.TextIOWrapper:
        return io.TextIOWrapper(io.BufferedReader(_Pread(self._fd), READ_SIZE),
                                encoding="utf-8")

    def __iter__(self) -> Iterator[Task]:
        try:
            yield from self._stream()
        except Exception as exc:       # noqa: BLE001 - a lease must never raise
            self._note(f"it cannot be read again: {exc}")

    def _stream(self) -> Iterator[Task]:
        """The checked tasks again. The last one is held back until the rest of the file and
        its digest are checked too, since the dispatcher never asks past the last task."""
        total, digest, seq = self.total, hashlib.sha256(), 0
        entries = task_records(_read_lines(self._reader(), digest), self.path, self.timeout)
        for lineno, task, _size in entries:
            if isinstance(task, str) or seq >= total:
                self._note(task if isinstance(task, str) else
                           f"{self.path}:{lineno}: a task past the {total} that were checked")
                return
            if seq == total - 1:
                for lineno, _task, _size in entries:
                    self._note(f"{self.path}:{lineno}: a task past the {total} that were "
                               "checked")
                    return
                if digest.hexdigest() != self._digest:
                    self._note(f"{self.path}: its content differs from the checked file")
                    return
            yield task._replace(seq=seq)
            seq += 1
        if seq < total:
            self._note(f"{self.path}: it ended after {seq} of the {total} tasks that were checked")

    def _note(self, what: str) -> None:
        if self.changed is None:
            self.changed = what

    def check_unchanged(self) -> str | None:
        """Why the task file is no longer the one that was checked, or None if it still is."""
        if self.changed is None:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._note(f"{self.path} was deleted")
            except OSError as exc:
                self._note(f"{self.path} cannot be looked at: {exc.strerror or exc}")
            else:
                if _identity(st) != self._identity:
                    self._note(f"{self.path} was modified or replaced (its size, time or inode "
                               "changed)")
        return self.changed

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StdinStream:
    """`--tasks -`: stdin's tasks, each line checked as it arrives and leased from then on, so
    a live producer's tasks start before it ends (the batch's dispatcher grows: leases.Feed).
    The first bad line ends the stream with TaskFileError (the batch stops there, exit 2).
    Ids are not checked for duplicates: that needs the whole input."""

    name = "<stdin>"
    fingerprint = None
    changed = None
    total = 0

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self.sizes = BigLineSizes()     # the batch's dispatcher fills it as tasks arrive
        self.error: TaskFileError | None = None

    def records(self) -> Iterator[tuple[Task, int]]:
        """(task, its line's bytes) as stdin's lines arrive; TaskFileError at the first bad
        one (seq is left for the batch to fill in)."""
        try:
            for _lineno, task, size in task_records(_read_lines(sys.stdin), self.name,
                                                    self.timeout):
                if type(task) is str:
                    raise TaskFileError(f"{task}; the batch stopped reading there")
                yield task, size
        except UnicodeDecodeError as exc:
            raise TaskFileError(f"<stdin>: not UTF-8 text ({exc.reason})") from None

    def __iter__(self) -> Iterator[Task]:
        """Every task, numbered (for a caller that wants them all)."""
        return (task._replace(seq=seq) for seq, (task, _size) in enumerate(self.records()))

    def check_unchanged(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def open_source(path: str, timeout: float | None = None):
    """The task source for `--tasks PATH` (`-` for stdin); TaskFileError lists what is wrong."""
    if path == "-":
        return StdinStream(timeout)
    try:
        return FileSource(path, timeout)
    except OSError as exc:
        why = f"; {read_hint(path)}" if is_permission_error(exc) else ""
        raise TaskFileError(f"cannot read tasks file {path!r}: {exc.strerror or exc}{why}"
                            ) from None
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
    return _parsed(lines, name, timeout)


def _parsed(lines: list[str], name: str, timeout: float | None) -> list[Task]:
    return [task._replace(seq=seq)
            for seq, (_n, task, _size) in enumerate(task_records(lines, name, timeout))]


def check_lines(lines: Callable[[], Iterable[str]],
                name: str) -> tuple[int, array.array | None]:
    """Check every line of `lines()`; return (the number of tasks, their sizes), or
    TaskFileError listing the errors. Sizes are None when every line is small (see FileSource).

    Duplicate ids are found in constant memory: each id's hash sets one bit of a fixed bitmap
    (16 MiB), and only when a bit was already set (a duplicate, or two ids sharing a bit) does a
    second pass over the lines compare the ids behind those bits.
    """
    errors: list[str] = []
    bitmap = bytearray(ID_BITMAP_BITS >> 3)
    shared: set[int] = set()
    count = 0
    sizes, largest = array.array("I"), 0
    for _lineno, task, size in task_records(lines(), name, None):
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
        sizes.append(size)
        if size > largest:
            largest = size
    del bitmap
    if not errors and shared:
        errors.extend(_duplicate_ids(lines(), name, shared))
    if errors:
        shown = len(errors) if len(errors) <= MAX_ERRORS else "many"
        raise TaskFileError(
            f"{name}: {shown} invalid line{'s' if len(errors) > 1 else ''}; nothing was "
            "dispatched\n  " + "\n  ".join(errors[:MAX_ERRORS + 1]))
    return count, (sizes if largest > SMALL_TASK_BYTES else None)


def _duplicate_ids(lines: Iterable[str], name: str, shared: set[int]) -> list[str]:
    first_line: dict[str, int] = {}
    errors = []
    for lineno, task, _size in task_records(lines, name, None):
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


def _read_lines(fh: Iterable[str], digest=None) -> Iterator[str | int]:
    """The lines of text file `fh` (closed at the end); a line longer than MAX_TASK_BYTES comes
    as its length in characters instead, never held whole. `digest` sees every line's bytes."""
    limit = MAX_TASK_BYTES + 2          # room for the line's own \r\n
    readline = fh.readline
    update = digest.update if digest is not None else None
    try:
        while line := readline(limit):
            if update is not None:
                update(line.encode("utf-8"))
            if len(line) == limit and line[-1] not in "\r\n":
                length = len(line)
                while (rest := readline(READ_SIZE)) and rest[-1:] not in ("\n", "\r"):
                    length += len(rest)
                    if update is not None:
                        update(rest.encode("utf-8"))
                if rest:
                    length += len(rest)
                    if update is not None:
                        update(rest.encode("utf-8"))
                yield length
            else:
                yield line
    finally:
        close = getattr(fh, "close", None)
        if close is not None and fh is not sys.stdin:
            close()


def task_records(lines: Iterable[str | int], name: str,
           timeout: float | None) -> Iterator[tuple[int, Task | str, int]]:
    """(line number, Task or error text, line length in UTF-8 bytes) for every non-blank line;
    seq is filled in by callers."""
    loads = json.loads
    deepest = MAX_DEPTH + 1                 # the line's own object is one level
    for lineno, line in enumerate(lines, start=1):
        if type(line) is int:
            yield lineno, _too_long(name, lineno, line), line
            continue
        if lineno == 1 and line.startswith(BOM):
            line = line[1:]
        if not line.strip():
            continue
        size = len(line) if line.isascii() else len(line.encode("utf-8", "surrogatepass"))
        if line[-1] == "\n":               # the newline is not the task's
            size -= 2 if line[-2:] == "\r\n" else 1
        if size > MAX_TASK_BYTES:
            yield lineno, _too_long(name, lineno, size), size
            continue
        try:
            obj = loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, f"{name}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})", size
            continue
        except ValueError as exc:       # e.g. an integer of more than 4300 digits
            yield lineno, f"{name}:{lineno}: invalid JSON: {exc}", size
            continue
        except RecursionError:
            yield lineno, f"{name}:{lineno}: \"args\" and \"kwargs\" may not nest more than " \
                          f"{MAX_DEPTH} deep", size
            continue
        task = _task_from_object(obj, lineno, f"{name}:{lineno}", timeout)
        if (line.count("[") + line.count("{") > deepest and type(task) is not str
                and deeper_than(line, deepest)):
            task = f"{name}:{lineno}: \"args\" and \"kwargs\" may not nest more than " \
                   f"{MAX_DEPTH} deep (arrays and objects in one another)"
        yield lineno, task, size


def _too_long(name: str, lineno: int, size: int) -> str:
    return f"{name}:{lineno}: the line is longer than {MAX_TASK_BYTES:,} bytes " \
           f"(about {size:,}), the most a task line may be: its arguments could never travel " \
           "to a worker; pass big inputs as paths or URLs"


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
        return f"{where}: \"id\" must be a non-empty string or an integer, " \
               f"got {_json_type(task_id)}"
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
