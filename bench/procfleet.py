"""procfleet driven only through its CLI: one run of each kind of case, checked and measured.

Every run reads the master's closing `summary:` line from stderr; a run whose batch did not end
with every task ok, or whose results file does not hold each id exactly once, raises RunFailed.
"""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from procfleet.master.batch import parse_summary

from .procs import Child, ChildTimeout

SERVING = r"serving \d+ tasks on [^\s:]+:(\d+)"
#: extra seconds the harness waits beyond the master's own --timeout before killing it
WAIT_MARGIN = 30.0
#: seconds a separately started worker gets to exit after its master did
WORKER_EXIT = 15.0
#: how often the recovery case reads the results file
RESULTS_POLL = 0.01


class RunFailed(RuntimeError):
    """A run that did not finish every task, lost or duplicated results, or did not start."""


def default_bin() -> str:
    """The `procfleet` next to the running python (a venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "procfleet"
    if here.exists():
        return str(here)
    return shutil.which("procfleet") or str(here)


def batch_timeout(tasks: int) -> float:
    """A generous bound for one batch: 1,000 tasks/s at worst, never under two minutes."""
    return 120.0 + tasks / 1000.0


@dataclass
class MasterRun:
    summary: dict[str, float]
    wall: float
    peak_rss_mb: float | None = None

    @property
    def work_seconds(self) -> float:
        """From the first lease to the end (the summary's work_seconds), else its seconds."""
        return self.summary.get("work_seconds", self.summary["seconds"])


class Procfleet:
    """One procfleet installation, reached through its `procfleet` executable."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable = executable
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if k != "PROCFLEET_AUTHKEY_FILE"}
        self.env["PROCFLEET_AUTHKEY"] = secrets.token_urlsafe(32)
        self._help: str | None = None
        self._n = 0

    @property
    def python(self) -> str:
        """The python this procfleet runs on (its script's #! line), for clients measured in a
        process of their own; this python when the executable is no script."""
        try:
            with open(self.executable, "rb") as fh:
                first = fh.readline().decode(errors="replace")
        except OSError:
            return sys.executable
        python = first[2:].strip() if first.startswith("#!") else ""
        return python if python and " " not in python and os.access(python, os.X_OK) \
            else sys.executable

    def check(self) -> str:
        """`procfleet master --help` works; return the help text (RunFailed otherwise)."""
        if self._help is None:
            try:
                out = subprocess.run([self.executable, "master", "--help"], env=self.env,
                                     capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RunFailed(f"cannot run {self.executable}: {exc}") from None
            if out.returncode != 0:
                raise RunFailed(f"{self.executable} master --help exited {out.returncode}: "
                                f"{out.stderr.strip()[-400:]}")
            self._help = out.stdout
        return self._help

    def has_master_option(self, option: str) -> bool:
        return re.search(rf"(^|\s){re.escape(option)}(?=[\s,=]|$)", self.check(), re.M) is not None

    def path(self, stem: str, suffix: str = ".jsonl") -> Path:
        self._n += 1
        return self.workdir / f"{stem}-{self._n}{suffix}"

    # -- one master, local workers -------------------------------------------------------------
    def master(self, args: list[str], tasks: int, results: Path, *,
               sample_rss: bool = False) -> MasterRun:
        """Run `procfleet master ARGS --results RESULTS` to the end; check and return it."""
        timeout = batch_timeout(tasks)
        argv = [self.executable, "master", *args, "--bind", "127.0.0.1:0",
                "--results", str(results), "--timeout", f"{timeout:g}"]
        started = time.monotonic()
        child = Child(argv, self.env, sample_rss=sample_rss)
        try:
            code = child.wait(timeout + WAIT_MARGIN)
        except ChildTimeout as exc:
            raise RunFailed(str(exc)) from None
        finally:
            child.kill()
        wall = time.monotonic() - started
        summary = check_summary(child, code, tasks)
        check_results(results, tasks)
        rss = child.peak_rss_kb / 1024 if sample_rss and child.peak_rss_kb else None
        if sample_rss and rss is None:
            raise RunFailed("could not read the master's VmHWM from /proc")
        return MasterRun(summary, wall, rss)

    def _wait(self, workers: int) -> list[str]:
        """`--wait-workers N` where the master has it: every worker starts with the clock."""
        return ["--wait-workers", str(workers)] if self.has_master_option("--wait-workers") else []

    def demo(self, tasks: int, local_workers: int, journal: bool = False) -> MasterRun:
        results = self.path("results")
        journal_path = self.path("journal", ".journal")
        args = ["--demo", str(tasks), "--local-workers", str(local_workers), *self._wait(local_workers)]
        if journal:
            args += ["--journal", str(journal_path)]
        try:
            return self.master(args, tasks, results)
        finally:
            _unlink(results)
            _unlink(journal_path)

    def task_file(self, tasks: int) -> Path:
        """A JSONL file of `tasks` square tasks, written once per size and kept for the run."""
        path = self.workdir / f"tasks-{tasks}.jsonl"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                for i in range(tasks):
                    fh.write(f'{{"id": "t{i}", "task": "square", "args": [{i}]}}\n')
            tmp.rename(path)
        return path

    def memory(self, tasks: int, local_workers: int) -> MasterRun:
        """Stream a generated task file; the master's own peak RSS (VmHWM) is measured."""
        results = self.path("results")
        try:
            return self.master(["--tasks", str(self.task_file(tasks)),
                                "--local-workers", str(local_workers)],
                               tasks, results, sample_rss=True)
        finally:
            _unlink(results)

    # -- a master and separately started workers -----------------------------------------------
    def _serve(self, args: list[str], tasks: int, results: Path) -> tuple[Child, int, float]:
        timeout = batch_timeout(tasks)
        master = Child([self.executable, "master", *args, "--bind", "127.0.0.1:0",
                        "--results", str(results), "--timeout", f"{timeout:g}"], self.env)
        try:
            _, m = master.wait_for(SERVING, 30)
        except ChildTimeout as exc:
            master.kill()
            raise RunFailed(str(exc)) from None
        return master, int(m.group(1)), timeout

    def _worker(self, port: int, name: str, concurrency: int) -> Child:
        return Child([self.executable, "worker", "--master", f"127.0.0.1:{port}",
                      "--concurrency", str(concurrency), "--id", name], self.env)

    def distributed(self, tasks: int, sleep: float, workers: int, concurrency: int) -> MasterRun:
        """A master serving sleep tasks to `workers` separate worker processes."""
        results = self.path("results")
        master, port, timeout = self._serve(
            ["--demo", str(tasks), "--demo-sleep", f"{sleep:g}", *self._wait(workers)], tasks,
            results)
        started = time.monotonic()
        procs = []
        try:
            procs = [self._worker(port, f"bench-d{i}", concurrency) for i in range(1, workers + 1)]
            try:
                code = master.wait(timeout + WAIT_MARGIN)
            except ChildTimeout as exc:
                raise RunFailed(str(exc)) from None
            wall = time.monotonic() - started
            summary = check_summary(master, code, tasks)
            check_results(results, tasks)
            _reap(procs)
            return MasterRun(summary, wall)
        finally:
            for child in (master, *procs):
                child.kill()
            _unlink(results)

    def recovery(self, tasks: int, sleep: float, lease_timeout: float,
                 concurrency: int) -> tuple[float, str]:
        """SIGKILL one of two workers mid-batch; seconds until its tasks ran elsewhere, and how
        that was seen: the first result of a requeued task (attempts > 1) if one arrived, else
        the master's "silent ... requeued" line."""
        results = self.path("results")
        master, port, timeout = self._serve(
            ["--demo", str(tasks), "--demo-sleep", f"{sleep:g}",
             "--lease-timeout", f"{lease_timeout:g}"], tasks, results)
        victim_id, survivor_id = "bench-victim", "bench-survivor"
        procs = []
        try:
            victim = self._worker(port, victim_id, concurrency)
            survivor = self._worker(port, survivor_id, concurrency)
            procs = [victim, survivor]
            tail = ResultsTail(results)
            deadline = time.monotonic() + 60
            # Mid-batch: a quarter done and the victim has finished tasks (so it holds leases).
            while not (len(tail.lines) >= tasks // 4
                       and any(r.get("worker") == victim_id for _, r in tail.lines)):
                if time.monotonic() > deadline or master.popen.poll() is not None:
                    raise RunFailed("recovery: the victim worker never got going; master said:\n"
                                    + master.tail())
                time.sleep(RESULTS_POLL)
                tail.poll()
            killed_at = time.monotonic()
            victim.signal(signal.SIGKILL)
            first_requeued = None
            while master.popen.poll() is None and time.monotonic() < killed_at + timeout:
                tail.poll()
                for t, r in tail.lines:
                    requeued = (r.get("attempts") or 1) > 1 and r.get("worker") != victim_id
                    if t >= killed_at and requeued:
                        first_requeued = t
                        break
                if first_requeued is not None:
                    break
                time.sleep(RESULTS_POLL)
            try:
                code = master.wait(timeout + WAIT_MARGIN)
            except ChildTimeout as exc:
                raise RunFailed(str(exc)) from None
            summary = check_summary(master, code, tasks)
            check_results(results, tasks)
            if not summary.get("requeued"):
                raise RunFailed("recovery: the killed worker held no tasks (requeued=0)")
            if first_requeued is not None:
                return first_requeued - killed_at, "first requeued result"
            hit = master.find(rf"worker {victim_id} silent for .*requeued")
            if hit is None:
                raise RunFailed("recovery: neither a requeued result nor a 'silent ... requeued' "
                                "line was seen")
            return hit[0] - killed_at, "master's requeue line"
        finally:
            for child in (master, *procs):
                child.kill()
            _unlink(results)


class ResultsTail:
    """Complete lines appended to a results file, each with the time this process first saw it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.lines: list[tuple[float, dict]] = []

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        now = time.monotonic()
        self.offset += len(chunk)
        *complete, self.partial = (self.partial + chunk).split(b"\n")
        for raw in complete:
            if raw.strip():
                self.lines.append((now, json.loads(raw)))


def check_summary(master: Child, code: int, tasks: int) -> dict[str, float]:
    summary = parse_summary(master.stderr)
    if summary is None:
        raise RunFailed(f"master exited {code} without a summary line (last line: "
                        f"{master.last_line()}); last lines:\n{master.tail()}")
    if code != 0 or summary.get("ok") != tasks or summary.get("unfinished", 0) != 0:
        raise RunFailed(f"master exited {code}: " + " ".join(
            f"{k}={v:g}" for k, v in summary.items()))
    return summary


def check_results(path: Path, tasks: int) -> None:
    """The results file holds `tasks` lines with distinct ids (a lost or doubled result fails)."""
    ids = set()
    lines = 0
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                lines += 1
                ids.add(json.loads(raw)["id"])
    if lines != tasks or len(ids) != tasks:
        raise RunFailed(f"results file: {lines} lines, {len(ids)} distinct ids, "
                        f"expected {tasks} of each")


def _reap(procs: list[Child]) -> None:
    deadline = time.monotonic() + WORKER_EXIT
    for child in procs:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except ChildTimeout:
            pass        # killed; the batch itself was complete


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
