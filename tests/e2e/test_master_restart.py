"""A master killed mid-batch resumes from its journal: nothing lost, nothing run twice."""

import os
import signal
import time
from pathlib import Path

import pytest

import chaos
from bench.procs import children
from procs import (COUNTING_TASKS, assert_exactly_once, free_port, read_results, summary,
                   wait_until)


def runs_per_value(path: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        counts[int(line)] = counts.get(int(line), 0) + 1
    return counts


def setup(tmp_path, n, seconds=0.03):
    (tmp_path / "counting.py").write_text(COUNTING_TASKS)
    runs = tmp_path / "runs.log"
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(f'{{"id": "t{i}", "task": "counted", "args": ["{runs}", {seconds}, {i}]}}\n'
                             for i in range(n)))
    return tasks, runs


@pytest.mark.chaos
def test_master_killed_and_started_again_resumes_the_batch(spawn, tmp_path):
    n = 300
    tasks, runs = setup(tmp_path, n)
    out, journal, port = tmp_path / "results.jsonl", tmp_path / "journal.db", free_port()
    master_args = ["master", "--tasks", str(tasks), "--bind", f"127.0.0.1:{port}", "--results",
                   str(out), "--journal", str(journal), "--lease-timeout", "3", "--timeout", "90"]
    env = {"PROCFLEET_IMPORTS": "counting"}
    first = spawn(*master_args)
    first.wait_for("serving")
    workers = [spawn("worker", "--master", f"127.0.0.1:{port}", "--concurrency", "2",
                     "--connect-timeout", "60", cwd=tmp_path, env=env) for _ in range(2)]
    wait_until(lambda: len(read_results(out)) >= 60, 60, "60 results before the kill")
    first.signal(signal.SIGKILL)
    first.wait(10)
    killed_at = time.monotonic()
    before = {r["id"] for r in read_results(out)[:-1]}   # the last line may be cut short

    second = spawn(*master_args)
    _, m = second.wait_for(r"resuming batch \w+ from journal .*: (\d+) of 300 tasks already done, "
                           r"(\d+) were in flight")
    assert int(m.group(1)) >= len(before)
    resumed_at, _ = second.wait_for("worker .* (joined|reconnected)", 30)
    assert second.wait(90) == 0, second.stderr
    for w in workers:
        assert w.wait(30) == 0, w.stderr
    results = read_results(out)
    assert_exactly_once(results, {f"t{i}": i * i for i in range(n)})
    counts = runs_per_value(runs)
    rerun = {f"t{v}" for v, c in counts.items() if c > 1}
    assert not rerun & before, f"finished before the kill, yet run again: {rerun & before}"
    stats = summary(second)
    assert stats["ok"] == n and stats["unfinished"] == 0
    chaos.record("master SIGKILL, started again with --journal", [f"t{i}" for i in range(n)],
                 results, dropped=stats["duplicates_dropped"], recover_s=resumed_at - killed_at,
                 recovery="kill to a worker back, restart by hand")
    print(f"\nmaster SIGKILL: {len(before)} results before, {n} after restart, "
          f"{len(rerun)} in-flight tasks run twice, reconnected {resumed_at - killed_at:.2f} s "
          "after the kill")


@pytest.mark.chaos
def test_restart_on_crash_restarts_a_killed_batch_process(spawn, tmp_path):
    n = 200
    tasks, runs = setup(tmp_path, n)
    out, journal, port = tmp_path / "results.jsonl", tmp_path / "journal.db", free_port()
    supervisor = spawn("master", "--tasks", str(tasks), "--bind", f"127.0.0.1:{port}",
                       "--results", str(out), "--journal", str(journal), "--restart-on-crash", "2",
                       "--timeout", "90")
    supervisor.wait_for("serving")
    workers = [spawn("worker", "--master", f"127.0.0.1:{port}", "--concurrency", "2",
                     cwd=tmp_path, env={"PROCFLEET_IMPORTS": "counting"}) for _ in range(2)]
    wait_until(lambda: len(read_results(out)) >= 40, 60, "40 results before the kill")
    [batch_process] = children(supervisor.popen.pid)
    os.kill(batch_process, signal.SIGKILL)
    killed_at = time.monotonic()
    supervisor.wait_for(r"killed by SIGKILL: restarting it from the journal .*restart 1 of 2")
    supervisor.wait_for("resuming batch")
    back_at, _ = supervisor.wait_for("worker .* (joined|reconnected)", after=killed_at)
    assert supervisor.wait(90) == 0, supervisor.stderr
    for w in workers:
        assert w.wait(30) == 0
    assert_exactly_once(read_results(out), {f"t{i}": i * i for i in range(n)})
    chaos.record("master SIGKILL under --restart-on-crash", [f"t{i}" for i in range(n)],
                 read_results(out), dropped=summary(supervisor)["duplicates_dropped"],
                 recover_s=back_at - killed_at, recovery="kill to a worker back")


def test_restart_on_crash_does_not_restart_a_finished_batch_with_failures(spawn, tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"id": "bad", "task": "fail", "args": ["no"]}\n'
                     '{"id": "good", "task": "square", "args": [3]}\n')
    out = tmp_path / "results.jsonl"
    supervisor = spawn("master", "--tasks", str(tasks), "--bind", "127.0.0.1:0", "--results",
                       str(out), "--journal", str(tmp_path / "j.db"), "--restart-on-crash", "5",
                       "--local-workers", "1")
    assert supervisor.wait(60) == 1, supervisor.stderr
    assert "restarting" not in supervisor.stderr
    assert {r["id"]: r["status"] for r in read_results(out)} == {"bad": "failed", "good": "ok"}
    # Started again on a finished journal: it rewrites the results and exits with the same code.
    again = spawn("master", "--tasks", str(tasks), "--bind", "127.0.0.1:0", "--results", str(out),
                  "--journal", str(tmp_path / "j.db"))
    assert again.wait(30) == 1, again.stderr
    assert len(read_results(out)) == 2
