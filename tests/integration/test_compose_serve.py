"""The compose cluster in service mode (docker-compose.serve.yml), driven by the scripts behind
`make serve`, `make submit` and `make serve-down`: jobs one after another on the same workers."""

import collections
import itertools
import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from procs import assert_exactly_once, write_tasks

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
#: bounds of the scripts' runs: starting the cluster (it waits for health itself), one job
SERVE_TIMEOUT = 180
JOB_TIMEOUT = 180
_counter = itertools.count(1)


def submit_summary(stderr: str) -> dict:
    """The JSON object of submit's closing `HH:MM:SS submit: summary: {...}` line."""
    for line in reversed(stderr.splitlines()):
        _stamp, _, rest = line.partition(" ")
        actor, found, body = rest.partition(": summary: ")
        if found and actor == "submit" and body.startswith("{"):
            return json.loads(body)
    raise AssertionError(f"no submit summary line in: {stderr[-3000:]}")


class Served:
    """One service-mode compose project: the scripts that drive it, and its containers."""

    def __init__(self, client, project: str, env: dict) -> None:
        self.client = client
        self.project = project
        self.env = env

    def containers(self, service: str):
        labels = [f"com.docker.compose.project={self.project}",
                  f"com.docker.compose.service={service}"]
        return self.client.containers.list(all=True, filters={"label": labels})

    def identities(self, service: str) -> dict:
        """Each container of `service`: id -> (status, StartedAt, RestartCount), read afresh."""
        found = {}
        for c in self.containers(service):
            c.reload()
            found[c.id] = (c.attrs["State"]["Status"], c.attrs["State"]["StartedAt"],
                           c.attrs["RestartCount"])
        return found

    def submit(self, tasks: Path, results: Path, *options: str):
        """scripts/submit.sh, as `make submit TASKS=tasks RESULTS=results` runs it."""
        return subprocess.run([str(SCRIPTS / "submit.sh"), str(tasks), str(results), "--",
                               *options], env=self.env, cwd=tasks.parent, capture_output=True,
                              text=True, timeout=JOB_TIMEOUT)

    def master_logs(self) -> str:
        [master] = self.containers("master")
        return master.logs().decode()


@pytest.fixture
def served(docker_client, compose_command, images):
    """Factory: `served(workers)` starts the service-mode cluster with scripts/serve.sh in a compose
    project of its own; scripts/serve-down.sh removes it after the test, leaving nothing."""
    started = []

    def start(workers: int = 4) -> Served:
        project = f"pfserve{os.getpid()}x{next(_counter)}"
        # The caller's PROCFLEET_* settings (a demo size, say) stay out of the cluster.
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("PROCFLEET_") and name != "COMPOSE_FILE"}
        env.update(COMPOSE=compose_command, COMPOSE_PROJECT_NAME=project,
                   PROCFLEET_AUTHKEY=secrets.token_urlsafe(24))
        started.append(Served(docker_client, project, env))
        up = subprocess.run([str(SCRIPTS / "serve.sh"), str(workers)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=SERVE_TIMEOUT)
        assert up.returncode == 0, up.stderr
        return started[-1]

    yield start
    for s in started:
        down = subprocess.run([str(SCRIPTS / "serve-down.sh"), "-t", "15"], env=s.env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        label = f"com.docker.compose.project={s.project}"
        leftovers = (docker_client.containers.list(all=True, filters={"label": label})
                     + docker_client.networks.list(filters={"label": label})
                     + docker_client.volumes.list(filters={"label": label}))
        assert not leftovers, f"compose project {s.project} left {leftovers} behind"


@pytest.mark.docker
def test_two_jobs_run_on_the_same_workers_exactly_once(served, tmp_path):
    workers = 4
    s = served(workers)
    before = s.identities("worker")
    master_before = s.identities("master")
    assert len(before) == workers
    assert all(status == "running" and restarts == 0
               for status, _, restarts in before.values()), before

    # Job 1: quick tasks, string ids; job 2: slower ones, integer ids, so every worker joins in.
    n1, n2 = 400, 80
    job1 = write_tasks(tmp_path / "job1.jsonl", [
        {"id": f"a{i}", "task": "square", "args": [i]} for i in range(n1)])
    job2 = write_tasks(tmp_path / "job2.jsonl", [
        {"id": i, "task": "sleep", "args": [0.05], "kwargs": {"value": i * 3}} for i in range(n2)])
    outcomes = []
    for tasks, expected in ((job1, {f"a{i}": i * i for i in range(n1)}),
                            (job2, {i: i * 3 for i in range(n2)})):
        results = tmp_path / f"{tasks.name}.results.jsonl"
        done = s.submit(tasks, results, "--timeout", "120")
        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in results.read_text().splitlines()]
        assert_exactly_once(records, expected)
        stats = submit_summary(done.stderr)
        assert (stats["tasks"], stats["ok"], stats["failed"], stats["unfinished"]) == (
            len(expected), len(expected), 0, 0), stats
        outcomes.append((records, stats))

    # The same worker containers, never restarted, still running, did both jobs.
    after = s.identities("worker")
    assert after == before
    assert s.identities("master") == master_before
    hostnames = {c.attrs["Config"]["Hostname"] for c in s.containers("worker")}
    for records, _ in outcomes:
        delivered = {r["worker"].rsplit("-", 1)[0] for r in records}
        assert delivered <= hostnames, f"results from {delivered - hostnames}"
    # How the jobs spread over the workers is the master's lease sizing, tested without Docker;
    # shown here, not asserted.
    spread = [sorted(collections.Counter(r["worker"] for r in records).values(), reverse=True)
              for records, _ in outcomes]
    print(f"\njob 1: {n1} results in {outcomes[0][1].get('seconds')} s, per worker {spread[0]}; "
          f"job 2: {n2} results in {outcomes[1][1].get('seconds')} s, per worker {spread[1]}; "
          f"{workers} worker containers unchanged")


@pytest.mark.docker
def test_bad_task_file_is_refused_with_its_line_and_nothing_sent(served, tmp_path):
    s = served(1)
    tasks = tmp_path / "bad.jsonl"
    tasks.write_text('{"id": 1, "task": "square", "args": [2]}\n'
                     '{"id": 2, "task": "square", "args": [3]\n'
                     '{"id": 3, "task": "square", "args": [4]}\n')
    results = tmp_path / "bad.results.jsonl"
    results.write_text("an older job's results\n")

    refused = s.submit(tasks, results)

    assert refused.returncode == 2, refused.stderr
    assert f"{tasks}:2: " in refused.stderr, refused.stderr     # the host file, not <stdin>
    assert "Traceback" not in refused.stderr
    # Nothing sent: the master saw no job, and the older results file is as it was.
    assert results.read_text() == "an older job's results\n"
    assert not results.with_name(results.name + ".partial").exists()
    assert not re.search(r"^\S+ master: job \S+ .* opened by ", s.master_logs(), re.M), \
        s.master_logs()
