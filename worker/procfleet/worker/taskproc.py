"""The task-process side of the executor: what runs inside each child process.

A child takes chunks of tasks from its pipe, runs each (a failure of any kind becomes an ERROR
outcome, never an exception), turns every return value into its JSON text, and sends results
back in batches. It shows the parent which task it is running, and since when, in two shared
numbers (STARTED, SINCE), so that the parent (executor.py) can time out a task and blame a
crash on it without a message per task.
"""

import importlib
import os
import pickle
import signal
import sys
import threading
import time
import traceback

from procfleet.shared import compat
from procfleet.shared import tasks as builtin_tasks
from procfleet.shared.errors import UnknownTask
from procfleet.shared.protocol import (ERROR, MAX_ERROR_CHARS, OK, Outcome, ResultTooLarge, Task,
                                       result_text, utf8_safe)
from procfleet.shared.tasks import TaskRegistry
from procfleet.shared.tuning import tune_gc

#: a child sends its results when a chunk is done, and mid-chunk when this long passed since its
#: last send
FLUSH_INTERVAL = 0.002
# a child's shared state: how many tasks it has started, and when (time.monotonic(), one clock for
# every process on Linux) the one it is running started, 0.0 between tasks
STARTED = 0
SINCE = 1
#: a record from a plain tuple without NamedTuple's Python-level __new__ (a third of the cost)
_outcome = tuple.__new__


def run_task(registry: TaskRegistry, task: Task) -> Outcome:
    """Run one task; any failure becomes an ERROR outcome, never an exception."""
    return _outcome(Outcome, _attempt(registry, task.seq, task.name, task.args, task.kwargs))


def _attempt(registry: TaskRegistry, seq: int, name: str, args: list, kwargs: dict) -> tuple:
    """run_task as a plain (seq, kind, value, error, size) tuple, which pickles several times
    faster. An OK value is the result's JSON text (protocol.result_text), made here in the task
    process, which is what the wire carries; `size` is its length in bytes, or an error text's
    length."""
    try:
        func = registry.get(name)
    except UnknownTask as exc:
        return error_outcome(seq, f"UnknownTask: {exc}")
    try:
        value = func(*args, **kwargs)
    except UnknownTask as exc:      # a wrapper (tasks.CALL, MAP_CHUNK) looking up what it runs
        return error_outcome(seq, f"UnknownTask: {exc}")
    except BaseException as exc:    # RecursionError, MemoryError, SystemExit: the task's, not ours
        return error_outcome(seq, format_error(exc))
    if type(value) is int and -_SMALL_INT < value < _SMALL_INT:     # the common case, made quick
        text = int.__repr__(value)
        return seq, OK, text, None, len(text)
    try:
        text = result_text(value)
    except ResultTooLarge as exc:
        return error_outcome(seq, f"ResultTooLarge: task {name!r} returned too much: {exc}")
    except Exception as exc:        # ValueError, TypeError, or whatever a strange object raises
        return error_outcome(seq, f"ResultNotJSON: task {name!r} returned a value that JSON cannot "
                           f"carry: {reason(exc)}")
    return seq, OK, text, None, len(text) if text.isascii() else len(text.encode("utf-8"))


#: an int this close to 0 is printed at once, without result_text's look at its digits
_SMALL_INT = 10 ** 15


def error_outcome(seq: int, text: str, kind: str = ERROR) -> tuple:
    """An outcome tuple for a failed attempt, its text clipped to MAX_ERROR_CHARS and UTF-8
    safe (a lone surrogate, which the wire cannot carry as text, written as its escape)."""
    text = clip_error(text)
    if not text.isascii():
        text = clip_error(utf8_safe(text))
    return seq, kind, None, text, len(text)


def format_error(exc: BaseException) -> str:
    """`Type: message`, a blank line, then the traceback as the worker saw it, clipped to
    MAX_ERROR_CHARS (a message or traceback line longer than a quarter of that is clipped on its
    own, so a huge message is never copied whole into the text)."""
    try:
        head = f"{_type_name(exc)}: {clip_error(_safe_str(exc), _PART_CHARS)}"
        try:
            parts = traceback.TracebackException.from_exception(exc).format()
            tb = "".join(clip_error(part, _PART_CHARS) for part in parts)
        except Exception as err:    # a broken exception object, or no memory left
            tb = f"(no traceback: formatting it raised {type(err).__name__})\n"
        return clip_error(f"{head}\n\n{tb}")
    except Exception:
        return f"{type(exc).__name__} (its message and traceback could not be formatted)"


