"""deploy/stack.yml on a real Docker Swarm, deployed and removed by the scripts `make stack-up`
and `make stack-down` run: a batch over 4 worker replicas, scaled up and down mid-batch, every
result exactly once; then the stack, its volume and its secret are gone.

An engine that is not in a swarm is made a single-node one for the session (`docker swarm
init`) and leaves it again afterwards; an engine already in one is used as it is and left in it.
The images are the local ones (`--resolve-image never`): no registry is needed on one node.
"""

import itertools
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from docker import errors as docker_errors
from procs import (assert_exactly_once, container_results, summary_of, unavailable,
                   wait_until)

REPO = Path(__file__).resolve().parents[2]
STACK_FILE = REPO / "deploy" / "stack.yml"
#: one docker CLI call (deploy, scale, rm) may take this long
CLI_TIMEOUT = 120
#: `docker stack rm` returns at once; its containers stop within the 15 s stop_grace_period
REMOVE_TIMEOUT = 90
_counter = itertools.count(1)


def script(name: str, *args, env: dict) -> subprocess.CompletedProcess:
    """One of scripts/ as make runs it, with `env` added to this environment; one that runs
    past CLI_TIMEOUT is killed and reported as exit -9."""
    argv = [str(REPO / "scripts" / name), *map(str, args)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env},
                              timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -9, "",
                                           f"still running after {CLI_TIMEOUT} s")


def docker(*args, env=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=CLI_TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(map(str, args))}: exit {proc.returncode}: "
                             f"{proc.stderr.strip()}")
    return proc


@pytest.fixture(scope="session")
def swarm(docker_client):
    """A swarm manager to deploy on; initialised here (and left at the end) only if needed."""
    state = docker_client.info()["Swarm"]["LocalNodeState"]
    initialised = False
    if state == "inactive":
        # loopback: a swarm of this one node, reachable by no other host
        init = docker("swarm", "init", "--advertise-addr", "127.0.0.1", check=False)
        if init.returncode != 0:
            unavailable(f"docker swarm init failed: {init.stderr.strip()}")
        initialised = True
    elif state != "active":
        unavailable(f"this engine's swarm state is {state!r}, neither active nor inactive")
    if not docker_client.info()["Swarm"].get("ControlAvailable"):
        unavailable("this engine is a swarm worker node; stacks deploy from a manager")
    yield
    if initialised:
        docker("swarm", "leave", "--force")


