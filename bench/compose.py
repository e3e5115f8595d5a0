"""The compose case: the repo's docker-compose.yml under a project name of its own, the master's
summary read from its container's logs, and `down -v` whatever happens.

The demo master writes its results to stdout, so they live in the container's log; a daemon that
rotates logs (`log-opts` max-size/max-file) drops the oldest lines of a large batch. An override
file gives the master's log room for the whole batch, so every id can be counted; it changes
nothing else.
"""

import json
import os
import secrets
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from .procfleet import RunFailed, batch_timeout
from .stats import parse_summary

IMAGES = ("procfleet-master:latest", "procfleet-worker:latest")
#: room for the master's log: ~100 bytes of result and ~80 of json-file framing per task
LOG_BYTES_PER_TASK = 400
#: bounds for the docker commands that are not the batch itself
UP_TIMEOUT = 180.0
DOWN_TIMEOUT = 120.0
PROBE_TIMEOUT = 30.0

_projects: set[tuple[tuple[str, ...], str]] = set()


def compose_command() -> list[str] | None:
    """$COMPOSE (the Makefile's choice), else `docker compose` (v2), else docker-compose (v1)."""
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    if shutil.which("docker") and _ok(["docker", "compose", "version"]):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _ok(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def unusable_reason(images: tuple[str, ...]) -> str | None:
    """Why the compose case cannot run here, or None when it can."""
    if not shutil.which("docker"):
        return "docker is not installed"
    if not _ok(["docker", "info"]):
        return "the Docker engine is not usable (docker info failed)"
    if compose_command() is None:
        return "neither `docker compose` nor docker-compose is installed"
    missing = [image for image in images if not _ok(["docker", "image", "inspect", image])]
    if missing:
        return f"image(s) {', '.join(missing)} missing: run `make images`"
    return None


class ComposeCluster:
    """The real compose file, a unique project name, extra -f files (e.g. other images)."""

    def __init__(self, repo: Path, env: dict[str, str], workdir: Path, tasks: int,
                 images: tuple[str, str] | None = None) -> None:
        self.compose = compose_command() or ["docker-compose"]
        self.project = f"procfleet-bench-{os.getpid()}-{secrets.token_hex(3)}"
        override = workdir / f"{self.project}.yml"
        override.write_text(override_file(tasks, images))
        files = [str(repo / "docker-compose.yml"), str(override)]
        self.base = [*self.compose, "-p", self.project, *(a for f in files for a in ("-f", f))]
        self.env = env

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([*self.base, *args], env=self.env, capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"`compose {' '.join(args)}` did not finish in {timeout:g} s") from None

    def run_demo(self, tasks: int, workers: int) -> dict[str, float]:
        """PROCFLEET_DEMO=tasks with `workers` worker containers; the master's summary."""
        self.env = dict(self.env, PROCFLEET_DEMO=str(tasks), PROCFLEET_DEMO_SLEEP="0",
                        PROCFLEET_CONCURRENCY="1")
        _projects.add((tuple(self.base), self.project))
        try:
            # Detached: attached, compose would print all result lines itself and steal CPU.
            up = self._run(["up", "-d", "--no-build", "--scale", f"worker={workers}"], UP_TIMEOUT)
            if up.returncode != 0:
                raise RunFailed(f"compose up exited {up.returncode}: {up.stderr.strip()[-600:]}")
            ps = self._run(["ps", "-q", "master"], PROBE_TIMEOUT)
            master = ps.stdout.split()[0] if ps.stdout.split() else None
            if master is None:
                raise RunFailed("compose up left no master container")
            timeout = batch_timeout(tasks)
            try:
                waited = subprocess.run(["docker", "wait", master], capture_output=True, text=True,
                                        timeout=timeout)
            except subprocess.TimeoutExpired:
                raise RunFailed(f"the master container ran over {timeout:g} s") from None
            code = waited.stdout.strip()
            logs = subprocess.run(["docker", "logs", master], capture_output=True, text=True,
                                  timeout=PROBE_TIMEOUT + tasks / 10_000)
            summary = parse_summary(logs.stderr)
            if summary is None:
                raise RunFailed(f"master container exited {code} without a summary line: "
                                + logs.stderr.strip()[-600:])
            if code != "0" or summary.get("ok") != tasks:
                raise RunFailed(f"master container exited {code}: " + " ".join(
                    f"{k}={v:g}" for k, v in summary.items()))
            ids = {json.loads(line)["id"] for line in logs.stdout.splitlines()
                   if line.startswith("{")}
            if len(ids) != tasks:
                raise RunFailed(f"master container's results: {len(ids)} distinct ids, "
                                f"expected {tasks}")
            return summary
        finally:
            self.down()

    def down(self) -> None:
        try:
            self._run(["down", "-v", "--remove-orphans", "-t", "5"], DOWN_TIMEOUT)
        finally:
            _projects.discard((tuple(self.base), self.project))


def override_file(tasks: int, images: tuple[str, str] | None) -> str:
    """The compose override: a master log that keeps every result line, and other images."""
    size_mb = max(100, tasks * LOG_BYTES_PER_TASK // 1_000_000)
    lines = ["services:", "  master:",
             "    logging:", "      driver: json-file",
             f'      options: {{max-size: "{size_mb}m", max-file: "1"}}']
    if images:
        lines.insert(2, f"    image: {images[0]}")
        lines += ["  worker:", f"    image: {images[1]}"]
    return "\n".join(lines) + "\n"


def down_all() -> None:
    """`down -v` every project this process brought up and has not removed yet."""
    for base, _project in list(_projects):
        subprocess.run([*base, "down", "-v", "--remove-orphans", "-t", "1"], capture_output=True,
                       timeout=DOWN_TIMEOUT, env=dict(os.environ, PROCFLEET_AUTHKEY="x" * 16))
        _projects.discard((base, _project))


def wait_gone(project: str, timeout: float = 10.0) -> list[str]:
    """Containers still labelled with the project after `down` (should be none)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["docker", "ps", "-aq", "--filter",
                              f"label=com.docker.compose.project={project}"],
                             capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        left = out.stdout.split()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)
