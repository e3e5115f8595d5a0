"""`procfleet master --serve` and `procfleet submit`, as real processes."""

import json
import signal
import subprocess

import pytest
from fakes import TEST_KEY
from procs import (Proc, assert_exactly_once, free_port, read_results, summary, wait_until,
                   write_tasks)

from procfleet.shared.manager import connect


@pytest.fixture
def cluster(spawn):
    """A service with two workers; returns its address and the master's Proc."""
    port = free_port()
    master = spawn("master", "--serve", "--bind", f"127.0.0.1:{port}", "--lease-timeout", "1.5")
    master.wait_for(r"serving jobs on")
    for i in (1, 2):
        spawn("worker", "--master", f"127.0.0.1:{port}", "--id", f"w{i}",
              "--concurrency", "2").wait_for("connected to master")
    return f"127.0.0.1:{port}", master


def ping(address: str) -> dict:
    host, port = address.rsplit(":", 1)
    return connect((host, int(port)), TEST_KEY.encode()).ping()


def squares(n: int, start: int = 0, seconds: float = 0.0) -> list[dict]:
    if seconds:
        return [{"id": i, "task": "sleep", "args": [seconds, i * i]}
                for i in range(start, start + n)]
    return [{"id": i, "task": "square", "args": [i]} for i in range(start, start + n)]


def test_three_submits_at_once_each_get_their_own_results(cluster, spawn, tmp_path):
    address, master = cluster
    clients = []
    for n in range(3):
        tasks = write_tasks(tmp_path / f"t{n}.jsonl", squares(300, start=1000 * n,
                                                              seconds=0.002))
        clients.append(spawn("submit", tasks, "--master", address,
                             "--results", tmp_path / f"r{n}.jsonl"))
    for n, client in enumerate(clients):
        assert client.wait() == 0, client.tail()
        assert_exactly_once(read_results(tmp_path / f"r{n}.jsonl"),
                            {i: i * i for i in range(1000 * n, 1000 * n + 300)})
        figures = summary(client, actor="submit")
        assert figures["tasks"] == figures["ok"] == 300 and figures["unfinished"] == 0
    wait_until(lambda: ping(address)["jobs"] == 0, 10, "the jobs to be closed")


def test_a_bad_task_file_is_refused_before_anything_is_sent(cluster, spawn, tmp_path):
    address, master = cluster
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "square", "args": [1]}\n{"task": 5}\n')
    client = spawn("submit", bad, "--master", address, "--results", tmp_path / "r.jsonl")
    assert client.wait() == 2
    assert f"{bad}:2: \"task\" must be a non-empty string" in client.stderr
    assert "opened" not in master.stderr         # no job was opened


def test_a_client_killed_mid_job_is_dropped_and_the_fleet_goes_on(cluster, spawn, tmp_path):
    address, master = cluster
    tasks = write_tasks(tmp_path / "slow.jsonl", squares(400, seconds=0.05))
    doomed = spawn("submit", tasks, "--master", address, "--results", tmp_path / "r1.jsonl")
    wait_until(lambda: len(read_results(tmp_path / "r1.jsonl")) >= 5, 30, "first results")
    doomed.signal(signal.SIGKILL)
    master.wait_for(r"its client was silent for more than 1.5 s; dropped it with \d+ tasks "
                    r"unfinished", timeout=15)
    assert ping(address)["jobs"] == 0
    after = write_tasks(tmp_path / "after.jsonl", squares(50))
    client = spawn("submit", after, "--master", address, "--results", tmp_path / "r2.jsonl")
    assert client.wait() == 0, client.tail()
    assert_exactly_once(read_results(tmp_path / "r2.jsonl"), {i: i * i for i in range(50)})


def test_a_slow_producer_on_stdin_gets_results_before_it_ends(cluster, tmp_path):
    address, _master = cluster
    results = tmp_path / "r.jsonl"
    client = Proc(["submit", "-", "--master", address, "--results", results],
                  stdin=subprocess.PIPE)
    try:
        for i in range(5):
            client.popen.stdin.write(json.dumps({"id": i, "task": "square", "args": [i]}) + "\n")
            client.popen.stdin.flush()
            # the producer has not ended: the task ran anyway
            wait_until(lambda: len(read_results(results)) == i + 1, 20, f"result {i}")
        client.popen.stdin.close()
        assert client.wait() == 0, client.tail()
    finally:
        client.kill()
    assert_exactly_once(read_results(results), {i: i * i for i in range(5)})


