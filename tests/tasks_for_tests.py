"""Tasks for the executor's tests. Importing this module registers them in procfleet's registry,
as `procfleet worker --import tasks_for_tests` would; the tests pass it as an executor import so
that only the task processes load it."""

import ctypes
import os
import time
from pathlib import Path

from procfleet.shared.tasks import hang, task

#: how long `meet` and `wait_for_gate` wait for what they wait for, and how often they look
WAIT_TIMEOUT = 10.0
POLL = 0.01


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
    """Write this process's pid to `path`, then never return."""
    _write_pid(path)
    hang()


@task(name="test_wait_for_gate")
def wait_for_gate(pid_path: str, gate: str) -> str:
    """Write this process's pid to `pid_path`, then return once the file `gate` exists."""
    _write_pid(pid_path)
    _wait(lambda: os.path.exists(gate), f"{gate} to appear")
    return "opened"


@task(name="test_meet")
def meet(directory: str, name: str, count: int) -> int:
    """Wait until `count` tasks (this one included) have checked in under `directory`: they can
    only all succeed if they run at the same time. Returns this process's pid."""
    Path(directory, name).touch()
    _wait(lambda: len(os.listdir(directory)) >= count, f"{count} tasks to run at once")
    return os.getpid()


def _write_pid(path: str) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(path)                               # atomic: a reader never sees it half written


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {WAIT_TIMEOUT} s for {what}")
        time.sleep(POLL)
