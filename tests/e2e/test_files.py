"""The master's files, for real: checked before anything is dispatched, guarded while the batch
runs (a task file edited, a full disk, a second master, a killed supervisor), and one line of
error, never a traceback."""

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench.procs import alive, children
from procs import (COUNTING_TASKS, assert_exactly_once, free_port, read_results, summary,
                   unavailable, wait_until, write_tasks)


def sleepers(path: Path, n: int, seconds: float) -> Path:
    return write_tasks(path, [{"id": f"t{i}", "task": "sleep", "args": [seconds, i]}
                              for i in range(n)])


def assert_one_line_error(proc, code: int, *needles: str) -> str:
    """`proc` exited `code` with one `procfleet: error:` line holding every needle."""
    assert proc.wait(30) == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("procfleet: error:")]
    assert len(errors) == 1, proc.stderr
    assert all(n in errors[0] for n in needles), errors[0]
    assert "Traceback" not in proc.stderr and "RemoteError" not in proc.stderr, proc.stderr
    return errors[0]


class Disk:
    """A small tmpfs mounted for one test; `resize` gives it more (or less) room."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mount(self, options: str) -> None:
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.path)],
                             capture_output=True, text=True, timeout=10)
        if run.returncode:
            unavailable(f"mount -t tmpfs failed: {run.stderr.strip()}")

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True,
                       timeout=10)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs at tmp_path/disk, unmounted afterwards."""
    if os.geteuid() != 0:
        unavailable("mounting a small tmpfs needs root")
    disk = Disk(tmp_path / "disk")
    disk.path.mkdir()
    disk.mount("size=256k")
    yield disk
    subprocess.run(["umount", "-l", str(disk.path)], timeout=10)


# -- checked up front ------------------------------------------------------------------------

@pytest.mark.parametrize("alias", ["same path", "symlink", "hard link", "dot-dot"])
def test_results_naming_the_task_file_is_exit_2_and_the_tasks_are_untouched(spawn, tmp_path,
                                                                            alias):
    tasks = sleepers(tmp_path / "t.jsonl", 3, 0)
    before = tasks.read_bytes()
    results = {"same path": tasks, "symlink": tmp_path / "link.jsonl",
               "hard link": tmp_path / "hard.jsonl",
               "dot-dot": tmp_path / "sub" / ".." / "t.jsonl"}[alias]
    (tmp_path / "sub").mkdir()
    if alias == "symlink":
        results.symlink_to(tasks)
    elif alias == "hard link":
        os.link(tasks, results)
    master = spawn("master", "--tasks", str(tasks), "--results", str(results), "--bind",
                   "127.0.0.1:0", "--timeout", "5")
    assert_one_line_error(master, 2, "--tasks and --results name the same file")
    assert tasks.read_bytes() == before
    assert "serving" not in master.stderr


def test_journal_naming_the_results_file_is_exit_2(spawn, tmp_path):
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--demo", "3", "--results", str(out), "--journal", str(out),
                   "--bind", "127.0.0.1:0", "--local-workers", "1", "--timeout", "20")
    assert_one_line_error(master, 2, "--results and --journal name the same file")
    assert not out.exists() or out.read_bytes() == b""


def test_a_read_only_journal_is_exit_2_before_anything_is_dispatched(spawn, tmp_path, small_disk):
    """A master killed mid-batch leaves the journal's -wal and -shm files: on a file system
    now read-only, SQLite opens the journal read-only and says so only at the first write."""
    journal = small_disk.path / "j.db"
    out = tmp_path / "results.jsonl"
    args = ["master", "--demo", "20", "--demo-sleep", "0.2", "--results", str(out),
            "--journal", str(journal), "--bind", "127.0.0.1:0", "--local-workers", "1",
            "--timeout", "30"]
    first = spawn(*args)
    wait_until(lambda: read_results(out), 30, "a first result")
    first.signal(signal.SIGKILL)
    first.wait(10)
    small_disk.remount("ro")
    again = spawn(*args)
    assert_one_line_error(again, 2, "--journal", str(journal))
    assert "serving" not in again.stderr


