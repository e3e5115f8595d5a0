"""Misbehaving tasks and crowds of workers, with real processes: the rest of the batch completes."""

import time

import pytest

import chaos
from procs import assert_exactly_once, master_port, read_results, summary, write_tasks

FLAKY_TASKS = """
import os
from procfleet.shared.tasks import task

@task
def flaky(counter, failures, value):
    # Fails its first `failures` runs (counted in a file: attempts may run on other workers).
    runs = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as fh:
        fh.write(str(runs + 1))
    if runs < failures:
        raise ConnectionError(f"flaky: run {runs + 1} of {failures + 1}")
    return value

@task
def not_json():
    return {1, 2}

@task
def segfault():
    import ctypes
    ctypes.string_at(0)
"""


def run_batch(spawn, tmp_path, tasks, *master_args, workers=2, concurrency=2, timeout=90):
    (tmp_path / "faulty.py").write_text(FLAKY_TASKS)
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--tasks", write_tasks(tmp_path / "t.jsonl", tasks), "--bind",
                   "127.0.0.1:0", "--results", str(out), "--timeout", str(timeout), *master_args)
    address = f"127.0.0.1:{master_port(master)}"
    for i in range(workers):
        spawn("worker", "--master", address, "--concurrency", str(concurrency), "--id", f"w{i}",
              cwd=tmp_path, env={"PROCFLEET_IMPORTS": "faulty"})
    return master, out


def squares(n):
    return [{"id": f"s{i}", "task": "sleep", "args": [0.01, i * i]} for i in range(n)]


def plain(results):
    return [r for r in results if r["id"][0] == "s" and r["id"][1:].isdigit()]


@pytest.mark.chaos
def test_hanging_tasks_time_out_and_the_rest_complete(spawn, tmp_path):
    n = 40
    tasks = squares(n) + [{"id": "hang1", "task": "hang"},
                          {"id": "hang2", "task": "hang", "timeout": 0.5}]
    started = time.monotonic()
    master, out = run_batch(spawn, tmp_path, tasks, "--task-timeout", "1.5")
    assert master.wait(60) == 1, master.stderr
    results = read_results(out)
    by_id = {r["id"]: r for r in results}
    assert "timed out after 1.5 s" in by_id["hang1"]["error"]
    assert "timed out after 0.5 s" in by_id["hang2"]["error"]
    assert_exactly_once(plain(results),
                        {f"s{i}": i * i for i in range(n)})
    chaos.record("hanging tasks (--task-timeout 1.5, one line timeout 0.5)",
                 [t["id"] for t in tasks], results,
                 dropped=summary(master)["duplicates_dropped"],
                 recover_s=time.monotonic() - started, recovery="to batch end")


@pytest.mark.chaos
def test_a_poison_task_that_kills_its_process_fails_after_max_attempts(spawn, tmp_path):
    n = 40
    tasks = squares(n) + [{"id": "poison", "task": "crash", "args": [7]},
                          {"id": "segv", "task": "segfault"}]
    master, out = run_batch(spawn, tmp_path, tasks, "--max-attempts", "3")
    assert master.wait(60) == 1, master.stderr
    results = read_results(out)
    by_id = {r["id"]: r for r in results}
    poison = by_id["poison"]
    assert poison["status"] == "failed" and poison["attempts"] == 3
    assert "exited with code 7" in poison["error"] and "crashed 3 times" in poison["error"]
    assert "SIGSEGV" in by_id["segv"]["error"]
    assert_exactly_once(plain(results),
                        {f"s{i}": i * i for i in range(n)})
    stats = summary(master)
    assert stats["crashed"] == 6 and stats["workers_lost"] == 0   # the workers lived on
    chaos.record("poison tasks: os._exit(7) and a segfault (--max-attempts 3)",
                 [t["id"] for t in tasks], results, dropped=stats["duplicates_dropped"],
                 recovery="workers survive; each failed after 3 attempts")


@pytest.mark.chaos
def test_tasks_that_raise_are_retried_with_backoff(spawn, tmp_path):
    tasks = [{"id": f"f{i}", "task": "flaky", "args": [str(tmp_path / f"count{i}"), 2, i]}
             for i in range(5)]
    tasks.append({"id": "never", "task": "flaky", "args": [str(tmp_path / "countx"), 99, 0]})
    tasks.append({"id": "odd", "task": "not_json"})
    master, out = run_batch(spawn, tmp_path, tasks, "--retries", "2", "--retry-backoff", "0.2")
    assert master.wait(60) == 1, master.stderr
    results = read_results(out)
    by_id = {r["id"]: r for r in results}
    for i in range(5):
        assert by_id[f"f{i}"]["status"] == "ok" and by_id[f"f{i}"]["attempts"] == 3
    never = by_id["never"]
    assert never["status"] == "failed" and never["attempts"] == 3
    assert never["error"].startswith("ConnectionError: flaky: run 3 of 100")
    assert "Traceback" in never["error"] and "--retries 2" in never["error"]
    assert by_id["odd"]["status"] == "failed" and "ResultNotJSON" in by_id["odd"]["error"]
    assert (tmp_path / "countx").read_text() == "3"
    stats = summary(master)
    assert stats["retried"] == 5 * 2 + 2 + 2
    chaos.record("tasks that raise twice, and one always (--retries 2)",
                 [t["id"] for t in tasks], results, dropped=stats["duplicates_dropped"],
                 recovery="5 ok on the 3rd try; the rest failed with the last traceback")


@pytest.mark.chaos
def test_32_workers_starting_at_once_all_connect(spawn, tmp_path):
    n, workers = 640, 32
    out = tmp_path / "results.jsonl"
    # --wait-workers: under load the batch once ended before the last of 32 had joined
    master = spawn("master", "--demo", str(n), "--demo-sleep", "0.05", "--bind", "127.0.0.1:0",
                   "--results", str(out), "--timeout", "120", "--wait-workers", str(workers))
    address = f"127.0.0.1:{master_port(master)}"
    started = time.monotonic()
    crowd = [spawn("worker", "--master", address, "--id", f"c{i}") for i in range(workers)]
    for i in range(workers):
        master.wait_for(rf"worker c{i} joined", 60)
    all_in = time.monotonic() - started
    assert master.wait(120) == 0, master.stderr
    for w in crowd:
        assert w.wait(30) == 0
    results = read_results(out)
    assert_exactly_once(results, {str(i): i * i for i in range(n)})
    delivered = {r["worker"] for r in results}
    assert len(delivered) >= workers * 3 // 4
    chaos.record("32 workers start at once", range(n), results,
                 dropped=summary(master)["duplicates_dropped"], recover_s=all_in,
                 recovery="until all 32 joined")
    print(f"\n32 workers all joined {all_in:.2f} s after starting; {len(delivered)} delivered")
