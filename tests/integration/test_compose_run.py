"""`make run TASKS=FILE` (scripts/run.sh over docker-compose.run.yml) and `make up` (scripts/up.sh)
as a user runs them: a custom batch whose results land next to its file, and a master that
refuses its configuration, whose own error is what the user reads last."""

import itertools
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from procs import assert_exactly_once, write_tasks

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
#: one batch through compose, from start to `down`
RUN_TIMEOUT = 240
#: a master that never turns healthy: the image's start period (30 s) and retries (30 at 1 s)
UNHEALTHY_TIMEOUT = 240
_counter = itertools.count(1)


class Runner:
    """The scripts behind `make up` and `make run`, in compose projects named after `prefix`."""

    def __init__(self, client, compose_command: str, prefix: str, stage: Path) -> None:
        self.client = client
        self.prefix = prefix
        # The caller's PROCFLEET_* settings (a demo size, say) stay out of the cluster.
        self.env = {name: value for name, value in os.environ.items()
                    if not name.startswith(("PROCFLEET_", "COMPOSE_"))}
        self.env.update(COMPOSE=compose_command, COMPOSE_PROJECT_NAME=prefix, TMPDIR=str(stage),
                        PROCFLEET_AUTHKEY=secrets.token_urlsafe(24))

    def run(self, script: str, *args, cwd: Path = REPO, timeout: float = RUN_TIMEOUT, **env):
        return subprocess.run([str(SCRIPTS / script), *map(str, args)], cwd=cwd,
                              env={**self.env, **{k: str(v) for k, v in env.items()}},
                              capture_output=True, text=True, timeout=timeout)

    def leftovers(self) -> list:
        """Containers, networks and volumes of any compose project this runner started."""
        def ours(obj):
            return (obj.attrs.get("Labels") or obj.attrs.get("Config", {}).get("Labels") or {}
                    ).get("com.docker.compose.project", "").startswith(self.prefix)
        return [o for o in (self.client.containers.list(all=True) + self.client.networks.list()
                            + self.client.volumes.list()) if ours(o)]

    def down(self) -> None:
        """Whatever a failed test left: each project's containers, network and volume."""
        projects = set()
        for o in self.leftovers():
            labels = o.attrs.get("Labels") or o.attrs.get("Config", {}).get("Labels") or {}
            projects.add(labels["com.docker.compose.project"])
        for project in projects:
            self.run("down.sh", "-v", "-t", "5", COMPOSE_PROJECT_NAME=project)


@pytest.fixture
def runner(docker_client, compose_command, images, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    r = Runner(docker_client, compose_command, f"pfrun{os.getpid()}x{next(_counter)}", stage)
    yield r
    left = r.leftovers()
    r.down()
    assert not left, f"left behind: {left}"
    assert not list(stage.iterdir()), "run.sh left its copy of the task file"


@pytest.mark.docker
def test_run_a_task_file_results_next_to_it_exactly_once(runner, tmp_path):
    n, workers = 30, 2
    folder = tmp_path / "my batch"
    folder.mkdir()
    tasks = write_tasks(folder / "tasks.jsonl", [
        {"id": f"t{i}", "task": "sleep", "args": [0.05], "kwargs": {"value": i * 7}}
        for i in range(n)])
    tasks.chmod(0o600)    # the user's own file: the image's uid 10001 could not read it mounted
    results = folder / "tasks.jsonl.results.jsonl"

    # As `make run TASKS=tasks.jsonl WORKERS=2` from the file's folder; twice, since the second
    # run of the same file must start afresh, not report the finished batch from its journal.
    for attempt in (1, 2):
        done = runner.run("run.sh", "tasks.jsonl", workers, cwd=folder)
        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in results.read_text().splitlines()]
        assert_exactly_once(records, {f"t{i}": i * 7 for i in range(n)})
        assert all(r["attempts"] == 1 for r in records)
        # every worker took part (run.sh waits for all WORKERS before leasing)
        assert len({r["worker"] for r in records}) == workers, records
        assert not runner.leftovers(), f"run {attempt} left {runner.leftovers()}"
    assert sorted(p.name for p in folder.iterdir()) == ["tasks.jsonl", "tasks.jsonl.results.jsonl"]


@pytest.mark.docker
@pytest.mark.parametrize("script", ["up.sh", "run.sh"])
def test_a_refused_configuration_ends_with_the_masters_error(runner, tmp_path, script):
    """The master exits 2 before its first health check; compose mostly says only "unhealthy"
    and starts no worker (docker-compose v1 sometimes polls after the master has gone, takes
    that for healthy and starts the workers). Either way, what the user reads last is the
    master's own line."""
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{"id": 1, "task": "square", "args": [2]}])
    args = ["1"] if script == "up.sh" else [tasks, "1"]
    done = runner.run(script, *args, PROCFLEET_TASK_TIMEOUT="-5")
    assert done.returncode == 2, done.stderr
    unhealthy = "unhealthy" in done.stdout + done.stderr
    if unhealthy:     # compose's own words: the path this test is about; the master's lines
        assert "the master exited 2, and its last lines were:" in done.stderr
    print(f"\ncompose {'said unhealthy' if unhealthy else 'started the workers'}")
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("up.sh: the master failed (exit 2): ")    # run.sh runs up.sh
    assert "--task-timeout" in last and "fix or unset PROCFLEET_TASK_TIMEOUT" in last
    assert not runner.leftovers(), "the journal volume of a refused start stays behind"
    assert not (tmp_path / "tasks.jsonl.results.jsonl").exists()


@pytest.mark.docker
def test_a_bad_task_file_is_named_as_the_user_gave_it(runner, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "task": "square", "args": [2]}\n{"id": 2, "task"\n')
    done = runner.run("run.sh", "bad.jsonl", 1, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "bad.jsonl:2: invalid JSON" in last and "/run/procfleet" not in last, last


@pytest.mark.docker
def test_a_running_master_that_fails_its_health_check_is_shown(runner, tmp_path):
    """The other unhealthy path: the master runs, but its health check never passes (here a
    check pointed at the wrong port, quickly); up.sh shows its last lines and the batch counts
    as unfinished (3), not as one with failed tasks."""
    override = tmp_path / "unhealthy.yml"
    override.write_text(
        "services:\n  master:\n    healthcheck:\n"
        '      test: ["CMD", "procfleet", "ping", "--master", "127.0.0.1:50001"]\n'
        "      interval: 1s\n      retries: 3\n      start_period: 0s\n")
    done = runner.run("up.sh", "1", PROCFLEET_DEMO="5",
                      COMPOSE_FILE=f"{REPO / 'docker-compose.yml'}:{override}",
                      COMPOSE_PATH_SEPARATOR=":", timeout=UNHEALTHY_TIMEOUT)
    assert done.returncode == 3, done.stderr
    assert "its health check (procfleet ping) fails" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("up.sh: the master failed (exit 3): ")
    assert "master: " in last, last     # a line of the master's own log
    runner.down()    # its journal volume is kept for a resume, as for any unfinished batch
