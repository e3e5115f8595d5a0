"""The task registry: names a master may send and the functions a worker runs for them.

User modules add tasks with the `task` decorator and are loaded by `procfleet worker --import`.
"""

import os
import time
from collections.abc import Callable

from .errors import UnknownTask

#: how long `hang` sleeps between checks that it should go on hanging (always)
HANG_STEP = 60.0


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, Callable] = {}

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

    def get(self, name: str) -> Callable:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(f"unknown task {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._tasks)


registry = TaskRegistry()
task = registry.register


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
    """Exit the process running this task at once with `code` (os._exit: no cleanup, no result).

    For tests of crash handling: the attempt fails as a crash and the worker carries on.
    """
    os._exit(code)


@task
def hang():
    """Never return (sleep forever, HANG_STEP at a time). For tests of timeouts and shutdown."""
    while True:
        time.sleep(HANG_STEP)
