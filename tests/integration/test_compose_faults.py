"""Faults against the real compose cluster: a cut network, scaling down, a crashing master."""

import re
import time
from datetime import datetime, timezone

import pytest

import chaos
from procs import assert_exactly_once, summary_of as summary, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.chaos]

KILL_BATCH_PROCESS = ("import os, signal; "
                      "pids = open('/proc/1/task/1/children').read().split(); "
                      "os.kill(int(pids[0]), signal.SIGKILL); print(pids[0])")


def log_time(stderr_with_timestamps: str, pattern: str) -> datetime | None:
    m = re.search(rf"^(\S+) .*{pattern}", stderr_with_timestamps, re.M)
    return datetime.fromisoformat(m.group(1)[:26] + "+00:00") if m else None


def master_log(c) -> str:
    return c.master.logs(stdout=False, stderr=True, timestamps=True).decode()


def test_worker_cut_off_from_the_network_is_requeued_and_its_late_results_dropped(
        cluster, docker_client):
    n, lease_timeout = 240, 2
    c = cluster(workers=4, PROCFLEET_DEMO=n, PROCFLEET_DEMO_SLEEP=0.1,
                PROCFLEET_LEASE_TIMEOUT=lease_timeout)
    victim_id = wait_until(lambda: next((r["worker"] for r in c.results()), None), 120,
                           "the first result")
    [victim] = [w for w in c.workers()
                if w.attrs["Config"]["Hostname"] == victim_id.rsplit("-", 1)[0]]
    network = docker_client.networks.get(c.network)
    network.disconnect(victim)
    cut_at = datetime.now(timezone.utc)
    requeued = wait_until(lambda: log_time(master_log(c), rf"worker {victim_id} silent for .* "
                                                          r"requeued [1-9]\d* tasks"),
                          30, "the cut-off worker's tasks to be requeued")
    network.connect(victim)
    wait_until(lambda: log_time(master_log(c), rf"worker {victim_id} is back"), 60,
               "the worker to come back")
    assert c.master.wait(timeout=180)["StatusCode"] == 0, c.master_stderr()
    records = c.results()
    assert_exactly_once(records, {str(i): i * i for i in range(n)})
    stats = summary(c.master_stderr())
    assert stats["requeued"] >= 1 and stats["duplicates_dropped"] >= 1
    chaos.record(f"docker network disconnect of a worker > lease ({lease_timeout} s)", range(n),
                 records, dropped=stats["duplicates_dropped"],
                 recover_s=(requeued - cut_at).total_seconds(), recovery="cut to requeue")


def test_scaling_8_workers_down_to_2_mid_batch_loses_nothing(cluster):
    n = 400
    c = cluster(workers=8, PROCFLEET_DEMO=n, PROCFLEET_DEMO_SLEEP=0.1,
                PROCFLEET_LEASE_TIMEOUT=30)   # nothing may come back by expiry: only by drain
    wait_until(lambda: len(c.results()) >= 40, 120, "40 results")
    started = time.monotonic()
    c.services._docker_compose.execute("up -d --no-recreate --scale worker=2")
    scaled_in = time.monotonic() - started
    assert len(c.workers()) == 2
    assert c.master.wait(timeout=180)["StatusCode"] == 0, c.master_stderr()
    records = c.results()
    assert_exactly_once(records, {str(i): i * i for i in range(n)})
    stderr = c.master_stderr()
    drained = re.findall(r"worker \S+ left, handing back \d+ tasks", stderr)
    assert len(drained) >= 6, stderr
    stats = summary(stderr)
    assert stats["requeued"] == 0 and stats["workers_lost"] == 0
    chaos.record("compose scale worker 8 -> 2 mid-batch (SIGTERM drain)", range(n), records,
                 dropped=stats["duplicates_dropped"], recover_s=scaled_in,
                 recovery="scale-down command")


def test_master_batch_process_killed_in_its_container_resumes_from_the_journal(cluster):
    n = 300
    c = cluster(workers=4, PROCFLEET_DEMO=n, PROCFLEET_DEMO_SLEEP=0.05, PROCFLEET_LEASE_TIMEOUT=3)
    wait_until(lambda: len(c.results()) >= 50, 120, "50 results")
    code, output = c.master.exec_run(["python3", "-c", KILL_BATCH_PROCESS])
    killed_at = datetime.now(timezone.utc)
    assert code == 0, output
    assert c.master.wait(timeout=180)["StatusCode"] == 0, c.master_stderr()
    log = master_log(c)
    assert "killed by SIGKILL: restarting it from the journal" in log
    resumed = log_time(log, "resuming batch")
    assert resumed is not None, log
    c.master.reload()
    assert c.master.attrs["RestartCount"] == 0   # the image restarted it, not Docker
    records = c.results()
    assert_exactly_once(records, {str(i): i * i for i in range(n)})
    chaos.record("master batch process SIGKILL in its container", range(n), records,
                 dropped=summary(c.master_stderr())["duplicates_dropped"],
                 recover_s=(resumed - killed_at).total_seconds(), recovery="kill to resumed")


def test_master_that_finishes_with_failures_exits_1_and_is_not_restarted(cluster):
    n = 20   # each sleeps 2 s under a 0.2 s timeout: every task fails, the batch ends with 1
    c = cluster(workers=2, PROCFLEET_DEMO=n, PROCFLEET_DEMO_SLEEP=2, PROCFLEET_TASK_TIMEOUT=0.2)
    assert c.master.wait(timeout=180)["StatusCode"] == 1, c.master_stderr()
    c.master.reload()
    assert c.master.attrs["State"]["Status"] == "exited" and c.master.attrs["RestartCount"] == 0
    assert "restarting" not in c.master_stderr()
    records = c.results()
    assert len(records) == n and all("timed out after 0.2 s" in r["error"] for r in records)
