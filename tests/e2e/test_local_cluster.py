"""Real master and worker processes on loopback: exactly once, through kills and bad keys."""

import signal
import socket
import time

import pytest

import chaos
from procs import (assert_exactly_once, free_port, master_port, read_results, summary,
                   wait_until, write_tasks)

WRONG_KEY = "this-is-not-the-right-key"


def test_demo_batch_with_local_workers_arrives_exactly_once(spawn, tmp_path):
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--demo", "500", "--local-workers", "4", "--bind", "127.0.0.1:0",
                   "--results", str(out))
    assert master.wait(60) == 0, master.stderr
    results = read_results(out)
    assert_exactly_once(results, {str(i): i * i for i in range(500)})
    assert all(r["task"] == "square" and r["attempts"] == 1 and r["worker"] for r in results)
    stats = summary(master)
    assert stats["duplicates_dropped"] == 0 and stats["ok"] == 500
    assert "Traceback" not in master.stderr


def test_failed_and_unknown_tasks_end_as_failed_results_exit_1(spawn, tmp_path):
    tasks = write_tasks(tmp_path / "t.jsonl", [
        {"id": "ok", "task": "square", "args": [4]},
        {"id": "boom", "task": "fail", "args": ["kaput"]},
        {"id": "what", "task": "no_such_task"},
        {"id": "slept", "task": "sleep", "args": [0], "kwargs": {"value": {"a": [1]}}},
    ])
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--tasks", tasks, "--local-workers", "2", "--bind", "127.0.0.1:0",
                   "--results", str(out))
    assert master.wait(60) == 1, master.stderr
    by_id = {r["id"]: r for r in read_results(out)}
    assert set(by_id) == {"ok", "boom", "what", "slept"}
    assert by_id["ok"]["result"] == 16 and by_id["ok"]["error"] is None
    assert by_id["slept"]["result"] == {"a": [1]}
    boom = by_id["boom"]
    assert boom["status"] == "failed" and boom["result"] is None
    assert boom["error"].startswith("RuntimeError: kaput") and "Traceback" in boom["error"]
    assert by_id["what"]["status"] == "failed"
    assert "unknown task 'no_such_task'" in by_id["what"]["error"]


@pytest.mark.chaos
def test_worker_killed_mid_batch_loses_nothing(spawn, tmp_path):
    n, lease_timeout = 40, 1.0
    tasks = write_tasks(tmp_path / "t.jsonl",
                        [{"id": f"t{i}", "task": "sleep", "args": [0.15, i]} for i in range(n)])
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--tasks", tasks, "--bind", "127.0.0.1:0", "--results", str(out),
                   "--lease-timeout", str(lease_timeout), "--timeout", "120")
    address = f"127.0.0.1:{master_port(master)}"
    victim = spawn("worker", "--master", address, "--id", "victim", "--concurrency", "2")
    spawn("worker", "--master", address, "--id", "survivor", "--concurrency", "2")
    wait_until(lambda: any(r["worker"] == "victim" for r in read_results(out)), 30,
               "the victim to finish a task")
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    requeued_at, m = master.wait_for(r"worker victim silent for [\d.]+ s: requeued (\d+) tasks")
    assert int(m.group(1)) >= 1
    assert master.wait(60) == 0, master.stderr
    assert_exactly_once(read_results(out), {f"t{i}": i for i in range(n)})
    stats = summary(master)
    assert stats["requeued"] >= 1
    recovery = requeued_at - killed_at
    chaos.record("worker process SIGKILL (lease 1 s)", [f"t{i}" for i in range(n)],
                 read_results(out), dropped=stats["duplicates_dropped"], recover_s=recovery,
                 recovery="kill to requeue")
    print(f"\nkill-to-requeue {recovery:.2f} s (lease timeout {lease_timeout} s), "
          f"requeued {stats['requeued']:.0f}, duplicates dropped {stats['duplicates_dropped']:.0f}")
    assert lease_timeout / 2 <= recovery <= lease_timeout + 2   # last heartbeat was before the kill


def test_worker_started_before_the_master_waits_for_it(spawn, tmp_path):
    port = free_port()
    worker = spawn("worker", "--master", f"127.0.0.1:{port}", "--connect-timeout", "30")
    worker.wait_for(r"retrying for up to")
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--demo", "50", "--bind", f"127.0.0.1:{port}", "--results", str(out))
    assert master.wait(60) == 0, master.stderr
    assert worker.wait(30) == 0, worker.stderr
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(50)})


