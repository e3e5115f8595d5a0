"""Real masters and workers over IPv6 loopback: --bind [::1]:PORT, --master [::1]:PORT, [::]."""

import pytest
from ipv6 import require_ipv6_loopback
from procs import assert_exactly_once, read_results, summary

N = 300


@pytest.fixture(autouse=True)
def ipv6_loopback():
    require_ipv6_loopback()


def ipv6_port(master) -> int:
    _, m = master.wait_for(r"serving \d+ tasks on \[(::1?)\]:(\d+)")
    return int(m.group(2))


def test_worker_on_an_ipv6_master_completes_a_batch(spawn, tmp_path):
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--demo", str(N), "--bind", "[::1]:0", "--results", str(out),
                   "--timeout", "60")
    port = ipv6_port(master)
    worker = spawn("worker", "--master", f"[::1]:{port}", "--concurrency", "2",
                   "--connect-timeout", "10", "--id", "six")
    assert master.wait(60) == 0, master.stderr
    assert worker.wait(30) == 0, worker.stderr
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(N)})
    master.wait_for(r"worker six joined from \[::1\]:\d+")
    assert summary(master)["workers"] == 1
    assert "Traceback" not in master.stderr + worker.stderr


def test_local_workers_reach_a_master_bound_to_ipv6_loopback(spawn, tmp_path):
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--demo", str(N), "--bind", "[::1]:0", "--local-workers", "2",
                   "--wait-workers", "2", "--results", str(out), "--timeout", "60")
    assert master.wait(60) == 0, master.stderr
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(N)})
    master.wait_for(r"worker local-\d+-1 joined from \[::1\]:\d+")
    master.wait_for(r"worker local-\d+-2 joined from \[::1\]:\d+")
    assert "Traceback" not in master.stderr


def test_the_ipv6_wildcard_serves_local_workers_on_ipv6_and_others_on_ipv4(spawn, tmp_path):
    out = tmp_path / "results.jsonl"
    # --wait-workers 2: nothing is leased until the IPv4 worker has joined too.
    master = spawn("master", "--demo", str(N), "--bind", "[::]:0", "--local-workers", "1",
                   "--wait-workers", "2", "--results", str(out), "--timeout", "60")
    port = ipv6_port(master)
    worker = spawn("worker", "--master", f"127.0.0.1:{port}", "--connect-timeout", "10",
                   "--id", "four")
    assert master.wait(60) == 0, master.stderr
    assert worker.wait(30) == 0, worker.stderr
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(N)})
    master.wait_for(r"worker local-\d+-1 joined from \[::1\]:\d+")
    # an IPv4 peer of a dual-stack socket shows as an IPv4-mapped IPv6 address
    master.wait_for(r"worker four joined from \[::ffff:127\.0\.0\.1\]:\d+")