def test_an_unwritable_results_file_is_exit_2_before_anything_is_dispatched(spawn, tmp_path,
                                                                           small_disk):
    out = small_disk.path / "results.jsonl"
    out.write_text("an earlier batch\n")
    small_disk.remount("ro")
    master = spawn("master", "--demo", "5", "--results", str(out), "--journal",
                   str(tmp_path / "j.db"), "--bind", "127.0.0.1:0", "--local-workers", "1",
                   "--timeout", "30")
    assert_one_line_error(master, 2, "--results", str(out))
    assert "serving" not in master.stderr
    assert out.read_text() == "an earlier batch\n"


# -- guarded during the batch ----------------------------------------------------------------

def edit_in_place(path: Path, old: str, new: str) -> None:
    """Rewrite `path` through the same inode, as an editor saving in place does."""
    text = path.read_text()
    assert old in text
    with open(path, "r+") as fh:
        fh.write(text.replace(old, new, 1))
        fh.truncate()


@pytest.mark.parametrize("change", ["invalid line", "duplicate id", "replaced", "deleted"])
def test_a_task_file_changed_during_the_batch_stops_it_with_exit_2(spawn, tmp_path, change):
    tasks = sleepers(tmp_path / "t.jsonl", 30, 0.2)
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--tasks", str(tasks), "--results", str(out), "--bind",
                   "127.0.0.1:0", "--local-workers", "1", "--timeout", "40")
    wait_until(lambda: read_results(out), 30, "a first result")
    if change == "invalid line":
        edit_in_place(tasks, '{"id": "t20"', '{"id": ,t20"')
    elif change == "duplicate id":
        edit_in_place(tasks, '"t20"', '"t01"')
    elif change == "replaced":
        new = sleepers(tmp_path / "new.jsonl", 30, 0.2)
        os.replace(new, tasks)
    else:
        tasks.unlink()
    started = time.monotonic()
    assert_one_line_error(master, 2, f"--tasks {tasks} changed while the batch ran")
    assert time.monotonic() - started < 15
    results = read_results(out)
    assert 0 < len(results) < 30
    ids = [r["id"] for r in results]
    assert len(ids) == len(set(ids)) and set(ids) <= {f"t{i}" for i in range(30)}
    assert summary(master)["unfinished"] > 0


def test_a_utf8_bom_is_skipped(spawn, tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_bytes(b'\xef\xbb\xbf{"id": "a", "task": "square", "args": [3]}\r\n'
                      b'{"id": "b", "task": "square", "args": [4]}\r\n')
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--tasks", str(tasks), "--results", str(out), "--bind",
                   "127.0.0.1:0", "--local-workers", "1")
    assert master.wait(60) == 0, master.stderr
    assert_exactly_once(read_results(out), {"a": 9, "b": 16})


def test_a_full_results_device_is_exit_3_with_one_line(spawn, tmp_path):
    master = spawn("master", "--demo", "50", "--results", "/dev/full", "--bind", "127.0.0.1:0",
                   "--local-workers", "1", "--timeout", "30")
    assert_one_line_error(master, 3, "--results /dev/full", "No space left on device")


@pytest.mark.parametrize("on_disk", ["results", "results and journal"])
def test_a_full_disk_is_exit_3_without_a_half_line_and_the_batch_resumes(spawn, tmp_path,
                                                                        small_disk, on_disk):
    n = 6000                                   # ~500 KB of results: twice the disk
    out = small_disk.path / "results.jsonl"
    journal = (small_disk.path if on_disk == "results and journal" else tmp_path) / "j.db"
    args = ["master", "--demo", str(n), "--results", str(out), "--journal", str(journal),
            "--bind", "127.0.0.1:0", "--local-workers", "2", "--timeout", "60"]
    first = spawn(*args)
    line = assert_one_line_error(first, 3, "run the same command again to resume")
    assert "No space left on device" in line or "database or disk is full" in line, line
    text = out.read_text()
    assert text == "" or text.endswith("\n")                  # no half line
    assert len(read_results(out)) < n
    small_disk.remount("size=8m")
    again = spawn(*args)
    assert again.wait(60) == 0, again.stderr
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(n)})


