"""Tasks for the executor's tests. Importing this module registers them in procfleet's registry,
as `procfleet worker --import tasks_for_tests` would; the tests pass it as an executor import so
that only the task processes load it."""

import ctypes
import os
import time
from pathlib import Path

from procfleet.shared.tasks import hang, task

#: how long `meet` waits for the other tasks to arrive, and how often it looks
MEET_TIMEOUT = 10.0
MEET_POLL = 0.01


@task(name="test_pid")
def pid() -> int:
    """The pid of the process running this task."""
    return os.getpid()


@task(name="test_segfault")
def segfault() -> None:
    """Read address 0: the process dies of SIGSEGV."""
    ctypes.string_at(0)


@task(name="test_hang_after_writing_pid")
def hang_after_writing_pid(path: str) -> None:
    """Write this process's pid to `path` (atomically), then never return."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(path)
    hang()


@task(name="test_meet")
def meet(directory: str, name: str, count: int) -> int:
    """Wait until `count` tasks (this one included) have checked in under `directory`: they can
    only all succeed if they run at the same time. Returns this process's pid."""
    Path(directory, name).touch()
    deadline = time.monotonic() + MEET_TIMEOUT
    while len(os.listdir(directory)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(directory))} of {count} tasks ran at once")
        time.sleep(MEET_POLL)
    return os.getpid()