def test_unreachable_master_is_exit_3_after_the_connect_timeout(spawn):
    worker = spawn("worker", "--master", f"127.0.0.1:{free_port()}", "--connect-timeout", "1")
    assert worker.wait(30) == 3
    assert "gave up after 1 s" in worker.stderr and "Traceback" not in worker.stderr


@pytest.mark.chaos
def test_wrong_key_is_refused_fast_and_the_batch_goes_on(spawn, tmp_path):
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--demo", "40", "--demo-sleep", "0.05", "--local-workers", "1",
                   "--bind", "127.0.0.1:0", "--results", str(out))
    port = master_port(master)
    started = time.monotonic()
    # Retried as if the master were unreachable, a refusal would take the whole 120 s.
    intruder = spawn("worker", "--master", f"127.0.0.1:{port}", "--connect-timeout", "120",
                     env={"PROCFLEET_AUTHKEY": WRONG_KEY})
    connecting_at, _ = intruder.wait_for("connecting to master")
    assert intruder.wait(30) == 2
    refused_in = time.monotonic() - connecting_at    # the refusal itself, not Python's start
    assert "authentication failed connecting to master" in intruder.stderr
    assert "PROCFLEET_AUTHKEY" in intruder.stderr and "Traceback" not in intruder.stderr
    master.wait_for(r"refused connection from 127\.0\.0\.1:\d+: wrong key")
    assert master.wait(60) == 0, master.stderr
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(40)})
    chaos.record("worker with a wrong key", range(40), read_results(out),
                 dropped=summary(master)["duplicates_dropped"], recover_s=refused_in,
                 recovery="connect to exit 2")
    print(f"\nwrong key refused {refused_in:.2f} s after the worker started connecting "
          f"({time.monotonic() - started:.2f} s including its start)")


def test_port_in_use_is_a_clear_exit_2(spawn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        master = spawn("master", "--demo", "1", "--bind", f"127.0.0.1:{s.getsockname()[1]}")
        assert master.wait(30) == 2
    assert "cannot listen on 127.0.0.1:" in master.stderr
    assert "Traceback" not in master.stderr


def test_timeout_with_unfinished_tasks_is_exit_3_and_keeps_finished_results(spawn, tmp_path):
    tasks = write_tasks(tmp_path / "t.jsonl", [{"id": "quick", "task": "square", "args": [2]},
                                               {"id": "slow", "task": "sleep", "args": [30]}])
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--tasks", tasks, "--local-workers", "2", "--bind", "127.0.0.1:0",
                   "--results", str(out), "--timeout", "10")
    # 10 s: long enough for two local workers to start and run "quick" on a loaded machine
    # (2 s was not, once), far short of "slow"'s 30 s
    assert master.wait(60) == 3, master.stderr
    assert [(r["id"], r["result"]) for r in read_results(out)] == [("quick", 4)]
    assert "--timeout 10 s passed with 1 of 2 tasks unfinished" in master.stderr


@pytest.mark.chaos
def test_sigterm_drains_hands_back_unstarted_tasks_and_finishes_running_ones(spawn, tmp_path):
    n = 30
    tasks = write_tasks(tmp_path / "t.jsonl",
                        [{"id": f"t{i}", "task": "sleep", "args": [0.3, i]} for i in range(n)])
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--tasks", tasks, "--bind", "127.0.0.1:0", "--results", str(out),
                   "--lease-timeout", "30", "--timeout", "20")
    address = f"127.0.0.1:{master_port(master)}"
    leaver = spawn("worker", "--master", address, "--id", "leaver", "--concurrency", "2")
    wait_until(lambda: any(r["worker"] == "leaver" for r in read_results(out)), 30,
               "the leaving worker to finish a task")
    spawn("worker", "--master", address, "--id", "stayer", "--concurrency", "2")
    leaver.signal(signal.SIGTERM)
    termed = time.monotonic()
    _, m = leaver.wait_for(r"draining: handing back (\d+) tasks not started, finishing (\d+)")
    assert int(m.group(1)) >= 1 and int(m.group(2)) >= 1
    master.wait_for(rf"worker leaver is draining: handed back {m.group(1)} tasks")
    assert leaver.wait(10) == 0
    drained_in = time.monotonic() - termed
    # Running tasks (0.3 s) fit in the default 10 s drain: the leaver itself delivers them.
    _, left = master.wait_for(r"worker leaver left, handing back (\d+) tasks")
    assert int(left.group(1)) == 0
    # Held tasks could only come back by expiry after 30 s, past --timeout 20: exit 3.
    assert master.wait(60) == 0, master.stderr
    assert_exactly_once(read_results(out), {f"t{i}": i for i in range(n)})
    stats = summary(master)
    assert stats["requeued"] == 0 and stats["handed_back"] == int(m.group(1))
    chaos.record("worker SIGTERM mid-batch (drain)", [f"t{i}" for i in range(n)],
                 read_results(out), dropped=stats["duplicates_dropped"], recover_s=drained_in,
                 recovery="SIGTERM to exit 0")