def test_a_second_master_on_the_same_journal_or_results_is_refused(spawn, tmp_path):
    tasks = sleepers(tmp_path / "t.jsonl", 5, 0.1)
    out, journal = tmp_path / "results.jsonl", tmp_path / "j.db"
    first = spawn("master", "--tasks", str(tasks), "--results", str(out), "--journal",
                  str(journal), "--bind", "127.0.0.1:0", "--timeout", "30")
    first.wait_for("serving")
    same_journal = spawn("master", "--tasks", str(tasks), "--results",
                         str(tmp_path / "other.jsonl"), "--journal", str(journal), "--bind",
                         "127.0.0.1:0", "--timeout", "5")
    assert_one_line_error(same_journal, 2, f"--journal {journal}: another master holds it")
    same_results = spawn("master", "--tasks", str(tasks), "--results", str(out), "--journal",
                         str(tmp_path / "other.db"), "--bind", "127.0.0.1:0", "--timeout", "5")
    assert_one_line_error(same_results, 2, f"--results {out}: another master is writing")
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 3


def test_a_killed_supervisor_takes_its_batch_process_with_it(spawn, tmp_path):
    tasks = sleepers(tmp_path / "t.jsonl", 20, 0.5)
    supervisor = spawn("master", "--tasks", str(tasks), "--results",
                       str(tmp_path / "results.jsonl"), "--journal", str(tmp_path / "j.db"),
                       "--restart-on-crash", "3", "--bind", "127.0.0.1:0", "--timeout", "60")
    supervisor.wait_for("serving")
    [batch] = children(supervisor.pid)
    supervisor.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        wait_until(lambda: not alive(batch), 15, "the batch process to exit")
    finally:
        if alive(batch):
            os.kill(batch, signal.SIGKILL)
    # It stopped cleanly: the signal was handled, its summary logged (its stderr is the pipe).
    supervisor.wait_for(r"interrupted \(signal 15\)", after=killed_at)
    supervisor.wait_for("summary: ")


def test_work_seconds_is_zero_when_nothing_was_leased(spawn):
    master = spawn("master", "--demo", "3", "--bind", "127.0.0.1:0", "--timeout", "0.5",
                   "--results", os.devnull)
    assert master.wait(30) == 3, master.stderr
    stats = summary(master)
    assert stats["work_seconds"] == 0 and stats["tasks_per_s"] == 0


@pytest.mark.chaos
def test_attempts_count_the_leases_of_a_master_killed_before_it_journalled_them(spawn,
                                                                              tmp_path):
    """The master's loop (which journals) is held up in a write to a full pipe while workers
    go on leasing; then it is killed. Every lease counts after the restart: a task run twice
    never says attempts 1."""
    (tmp_path / "counting.py").write_text(COUNTING_TASKS)
    runs = tmp_path / "runs.log"
    n = 300
    tasks = write_tasks(tmp_path / "t.jsonl", [{"id": f"t{i}", "task": "counted",
                                                 "args": [str(runs), 0.02, i]} for i in range(n)])
    pipe, out = tmp_path / "results.pipe", tmp_path / "results.jsonl"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)     # never read: it fills up
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
    journal, port = tmp_path / "j.db", free_port()
    args = ["--tasks", str(tasks), "--bind", f"127.0.0.1:{port}", "--journal", str(journal),
            "--lease-timeout", "5", "--timeout", "90"]

    def started() -> int:
        return len(runs.read_text().splitlines()) if runs.exists() else 0

    try:
        first = spawn("master", *args, "--results", str(pipe))
        first.wait_for("serving")
        workers = [spawn("worker", "--master", f"127.0.0.1:{port}", "--concurrency", "2",
                         "--connect-timeout", "30", cwd=tmp_path,
                         env={"PROCFLEET_IMPORTS": "counting"}) for _ in range(2)]
        # ~45 result lines fill the pipe; then tasks go on being leased and run
        wait_until(lambda: started() >= 150, 60, "150 tasks started")
        first.signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        os.close(reader)
    second = spawn("master", *args, "--results", str(out))
    assert second.wait(90) == 0, second.stderr
    for w in workers:
        assert w.wait(30) == 0, w.stderr
    results = read_results(out)
    assert_exactly_once(results, {f"t{i}": i * i for i in range(n)})
    ran = [int(v) for v in runs.read_text().split()]
    twice = [r for r in results if ran.count(int(r["id"][1:])) > 1]
    assert twice, "no task ran twice: the kill came too late to test anything"
    undercounted = [(r["id"], r["attempts"], ran.count(int(r["id"][1:]))) for r in results
                    if r["attempts"] < ran.count(int(r["id"][1:]))]
    assert not undercounted, f"(id, attempts, runs): {undercounted[:10]}"