#: a task's message, or one part of a traceback, is clipped to this before the whole text is
_PART_CHARS = MAX_ERROR_CHARS // 4


def clip_error(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` if it has at most `limit` characters, else its head and its tail (where the
    innermost frames of a traceback are) around a note saying how long it was."""
    if len(text) <= limit:
        return text
    note = f"\n[... clipped: {len(text):,} characters, of which the first and last are kept ...]\n"
    keep = max(limit - len(note), 0)
    head = keep // 2
    return f"{text[:head]}{note}{text[len(text) - (keep - head):]}"


def _type_name(exc: BaseException) -> str:
    """`ValueError` for a builtin exception, `module.Name` for any other (as Python's own
    tracebacks print them), so a client can tell the two apart."""
    kind = type(exc)
    module = getattr(kind, "__module__", "builtins")
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"


def reason(exc: BaseException) -> str:
    """Why a value cannot be a result or be sent, in a few words."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, (ValueError, TypeError)):
        return _safe_str(exc)
    return f"{type(exc).__name__}: {_safe_str(exc)}"


# -- the child ---------------------------------------------------------------------------------

def child_main(conn, state, registry: TaskRegistry | None, imports: tuple[str, ...]) -> None:
    """A task process: run the chunks that arrive on `conn` until the parent closes it."""
    # Ctrl-C and `docker stop` are for the worker to act on (drain), not for its task processes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    builtins = _import_task_modules(imports)
    if registry is None:
        registry = builtins
    view = memoryview(state).cast("B").cast("d")
    tune_gc()
    monotonic = time.monotonic
    started = 0
    while True:
        try:
            chunk = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return                                  # the parent closed the pipe: it is done with us
        results = []
        busy = 0.0
        last_send = monotonic()
        for seq, name, args, kwargs in chunk:
            started += 1
            view[STARTED] = started                # the number first: see executor._Slot._running
            view[SINCE] = since = monotonic()
            results.append(_attempt(registry, seq, name, args, kwargs))
            view[SINCE] = 0.0
            now = monotonic()
            busy += now - since
            if now - last_send >= FLUSH_INTERVAL:
                _send_results(conn, busy, results)
                results, busy, last_send = [], 0.0, now
        if results:
            _send_results(conn, busy, results)


def _send_results(conn, busy: float, results: list[tuple]) -> None:
    """Send `results` to the parent; one that cannot be pickled is sent as an ERROR outcome
    instead. Only a closed pipe ends the process."""
    try:
        messages = [pickle.dumps((busy, results), pickle.HIGHEST_PROTOCOL)]
    except Exception:                               # RecursionError, a broken object, no memory
        share = busy / len(results)
        messages = [_pickled_alone(share, result) for result in results]
    try:
        for data in messages:
            conn.send_bytes(data)
    except OSError:
        sys.exit(0)                                 # the parent is gone


def _pickled_alone(busy: float, result: tuple) -> bytes:
    """A message of `result` alone, or of an ERROR outcome for its task if it cannot be pickled."""
    try:
        return pickle.dumps((busy, [result]), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        error = error_outcome(result[0], f"ResultNotJSON: cannot be sent: {reason(exc)}")
        return pickle.dumps((busy, [error]), pickle.HIGHEST_PROTOCOL)


def _exit_with_parent() -> None:
    """Leave when the worker goes away, even in the middle of a task that never returns."""
    compat.wait_for_parent_exit()
    os._exit(0)                     # a task may be running: skip the cleanup, no one is listening


def _import_task_modules(imports: tuple[str, ...]) -> TaskRegistry:
    """Register the builtins and the user's tasks in this process; the worker already checked
    that they import, so a failure here is only reported (its tasks then fail as unknown)."""
    for name in imports:
        try:
            importlib.import_module(name)
            builtin_tasks.registry.allow_module(name)
        except Exception as exc:  # a user's module can raise anything while importing
            print(f"procfleet task process: cannot import {name}: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
    return builtin_tasks.registry
