"""The task registry: names a master may send and the functions a worker runs for them.

User modules add tasks with the `task` decorator and are loaded by `procfleet worker --import`.
Built in: `square`, `sleep` and `fail` for demos (`--demo`) and trials, and the fault-injection
tasks `crash` and `hang`, which misbehave on purpose.
"""

import os
import sys
import time
from collections.abc import Callable

from .errors import UnknownTask
from .values import Unsendable, pack, unpack

#: how long `hang` sleeps between checks that it should go on hanging (always)
HANG_STEP = 60.0


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, Callable] = {}
        # modules imported with --import: their module-level functions run as "module:function"
        self._modules: set[str] = set()

    def register(self, func: Callable | None = None, *, name: str | None = None):
        """Register `func` under `name` (default: its `__name__`); usable as a decorator."""

        def add(f: Callable) -> Callable:
            key = name or f.__name__
            existing = self._tasks.get(key)
            if existing is not None and existing is not f:
                raise ValueError(f"task {key!r} is already registered by {existing.__module__}")
            self._tasks[key] = f
            return f

        return add(func) if func is not None else add

    def allow_module(self, module: str) -> None:
        """Let the module-level functions of `module` (imported with --import) run by the name
        "module:function" (how FleetExecutor sends a function that is not a registered task)."""
        self._modules.add(module)

    def get(self, name: str) -> Callable:
        func = self._tasks.get(name)
        if func is not None:
            return func
        module, colon, attr = name.partition(":")
        if colon and module in self._modules and attr.isidentifier():
            func = getattr(sys.modules.get(module), attr, None)
            if callable(func) and getattr(func, "__module__", None) == module:
                return func
        if colon:
            raise UnknownTask(f"unknown task {name!r}: start the workers with --import {module}"
                              " (FleetExecutor: imports=[...]) so its functions can run")
        raise UnknownTask(f"unknown task {name!r}")

    def name_of(self, func: Callable) -> str | None:
        """The name `func` is registered under, or None."""
        for name, registered in self._tasks.items():
            if registered is func:
                return name
        return None

    def names(self) -> list[str]:
        return sorted(self._tasks)


registry = TaskRegistry()
task = registry.register

#: the task each FleetExecutor.submit() travels as, and the one that runs a chunk of its map();
#: both take and return values packed by procfleet.shared.values, so that a tuple, bytes or a
#: set comes back as it went
CALL = "procfleet.call"
MAP_CHUNK = "procfleet.map_chunk"


@task(name=CALL)
def call(name, args, kwargs):
    """Run task `name` on packed `args` and `kwargs`; return its result packed."""
    func = registry.get(name)
    return _packed(name, func(*unpack(args), **unpack(kwargs)))


@task(name=MAP_CHUNK)
def map_chunk(name, chunk):
    """Run task `name` on each packed argument list of `chunk`; return their results in order,
    packed."""
    func = registry.get(name)
    return [_packed(name, func(*unpack(args))) for args in chunk]


def _packed(name: str, result):
    try:
        return pack(result)
    except Unsendable as exc:
        raise TypeError(f"task {name!r} returned a value that cannot travel back: "
                        f"{exc.describe('its result')}") from None


@task
def square(x):
    """Return x * x."""
    return x * x


@task
def sleep(seconds, value=None):
    """Sleep `seconds`, then return `value`."""
    time.sleep(seconds)
    return value


@task
def fail(message):
    """Raise RuntimeError(message): a task that always fails."""
    raise RuntimeError(message)


@task
def crash(code=1):
    """Fault injection: exit the process running this task at once with `code` (os._exit: no
    cleanup, no result).

    For trying out crash handling, in the test suite or by hand against a deployment (a task
    line `{"task": "crash"}`): the attempt counts as a lost one (`--max-attempts`), the worker
    starts a new task process and carries on. Not for real batches.
    """
    os._exit(code)


@task
def hang():
    """Fault injection: never return (sleep forever, HANG_STEP at a time).

    For trying out task timeouts (`--task-timeout`, a task line's `timeout`) and the worker's
    drain on SIGTERM, in the test suite or by hand. Not for real batches: without a timeout it
    holds a task slot until the worker stops.
    """
    while True:
        time.sleep(HANG_STEP)