class Stack:
    """One deployed stack, seen through the Docker SDK."""

    def __init__(self, client, name: str, secret) -> None:
        self.client = client
        self.name = name
        self.secret = secret

    def _label(self) -> str:
        return f"com.docker.stack.namespace={self.name}"

    def containers(self, service: str, all: bool = True):
        return self._containers({"label": [f"com.docker.swarm.service.name={self.name}_{service}"]},
                                all)

    def _containers(self, filters: dict, all: bool = True) -> list:
        """The containers `filters` picks. Swarm removes its exited task containers on its own,
        so one listed may be gone when the SDK inspects it: that one is left out, not an error
        (a CI run failed on the 404)."""
        return self.client.containers.list(all=all, filters=filters, ignore_removed=True)

    @property
    def master(self):
        return wait_until(lambda: next(iter(self.containers("master")), None), 120,
                          f"the master container of stack {self.name}")

    def results(self) -> list[dict]:
        """The master's results file so far (whole lines), read out of its container."""
        return container_results(self.master)

    def up(self, workers: int, env: dict, *overrides) -> None:
        """Deploy, or update, the stack: through scripts/stack-up.sh, or with compose files
        laid over deploy/stack.yml through `docker stack deploy` itself."""
        env = {"PROCFLEET_STACK": self.name, "PROCFLEET_AUTHKEY_SECRET": self.secret.name,
               "WORKERS": str(workers), **{k: str(v) for k, v in env.items()}}
        if overrides:
            files = [arg for path in (STACK_FILE, *overrides) for arg in ("-c", path)]
            docker("stack", "deploy", "--resolve-image", "never", *files, self.name,
                   env={**os.environ, **env})
            return
        up = script("stack-up.sh", workers, env=env)
        assert up.returncode == 0, f"stack-up.sh: exit {up.returncode}: {up.stderr}"

    def scale(self, workers: int) -> None:
        docker("service", "scale", "--detach", f"{self.name}_worker={workers}")

    def leftovers(self) -> list:
        f = {"label": self._label()}
        return (self.client.services.list(filters=f) + self._containers(f)
                + self.client.networks.list(filters=f) + self.client.volumes.list(filters=f)
                + self.client.secrets.list(filters={"name": self.secret.name}))

    def remove(self) -> None:
        """scripts/stack-down.sh -v (`docker stack rm`, its containers waited for, the volume),
        then the secret, which is not the stack's (it is external); each wait is bounded. What
        the script left is removed here too, so that a failing script leaks nothing."""
        down = script("stack-down.sh", "-v", env={"PROCFLEET_STACK": self.name})
        f = {"label": self._label()}
        if down.returncode != 0:
            docker("stack", "rm", self.name, check=False)
        wait_until(lambda: not self._containers(f), REMOVE_TIMEOUT,
                   f"stack {self.name}'s containers to go")
        left = self.client.volumes.list(filters=f)

        def volumes_removed():
            for volume in self.client.volumes.list(filters=f):
                try:
                    volume.remove()
                except Exception:    # still in use for a moment after its container went
                    return False
            return True

        wait_until(volumes_removed, 30, f"stack {self.name}'s volumes to be removable")
        wait_until(lambda: not self.client.networks.list(filters=f), 30,
                   f"stack {self.name}'s network to go")
        self.secret.remove()
        assert down.returncode == 0, f"stack-down.sh: exit {down.returncode}: {down.stderr}"
        assert not left, f"stack-down.sh -v left {left}"


@pytest.fixture
def stack(docker_client, swarm, images):
    """Factory: `stack(workers=4, *overrides, **env)` deploys deploy/stack.yml (through
    scripts/stack-up.sh, or with override files through docker) with a new random key as its
    secret; every stack is removed afterwards, and nothing may be left."""
    made: list[Stack] = []

    def deploy(workers: int = 4, *overrides, **env) -> Stack:
        name = f"pfswarm{os.getpid()}x{next(_counter)}"
        secret = docker_client.secrets.create(name=f"{name}_authkey",
                                              data=secrets.token_urlsafe(24).encode())
        s = Stack(docker_client, name, secret)
        made.append(s)
        s.up(workers, env, *overrides)
        return s

    yield deploy
    for s in made:
        s.remove()
        assert not s.leftovers(), f"stack {s.name} left {s.leftovers()} behind"


