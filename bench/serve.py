"""A running `procfleet master --serve` for the service cases, and its clients through the CLI:
started on a free loopback port with its local workers joined, pinged, its RSS read from /proc,
jobs submitted with `procfleet submit`, stopped with SIGTERM. Every wait is bounded."""

import json
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from procfleet.shared.errors import ProcfleetError
from procfleet.shared.manager import connect

from .procfleet import Procfleet, RunFailed
from .procs import Child, ChildTimeout

SERVING_JOBS = r"serving jobs on \S+:(\d+) "
#: bounds: the service's start with its workers joined, one ping, its stop after SIGTERM
START_TIMEOUT = 60.0
CALL_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0
#: how often a wait on the service's figures pings it
PING_POLL = 0.02
#: what a client logs before its summary object
SUMMARY = "summary: "


@dataclass
class SubmitRun:
    """One `procfleet submit` to its end: exit code, wall seconds (process start included), the
    summary it logged, and its stdout (the result lines with --results -)."""

    code: int
    wall: float
    summary: dict | None
    stdout: str
    stderr: str

    def check(self, tasks: int) -> dict:
        """The summary of a job whose `tasks` all ended ok; RunFailed otherwise."""
        s = self.summary
        if self.code != 0 or s is None or s.get("ok") != tasks or s.get("unfinished", 0):
            tail = "\n".join(self.stderr.strip().splitlines()[-6:])
            raise RunFailed(f"procfleet submit exited {self.code} (expected {tasks} tasks ok); "
                            f"summary {s}; last lines:\n{tail}")
        return s


def events_logged(log: str, text: str, kind: str) -> int:
    """How many events of `kind` a master's log reports: its lines holding `text`, plus those
    its throttle left out ("N more KIND events since the last of these lines, ...")."""
    more = re.compile(rf"(\d+) more {re.escape(kind)} events since the last")
    total = 0
    for line in log.splitlines():
        if text in line:
            total += 1
        else:
            m = more.search(line)
            total += int(m.group(1)) if m else 0
    return total


def client_summary(text: str, actor: str = "submit") -> dict | None:
    """The object of the last `HH:MM:SS ACTOR: summary: {...}` line of `text`, or None."""
    for line in reversed(text.splitlines()):
        prefix, found, body = line.partition(": " + SUMMARY)
        if found and prefix.partition(" ")[2] == actor and body.startswith("{"):
            try:
                return json.loads(body)
            except ValueError:
                continue
    return None


class Service:
    """`procfleet master --serve --local-workers N` until close(); use it as a context manager."""

    def __init__(self, pf: Procfleet, local_workers: int,
                 lease_timeout: float | None = None) -> None:
        self.pf = pf
        argv = [pf.executable, "master", "--serve", "--bind", "127.0.0.1:0",
                "--local-workers", str(local_workers)]
        if lease_timeout is not None:
            argv += ["--lease-timeout", f"{lease_timeout:g}"]
        self.argv = argv
        self.child = Child(argv, pf.env, name="procfleet master --serve")
        try:
            _, m = self.child.wait_for(SERVING_JOBS, START_TIMEOUT)
            self.port = int(m.group(1))
            self.address = f"127.0.0.1:{self.port}"
            try:
                self.proxy = connect(("127.0.0.1", self.port),
                                     pf.env["PROCFLEET_AUTHKEY"].encode(), CALL_TIMEOUT)
                self.proxy.set_call_timeout(CALL_TIMEOUT)
            except ProcfleetError as exc:
                raise RunFailed(f"cannot ping the service: {exc}") from None
            self.wait_until(lambda p: p["workers"] >= local_workers, START_TIMEOUT,
                            f"{local_workers} local workers joined")
        except BaseException:
            self.child.kill()
            raise

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.close(quiet=kind is not None)

    # -- what it holds ---------------------------------------------------------------------------
    def ping(self) -> dict:
        """{"state", "total", "done", "workers", "jobs"}: done and total over the open jobs."""
        try:
            return self.proxy.ping()
        except (ProcfleetError, OSError, EOFError) as exc:
            raise RunFailed(f"the service stopped answering ping ({type(exc).__name__}: {exc});"
                            f" its last lines:\n{self.child.tail()}") from None

    def wait_until(self, test, timeout: float, what: str, client: Child | None = None) -> dict:
        """Ping until test(ping) holds; the ping that passed. RunFailed after `timeout`, or if
        `client` exits first."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.ping()
            if test(info):
                return info
            if client is not None and client.popen.poll() is not None:
                raise RunFailed(f"{client.name} exited {client.popen.returncode} before "
                                f"{what} (ping: {info}); its last lines:\n{client.tail()}")
            if time.monotonic() > deadline:
                raise RunFailed(f"not {what} within {timeout:g} s (ping: {info}); the "
                                f"master's last lines:\n{self.child.tail()}")
            time.sleep(PING_POLL)

    def rss_mb(self) -> float:
        """The master's resident memory now (VmRSS; its local workers are not counted)."""
        try:
            with open(f"/proc/{self.child.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass
        raise RunFailed("could not read the master's VmRSS from /proc")

    def events(self, text: str, kind: str) -> int:
        """How many `kind` events the master logged so far (see events_logged)."""
        return events_logged(self.child.stderr, text, kind)

    # -- clients ---------------------------------------------------------------------------------
    def submit_argv(self, tasks: str | Path, results: str = "-") -> list[str]:
        return [self.pf.executable, "submit", str(tasks), "--master", self.address,
                "--results", results]

    def submit(self, tasks: str | Path, results: str = "-", timeout: float = 120.0) -> SubmitRun:
        """Run `procfleet submit TASKS` to its end (bounded by `timeout`)."""
        started = time.perf_counter()
        try:
            out = subprocess.run(self.submit_argv(tasks, results), env=self.pf.env,
                                 stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"procfleet submit {tasks} still running after {timeout:g} s; "
                            f"killed. The master's last lines:\n{self.child.tail()}") from None
        wall = time.perf_counter() - started
        return SubmitRun(out.returncode, wall, client_summary(out.stderr), out.stdout,
                         out.stderr)

    def start_submit(self, tasks: str | Path, results: str = "-", stdin=None) -> Child:
        """`procfleet submit TASKS` in the background (TASKS "-": fed through `stdin`)."""
        return Child(self.submit_argv(tasks, results), self.pf.env, stdin=stdin,
                     name="procfleet submit")

    # -- the end ---------------------------------------------------------------------------------
    def close(self, quiet: bool = False) -> None:
        """SIGTERM, then wait for exit 0; RunFailed if it took longer than STOP_TIMEOUT or
        exited otherwise (unless `quiet`: another error is on its way already)."""
        self.child.signal(signal.SIGTERM)
        try:
            code = self.child.wait(STOP_TIMEOUT)
        except ChildTimeout as exc:
            if not quiet:
                raise RunFailed(f"the service did not stop within {STOP_TIMEOUT:g} s of "
                                f"SIGTERM: {exc}") from None
            return
        finally:
            self.child.kill()
        if code != 0 and not quiet:
            raise RunFailed(f"the service exited {code} after SIGTERM; last lines:\n"
                            f"{self.child.tail()}")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def task_lines(count: int, task: str, args: list, prefix: str = "") -> list[str]:
    """`count` task-file lines of `task(*args)`, ids PREFIX0..PREFIX(count-1)."""
    encoded = json.dumps(args)
    return [f'{{"id": "{prefix}{i}", "task": "{task}", "args": {encoded}}}'
            for i in range(count)]
