"""Child processes for the benchmarks and the tests (tests/procs.py builds on it): stderr lines
with arrival times, bounded waits, peak RSS, and no leftovers (each child leads its own process
group, killed whole on exit).

It lives in bench/, a package that runs from a checkout (`python -m bench`) and that the tests
already import from the repo root; tests/ is no package, so bench could not import from it."""

import atexit
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

#: how often the master's VmHWM is read while it runs
RSS_POLL = 0.02

_live: set["Child"] = set()
_live_lock = threading.Lock()


class ChildTimeout(RuntimeError):
    """A child that did not do what was waited for in time (it has been killed)."""


class Child:
    """One command in its own session; its stderr is collected line by line with arrival times."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, *,
                 sample_rss: bool = False, stdout=subprocess.DEVNULL, stdin=None, cwd=None,
                 name: str | None = None) -> None:
        self.argv = argv
        self._name = name
        self.popen = subprocess.Popen(argv, env=env, stdin=stdin or subprocess.DEVNULL,
                                      stdout=stdout, stderr=subprocess.PIPE, text=True,
                                      errors="replace", cwd=cwd, start_new_session=True)
        with _live_lock:
            _live.add(self)
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.peak_rss_kb = 0
        self._sampler = None
        if sample_rss:
            self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
            self._sampler.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        for line in self.popen.stderr:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _sample_rss(self) -> None:
        # VmHWM is the process's own peak (its children, the local workers, are not counted), so
        # the last value read before it exits is its peak up to then.
        path = f"/proc/{self.pid}/status"
        while self.popen.poll() is None:
            try:
                with open(path) as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
                            break
            except (OSError, ValueError):
                break
            time.sleep(RSS_POLL)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines)

    @property
    def name(self) -> str:
        """`procfleet master`, `procfleet worker`: how messages name this child."""
        if self._name:
            return self._name
        return " ".join([os.path.basename(self.argv[0]), *self.argv[1:2]])

    def last_line(self) -> str:
        with self._cond:
            return next((line.strip() for _, line in reversed(self.lines) if line.strip()), "")

    def tail(self, n: int = 8) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[-n:])

    def wait_for(self, pattern: str, timeout: float,
                 after: float | None = None) -> tuple[float, re.Match]:
        """Block until a stderr line (that arrived after `after`, if given) matches; return
        (arrival time, match). ChildTimeout if the child exits or `timeout` passes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for t, line in self.lines[seen:]:
                    m = None if after is not None and t <= after else regex.search(line)
                    if m:
                        return t, m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    break
                self._cond.wait(min(left, 0.1))
        code = self.popen.poll()
        what = (f"exited {code} before logging {pattern!r}" if code is not None
                else f"logged no line matching {pattern!r} within {timeout:g} s")
        raise ChildTimeout(f"{self.name} {what} (last line: {self.last_line()}); "
                           f"last lines:\n{self.tail()}")

    def find(self, pattern: str) -> tuple[float, re.Match] | None:
        """The first stderr line so far that matches, with its arrival time."""
        regex = re.compile(pattern)
        with self._cond:
            for t, line in self.lines:
                m = regex.search(line)
                if m:
                    return t, m
        return None

    def wait(self, timeout: float) -> int:
        """The exit code; after `timeout` seconds the process group is killed (ChildTimeout)."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ChildTimeout(f"{self.name} still running after {timeout:g} s; killed "
                               f"(last line: {self.last_line()}); last lines:\n{self.tail()}"
                               ) from None
        self._finish()
        return code

    def signal(self, signum: int) -> None:
        """Signal this process only (not its group)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the child's whole process group (the master's local workers too), then reap."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._finish()

    def _finish(self) -> None:
        # The group may outlive its leader (a local worker the master failed to reap): kill it too.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._reader.join(5)
        if self._sampler is not None:
            self._sampler.join(1)
        with _live_lock:
            _live.discard(self)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper counts as gone); Linux /proc."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    """The pids of `pid`'s child processes (of its main thread); Linux /proc."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in path.read_text().split()]
    except FileNotFoundError:
        return []


def kill_all() -> None:
    """Kill every child still running (at exit, after an error or Ctrl-C)."""
    with _live_lock:
        children = list(_live)
    for child in children:
        child.kill()


atexit.register(kill_all)