@pytest.mark.docker
def test_the_docker_cli_takes_the_stack_file_as_written():
    # `docker stack config` is the CLI's own reading of a stack file, with no swarm needed: a
    # compose-only key (depends_on with a condition) or a bad value fails here.
    if shutil.which("docker") is None:
        unavailable("no docker CLI here")
    config = subprocess.run(
        ["docker", "stack", "config", "--compose-file", str(STACK_FILE)],
        capture_output=True, text=True, timeout=CLI_TIMEOUT,
        env={**os.environ, "PROCFLEET_AUTHKEY_SECRET": "pf-test-secret", "WORKERS": "3"})
    if config.returncode != 0 and "stack config" in config.stderr and "unknown" in config.stderr:
        unavailable(f"this docker CLI has no `docker stack config`: {config.stderr.strip()}")
    assert config.returncode == 0, config.stderr
    text = config.stdout
    assert "endpoint_mode: dnsrr" in text and "replicas: 3" in text
    assert "name: pf-test-secret" in text and "PROCFLEET_AUTHKEY_FILE: /run/secrets/authkey" in text
    assert "PROCFLEET_AUTHKEY:" not in text and "depends_on" not in text


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_stack_scaled_mid_batch_delivers_every_result_exactly_once(stack):
    n, sleep = 600, 0.1          # 60 task-seconds: about 15 s on 4 workers
    started = time.monotonic()
    s = stack(workers=4, PROCFLEET_DEMO=n, PROCFLEET_DEMO_SLEEP=sleep, PROCFLEET_WAIT_WORKERS=4)
    wait_until(lambda: len(s.results()) >= 60, 180, "60 results on 4 workers")
    first = time.monotonic()
    early = {r["worker"] for r in s.results()}
    s.scale(6)
    # a worker that was not there before the scale-up delivers
    wait_until(lambda: len({r["worker"] for r in s.results()} - early) >= 1
               and len({r["worker"] for r in s.results()}) >= 5, 120,
               "a result from a worker added by the scale-up")
    scaled_up = time.monotonic()
    s.scale(2)                   # four drain: unstarted tasks handed back, running ones finished
    master = s.master
    code = master.wait(timeout=300)["StatusCode"]
    stderr = master.logs(stdout=False, stderr=True).decode()
    assert code == 0, stderr[-3000:]
    records = s.results()
    assert_exactly_once(records, {str(i): i * i for i in range(n)})
    delivered = {r["worker"] for r in records}
    assert len(delivered) >= 5, f"only {delivered} delivered"
    figures = summary_of(stderr)
    # Each worker that had to wait for the master's name said so at most once.
    unresolved = {w.name: w.logs().decode().count("does not resolve")
                  for w in s.containers("worker")}
    assert all(count <= 1 for count in unresolved.values()), unresolved
    print(f"\nswarm: {len(records)} results exactly once from {len(delivered)} workers "
          f"(4, scaled to 6, then 2); first 60 results {first - started:.1f} s after deploy, "
          f"scale-up joined in {scaled_up - first:.1f} s, master exit 0 after "
          f"{time.monotonic() - started:.1f} s; requeued {figures.get('requeued')}, duplicates "
          f"dropped {figures.get('duplicates_dropped')}; "
          f"{sum(unresolved.values())} workers waited for the master's name")


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_workers_deployed_before_the_master_join_once_its_name_exists(stack, tmp_path):
    # The case: in a stack, workers may start before the master's DNS name exists.
    # Here they certainly do: the first deploy has no master task, the second (what
    # `make stack-up` runs, the stack file alone) adds it.
    n, workers = 40, 2
    no_master = tmp_path / "no-master.yml"
    no_master.write_text("services:\n  master:\n    deploy:\n      replicas: 0\n")
    env = {"PROCFLEET_DEMO": n, "PROCFLEET_DEMO_SLEEP": 0.05, "PROCFLEET_WAIT_WORKERS": workers}
    s = stack(workers, no_master, **env)
    unresolved = "its name 'master' does not resolve"

    def all_waiting():
        try:
            return sum(unresolved in w.logs().decode() for w in s.containers("worker")) == workers
        except docker_errors.APIError:   # a worker that exited is being removed meanwhile
            return False
    wait_until(all_waiting, 90, f"{workers} workers retrying the master's name")
    started = time.monotonic()
    s.up(workers, env)
    master = s.master
    code = master.wait(timeout=240)["StatusCode"]
    stderr = master.logs(stdout=False, stderr=True).decode()
    assert code == 0, stderr[-3000:]
    took = time.monotonic() - started
    records = s.results()
    assert_exactly_once(records, {str(i): i * i for i in range(n)})
    assert summary_of(stderr)["workers"] == workers
    logs = {w.name: w.logs().decode() for w in s.containers("worker")}
    assert len(logs) == workers, "a worker was started again: it did not wait for the name"
    for name, log in logs.items():
        assert log.count(unresolved) == 1, f"{name} logged the name {log.count(unresolved)} times"
        assert "connected to master master:50000" in log, log[-2000:]
    print(f"\nswarm, master deployed last: {workers} workers waited for its name, joined, and "
          f"{len(records)} results came exactly once; master exit 0 {took:.1f} s after its deploy")
