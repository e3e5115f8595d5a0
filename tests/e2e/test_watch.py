"""Watching a real batch: `procfleet status` and the metrics port (--metrics) of a master with
real workers, read as a user would (the CLI, HTTP)."""

import json
import subprocess
import sys
import urllib.error
import urllib.request

from procs import (assert_exactly_once, free_port, master_port, read_results, summary,
                   wait_until)


def get(url: str, host: str | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode(), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def status_cli(address: str, *args, check: int = 0) -> subprocess.CompletedProcess:
    """`procfleet status --master ADDRESS ARGS`, its output captured; exit code `check`."""
    done = subprocess.run([sys.executable, "-m", "procfleet.shared", "status", "--master",
                           address, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == check, done.stderr
    return done


def metric(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[-1])


def test_status_and_metrics_of_a_running_batch(spawn, tmp_path):
    n, web = 120, free_port()
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--demo", n, "--demo-sleep", "0.05", "--bind", "127.0.0.1:0",
                   "--metrics", web, "--wait-workers", "2", "--results", out)
    address = f"127.0.0.1:{master_port(master)}"
    for name in ("w-a", "w-b"):
        spawn("worker", "--master", address, "--id", name, "--concurrency", "2")
    base = f"http://127.0.0.1:{web}"

    def some_done():
        status = json.loads(get(f"{base}/api/status")[1])
        return status if status["finished"] >= 10 else None

    status = wait_until(some_done, 30, "ten results")
    assert {w["id"] for w in status["workers"]} == {"w-a", "w-b"}
    assert all(w["concurrency"] == 2 and w["python"] and w["address"].startswith("127.0.0.1:")
               for w in status["workers"])
    assert status["history"] and status["failures"] == []

    shown = json.loads(status_cli(address, "--json").stdout)
    assert shown["mode"] == "batch" and shown["total"] == n and len(shown["workers"]) == 2
    table = status_cli(address).stdout.splitlines()
    assert table[0].startswith(f"master {address}: run, batch ")
    assert table[2].split()[:2] == ["worker", "address"]
    assert {line.split()[0] for line in table[3:5]} == {"w-a", "w-b"}
    code, metrics, headers = get(f"{base}/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    assert metric(metrics, 'procfleet_tasks{state="ok"}') >= 10
    assert metric(metrics, "procfleet_batch_tasks") == n
    assert metric(metrics, "procfleet_workers_alive") == 2
    assert metric(metrics, 'procfleet_refused_connections_total{reason="auth"}') == 0
    assert metric(metrics, 'procfleet_task_duration_seconds_bucket{le="+Inf"}') >= 10
    code, page, headers = get(f"{base}/")
    assert code == 200 and "dashboard.js" in page
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    # loopback only: a page that rebinds its own name to 127.0.0.1 is refused
    assert get(f"{base}/api/status", host="attacker.example:80")[0] == 421
    # nothing to write
    post = urllib.request.Request(f"{base}/api/status", data=b"{}", method="POST")
    try:
        urllib.request.urlopen(post, timeout=10)
        raise AssertionError("POST was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 501

    assert master.wait(60) == 0, master.stderr
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(n)})
    per_worker = summary(master)["per_worker"]
    assert set(per_worker) == {"w-a", "w-b"}
    assert sum(w["ok"] for w in per_worker.values()) == n
    assert all(w["ok"] > 0 and w["failed"] == 0 for w in per_worker.values())
    assert status_cli(address, check=3).stderr.startswith("procfleet: error: master ")
