"""Compose fixtures: the real docker-compose.yml, one compose project per test, torn down after.

pytest-docker runs `up`/`down`; the Docker SDK finds, kills and reads containers. Without a
usable Docker these tests skip on a laptop and fail in CI (CI=true).
"""

import io
import itertools
import json
import os
import secrets
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from procs import container_results, unavailable
from pytest_docker.plugin import get_docker_services

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
IMAGES = ("procfleet-master:latest", "procfleet-worker:latest")
_counter = itertools.count(1)


def docker_unusable(reason: str):
    unavailable(f"Docker is not usable here: {reason}")


@pytest.fixture(scope="session")
def docker_client():
    try:
        import docker
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # any failure to reach the engine means "no Docker"
        docker_unusable(f"{type(exc).__name__}: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def compose_command(docker_client) -> str:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return "docker compose"
    if shutil.which("docker-compose"):
        return "docker-compose"
    docker_unusable("neither `docker compose` nor `docker-compose` is installed")


@pytest.fixture(scope="session")
def images(docker_client):
    """The master and worker images, built by `make images` (offline-capable) when missing."""
    missing = [name for name in IMAGES if not docker_client.images.list(name=name)]
    if missing or os.environ.get("PROCFLEET_REBUILD_IMAGES"):
        subprocess.run(["make", "-C", str(REPO), "images"], check=True, timeout=1800)
    return IMAGES


class Cluster:
    """One compose project: its containers through the Docker SDK."""

    def __init__(self, client, project: str, services) -> None:
        self.client = client
        self.project = project
        self.services = services

    def containers(self, service: str | None = None, all: bool = True):
        labels = [f"com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return self.client.containers.list(all=all, filters={"label": labels})

    @property
    def master(self):
        [master] = self.containers("master")
        return master

    def workers(self):
        return self.containers("worker", all=False)

    @property
    def network(self) -> str:
        return next(iter(self.master.attrs["NetworkSettings"]["Networks"]))

    def master_stdout(self) -> str:
        return self.master.logs(stdout=True, stderr=False).decode()

    def results(self, path: str = "/var/lib/procfleet/results.jsonl") -> list[dict]:
        """The master's results file so far (complete lines only), read out of its container."""
        return container_results(self.master, path)

    def summary(self, path: str = "/var/lib/procfleet/summary.json") -> dict | None:
        """The master's --summary-json file (docker-compose.yml sets it), or None before the
        batch ended."""
        try:
            chunks, _ = self.master.get_archive(path)
        except Exception:     # docker.errors.NotFound
            return None
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            return json.loads(tar.extractfile(tar.getmembers()[0]).read().decode())

    def master_stderr(self) -> str:
        return self.master.logs(stdout=False, stderr=True).decode()


@pytest.fixture
def cluster(docker_client, compose_command, images, monkeypatch):
    """Factory: `cluster(workers=4, **env)` starts the compose file detached and returns it."""
    started = []

    def start(workers: int = 4, **env):
        project = f"pftest{os.getpid()}x{next(_counter)}"
        key = secrets.token_urlsafe(24)
        monkeypatch.setenv("PROCFLEET_AUTHKEY", key)
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
        ctx = get_docker_services(compose_command, str(COMPOSE_FILE), project,
                                  [f"up -d --scale worker={workers}"],
                                  ["down -v --remove-orphans -t 5"])
        services = ctx.__enter__()
        started.append((ctx, project))
        c = Cluster(docker_client, project, services)
        c.key = key
        return c

    yield start
    for ctx, project in started:
        ctx.__exit__(None, None, None)
        label = f"com.docker.compose.project={project}"
        leftovers = (docker_client.containers.list(all=True, filters={"label": label})
                     + docker_client.networks.list(filters={"label": label})
                     + docker_client.volumes.list(filters={"label": label}))
        assert not leftovers, f"compose project {project} left {leftovers} behind"
