"""The real docker-compose.yml: scaled clusters, a killed worker container, a wrong key."""

import re
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

import chaos
from procs import assert_exactly_once, summary_of as summary, wait_until

WRONG_KEY = "not-the-cluster-key-0123"


def assert_every_worker_worked(c, records: list[dict], workers: int) -> None:
    """Each worker container delivered some results (their ids are HOSTNAME-PID)."""
    delivered = Counter(r["worker"].rsplit("-", 1)[0] for r in records)
    hostnames = {w.attrs["Config"]["Hostname"] for w in c.containers("worker")}
    assert set(delivered) == hostnames and len(hostnames) == workers, \
        f"results per worker {dict(delivered)}, containers {hostnames}"


@pytest.mark.docker
def test_make_up_demo_gives_every_worker_a_share(cluster):
    """What `make up` runs: the compose file's own demo (100 tasks of 0.1 s), the batch
    waiting for the 4 workers (scripts/up.sh sets PROCFLEET_WAIT_WORKERS to WORKERS). It once
    went whole to the first worker in 0.01 s, the other three joining after it ended."""
    c = cluster(workers=4, PROCFLEET_WAIT_WORKERS=4)
    assert c.master.wait(timeout=180)["StatusCode"] == 0, c.master_stderr()
    records = c.results()
    assert_exactly_once(records, {str(i): i * i for i in range(100)})
    assert_every_worker_worked(c, records, 4)
    written = c.summary()
    assert written == summary(c.master_stderr())        # --summary-json: the closing line's
    assert written["workers"] == 4 and written["work_seconds"] >= 1.0, written


@pytest.mark.docker
@pytest.mark.parametrize("workers", [1, 4, 8])
def test_scaled_cluster_delivers_every_result_exactly_once(cluster, workers):
    n = 400    # 0.02 s each, starting once every worker container has joined
    c = cluster(workers=workers, PROCFLEET_DEMO=n, PROCFLEET_DEMO_SLEEP=0.02,
                PROCFLEET_WAIT_WORKERS=workers)
    assert c.master.wait(timeout=180)["StatusCode"] == 0, c.master_stderr()
    records = c.results()
    assert_exactly_once(records, {str(i): i * i for i in range(n)})
    assert_every_worker_worked(c, records, workers)
    delivered = {r["worker"] for r in records}
    stats = summary(c.master_stderr())
    print(f"\n{workers} workers: {len(records)} results, "
          f"{stats['duplicates_dropped']:.0f} duplicates dropped, "
          f"{len(delivered)} workers delivered, {stats['seconds']:.2f} s")


@pytest.mark.docker
@pytest.mark.chaos
def test_killed_worker_container_loses_nothing(cluster):
    n, lease_timeout = 80, 2
    c = cluster(workers=4, PROCFLEET_DEMO=n, PROCFLEET_DEMO_SLEEP=0.2,
                PROCFLEET_LEASE_TIMEOUT=lease_timeout)
    victim_id = wait_until(
        lambda: next((r["worker"] for r in c.results()), None), 120,
        "the first result")
    [victim] = [w for w in c.workers() if w.attrs["Config"]["Hostname"] == victim_id.rsplit("-", 1)[0]]
    victim.kill()
    killed_at = datetime.now(timezone.utc)
    assert c.master.wait(timeout=180)["StatusCode"] == 0, c.master_stderr()
    records = c.results()
    assert_exactly_once(records, {str(i): i * i for i in range(n)})
    stderr = c.master.logs(stdout=False, stderr=True, timestamps=True).decode()
    m = re.search(rf"^(\S+) .*worker {re.escape(victim_id)} silent for .* requeued (\d+) tasks",
                  stderr, re.M)
    assert m, stderr
    requeued_at = datetime.fromisoformat(m.group(1)[:26] + "+00:00")
    stats = summary(stderr)
    assert stats["requeued"] >= 1
    assert any(r["attempts"] > 1 for r in records)
    chaos.record("worker container docker kill (lease 2 s)", range(n), records,
                 dropped=stats["duplicates_dropped"],
                 recover_s=(requeued_at - killed_at).total_seconds(), recovery="kill to requeue")
    print(f"\nkilled {victim_id}: {len(records)} results, requeued {m.group(2)}, "
          f"duplicates dropped {stats['duplicates_dropped']:.0f}, "
          f"kill-to-requeue {(requeued_at - killed_at).total_seconds():.2f} s")


@pytest.mark.docker
@pytest.mark.chaos
def test_worker_container_with_wrong_key_is_refused_and_batch_unaffected(cluster, docker_client):
    n = 60
    c = cluster(workers=2, PROCFLEET_DEMO=n, PROCFLEET_DEMO_SLEEP=0.1)
    wait_until(lambda: c.results(), 120, "the first result")
    assert c.master.attrs["State"]["Health"]["Status"] == "healthy"
    intruder = docker_client.containers.run(
        "procfleet-worker:latest", detach=True, network=c.network,
        environment={"PROCFLEET_AUTHKEY": WRONG_KEY, "PROCFLEET_MASTER": "master:50000"},
        labels={"com.docker.compose.project": c.project})
    try:
        started = time.monotonic()
        assert intruder.wait(timeout=30)["StatusCode"] == 2
        refused_in = time.monotonic() - started
        logs = intruder.logs().decode()
    finally:
        intruder.remove(force=True)
    assert "authentication failed connecting to master master:50000" in logs
    assert "Traceback" not in logs
    assert c.master.wait(timeout=120)["StatusCode"] == 0, c.master_stderr()
    assert_exactly_once(c.results(), {str(i): i * i for i in range(n)})
    assert re.search(r"refused connection from [\d.]+:\d+: wrong key", c.master_stderr())
    chaos.record("worker container with a wrong key", range(n), c.results(),
                 dropped=summary(c.master_stderr())["duplicates_dropped"], recover_s=refused_in,
                 recovery="container start to exit 2")
    print(f"\nwrong-key container exited 2 after {refused_in:.2f} s (container start included)")
