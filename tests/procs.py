"""Real procfleet processes for end-to-end tests (started through bench.procs, the one process
wrapper of the tests and the benchmarks), and what the tests check them with: ports, task files,
results files read back, exactly-once."""

import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from bench.procs import Child
from procfleet.master.batch import parse_summary


def in_ci() -> bool:
    """Whether this is CI (CI set to anything but empty, 0, false or no)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """What a test does when this machine lacks what it needs (Docker, root, IPv6, namespaces,
    an old release): skip on a laptop; fail in CI, where it must run."""
    if in_ci():
        pytest.fail(f"{reason} (required in CI)", pytrace=False)
    pytest.skip(reason)


POLL = 0.05
#: default limits of Proc's waits: a line, and the exit
LINE_TIMEOUT = 20.0
EXIT_TIMEOUT = 60.0


class Proc(Child):
    """`python -m procfleet.shared ARGS` (the procfleet CLI), this venv's Python unless `python`
    says otherwise; the environment is this one's, updated with `env`."""

    def __init__(self, args, env=None, python=sys.executable, cwd=None, stdin=None):
        args = [str(arg) for arg in args]
        super().__init__([python, "-m", "procfleet.shared", *args],
                         {**os.environ, **(env or {})}, cwd=cwd, stdin=stdin,
                         name=f"procfleet {args[0] if args else ''}".strip())

    def wait_for(self, pattern: str, timeout: float = LINE_TIMEOUT, after: float | None = None):
        return super().wait_for(pattern, timeout, after=after)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        return super().wait(timeout)


#: a user task module whose task records each run (one line per execution), so a test can
#: count runs against the results' attempts
COUNTING_TASKS = """
import os, time
from procfleet.shared.tasks import task

@task
def counted(runs, seconds, value):
    # One line per execution, so a test can tell which tasks ran more than once.
    with open(runs, "a") as fh:
        fh.write(f"{value}\\n")
    time.sleep(seconds)
    return value * value
"""


def write_tasks(path: Path, tasks: list[dict]) -> Path:
    """A task file at `path`: one JSON line per task."""
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def master_port(master: Proc) -> int:
    _, m = master.wait_for(r"serving \d+ tasks on [\d.]+:(\d+)")
    return int(m.group(1))


def container_results(container, path: str = "/var/lib/procfleet/results.jsonl") -> list[dict]:
    """The whole result lines so far of the results file at `path` in a Docker SDK container
    (none before the master created it)."""
    try:
        chunks, _ = container.get_archive(path)
    except Exception:     # docker.errors.NotFound before the master created it
        return []
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        text = tar.extractfile(tar.getmembers()[0]).read().decode()
    return [json.loads(line) for line in text.splitlines(keepends=True)
            if line.endswith("\n") and line.strip()]


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(predicate, timeout: float, what: str):
    """Re-check `predicate` until it is truthy or `timeout` passes (for state kept in files)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


def summary(master: Proc, timeout: float = 20, actor: str = "master") -> dict:
    """The master's summary object, once its closing line is logged (read by the master's own
    parse_summary: the line is `HH:MM:SS master: summary: {...JSON...}`); actor="submit" for
    `procfleet submit`'s."""
    _, m = master.wait_for(rf"^\S+ {actor}: summary: \{{", timeout)
    found = parse_summary(m.string, actor)
    assert found is not None, f"not a summary line: {m.string}"
    return found


#: what `docker logs --timestamps` puts before each line
DOCKER_TIMESTAMP = re.compile(r"(?m)^\d{4}-\d\d-\d\dT[\d:.]+Z ")


def summary_of(log: str) -> dict:
    """The summary object in a master's whole log (a container's, say, each line perhaps led
    by Docker's timestamp), by parse_summary."""
    found = parse_summary(DOCKER_TIMESTAMP.sub("", log))
    assert found is not None, f"no summary line in: {log[-3000:]}"
    return found


def assert_exactly_once(results: list[dict], expected: dict[str, object]) -> None:
    """Every expected id has exactly one ok result with the expected value, nothing else."""
    ids = [r["id"] for r in results]
    assert len(ids) == len(set(ids)), "duplicate result ids"
    assert set(ids) == set(expected), f"missing {set(expected) - set(ids)}, extra {set(ids) - set(expected)}"
    wrong = [r for r in results if r["status"] != "ok" or r["result"] != expected[r["id"]]]
    assert not wrong, f"wrong results: {wrong[:3]}"


#: the last release of the pickle wire (before wire 4): what test_old_wire runs against
OLD_WIRE_RELEASE = "0826fc4"


def extract_release(commit: str, dest: Path) -> str | None:
    """procfleet's shared, master and worker packages as of `commit`, unpacked into `dest`
    with `git archive` (the repository and its worktrees are left alone); the PYTHONPATH that
    runs them. None, with the reason in `extract_release.why`, if git or the commit is not
    available here (a shallow clone)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"],
                       check=True, capture_output=True, timeout=30)
    except FileNotFoundError:
        extract_release.why = "git is not installed"
        return None
    except subprocess.CalledProcessError:
        extract_release.why = (f"commit {commit} is not in this clone (shallow?); "
                               "CI uses a full clone")
        return None
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "shared", "master",
                              "worker"], check=True, capture_output=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    return os.pathsep.join(str(dest / side) for side in ("shared", "master", "worker"))