def test_a_bad_line_on_stdin_stops_the_job_with_exit_2(cluster, tmp_path):
    address, _master = cluster
    client = Proc(["submit", "-", "--master", address, "--results", tmp_path / "r.jsonl"],
                  stdin=subprocess.PIPE)
    try:
        client.popen.stdin.write('{"task": "square", "args": [2]}\n{"task": "square", "args": 3}\n')
        client.popen.stdin.close()
        assert client.wait() == 2
    finally:
        client.kill()
    assert '<stdin>:2: "args" must be an array' in client.stderr


def test_sigterm_stops_the_service_and_its_clients_exit_3(cluster, spawn, tmp_path):
    address, master = cluster
    tasks = write_tasks(tmp_path / "long.jsonl", squares(4, seconds=30))
    client = spawn("submit", tasks, "--master", address, "--results", tmp_path / "r.jsonl")
    client.wait_for(r"job \w+ on master")
    wait_until(lambda: ping(address)["total"] == 4, 10, "the tasks to arrive")
    master.signal(signal.SIGTERM)
    assert client.wait() == 3
    assert "is stopping; 4 tasks of the job are unfinished" in client.stderr
    assert master.wait() == 0
    assert summary(client, actor="submit")["unfinished"] == 4


@pytest.mark.parametrize("extra, says", [
    (["--journal", "j.db"], "--journal does not go with --serve"),
    (["--demo", "3"], "--demo does not go with --serve"),
    (["--results", "r.jsonl", "--timeout", "5"], "--results, --timeout do not go with --serve"),
])
def test_serve_refuses_batch_options_in_one_line(spawn, extra, says):
    master = spawn("master", "--serve", "--bind", "127.0.0.1:0", *extra)
    assert master.wait() == 2
    assert says in master.stderr and len(master.stderr.splitlines()) == 1


def test_submit_to_nobody_exits_3_naming_the_master(spawn, tmp_path):
    tasks = write_tasks(tmp_path / "t.jsonl", squares(1))
    client = spawn("submit", tasks, "--master", f"127.0.0.1:{free_port()}",
                   "--connect-timeout", "1")
    assert client.wait() == 3
    assert "is not reachable" in client.stderr


def test_a_batch_reading_stdin_runs_tasks_before_the_producer_ends(authkey_env, tmp_path):
    """`procfleet master --tasks -` streams like submit: each line runs as it arrives."""
    results = tmp_path / "r.jsonl"
    master = Proc(["master", "--tasks", "-", "--local-workers", "1", "--bind", "127.0.0.1:0",
                   "--results", results], stdin=subprocess.PIPE)
    try:
        for i in range(3):
            master.popen.stdin.write(json.dumps({"id": i, "task": "square", "args": [i]}) + "\n")
            master.popen.stdin.flush()
            wait_until(lambda: len(read_results(results)) == i + 1, 30, f"result {i}")
        master.popen.stdin.write('{"id": 3, "task": "square", "args": "x"}\n')
        master.popen.stdin.close()
        assert master.wait() == 2                      # a bad line stops the batch there
    finally:
        master.kill()
    assert '<stdin>:4: "args" must be an array' in master.stderr
    assert_exactly_once(read_results(results), {i: i * i for i in range(3)})


def test_submit_writes_its_summary_as_json_too(cluster, spawn, tmp_path):
    address, _master = cluster
    tasks = write_tasks(tmp_path / "t.jsonl", squares(50))
    path = tmp_path / "summary.json"
    client = spawn("submit", tasks, "--master", address, "--results", tmp_path / "r.jsonl",
                   "--summary-json", path)
    assert client.wait() == 0, client.tail()
    written = json.loads(path.read_text())
    assert written == summary(client, actor="submit")
    assert (written["tasks"], written["ok"], written["unfinished"]) == (50, 50, 0)