MARKING_TASKS = """
import os, time
from procfleet.shared.tasks import task

@task
def marked_sleep(marks, seconds, value):
    with open(os.path.join(marks, str(value)), "w"):
        pass
    time.sleep(seconds)
    return value
"""


@pytest.mark.chaos
def test_drain_timeout_hands_back_running_tasks(spawn, tmp_path):
    n = 4
    (tmp_path / "marking.py").write_text(MARKING_TASKS)
    marks = tmp_path / "marks"
    marks.mkdir()
    tasks = write_tasks(tmp_path / "t.jsonl", [
        {"id": f"t{i}", "task": "marked_sleep", "args": [str(marks), 3, i]} for i in range(n)])
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--tasks", tasks, "--bind", "127.0.0.1:0", "--results", str(out),
                   "--lease-timeout", "30", "--timeout", "40")
    address = f"127.0.0.1:{master_port(master)}"
    env = {"PROCFLEET_IMPORTS": "marking"}
    leaver = spawn("worker", "--master", address, "--id", "leaver", "--concurrency", "2",
                   "--drain-timeout", "0.5", cwd=tmp_path, env=env)
    # Its two slots have started a task each (3 s): neither can finish in the 0.5 s drain.
    wait_until(lambda: len(list(marks.iterdir())) == 2, 30, "two tasks to start")
    started = time.monotonic()
    leaver.signal(signal.SIGTERM)
    assert leaver.wait(10) == 0
    # It left without finishing them (the stayer ran all four, below): handed back, not waited for.
    _, left = master.wait_for(r"worker leaver left, handing back (\d+) tasks")
    assert int(left.group(1)) == 2
    spawn("worker", "--master", address, "--id", "stayer", "--concurrency", "4", cwd=tmp_path,
          env=env)
    assert master.wait(60) == 0, master.stderr
    assert_exactly_once(read_results(out), {f"t{i}": i for i in range(n)})
    assert {r["worker"] for r in read_results(out)} == {"stayer"}
    chaos.record("SIGTERM, running tasks longer than --drain-timeout 0.5",
                 [f"t{i}" for i in range(n)], read_results(out),
                 dropped=summary(master)["duplicates_dropped"],
                 recover_s=time.monotonic() - started, recovery="to batch end")


def test_port_in_use_leaves_an_earlier_results_file_alone(spawn, tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text('{"id": "earlier"}\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        master = spawn("master", "--demo", "1", "--bind", f"127.0.0.1:{s.getsockname()[1]}",
                       "--results", str(out))
        assert master.wait(30) == 2
    assert out.read_text() == '{"id": "earlier"}\n'


def test_tasks_from_stdin_and_a_user_task_module(spawn, tmp_path):
    (tmp_path / "mytasks.py").write_text(
        "from procfleet.shared.tasks import task\n\n"
        "@task(name='shout')\n"
        "def shout(word, times=1):\n"
        "    return (word.upper() + '!') * times\n")
    tasks = tmp_path / "t.jsonl"
    write_tasks(tasks, [{"task": "shout", "args": ["hi"]},
                        {"task": "shout", "args": ["yo"], "kwargs": {"times": 2}}])
    out = tmp_path / "results.jsonl"
    with open(tasks) as stdin:
        master = spawn("master", "--tasks", "-", "--local-workers", "2", "--bind", "127.0.0.1:0",
                       "--results", str(out), cwd=tmp_path, stdin=stdin,
                       env={"PROCFLEET_IMPORTS": "mytasks"})
        assert master.wait(60) == 0, master.stderr
    assert {r["id"]: r["result"] for r in read_results(out)} == {1: "HI!", 2: "YO!YO!"}
