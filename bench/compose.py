"""The compose case: the repo's docker-compose.yml under a project name of its own, the master's
summary read from its container's logs, and `down -v` whatever happens.

The master writes its results to /var/lib/procfleet/results.jsonl on its volume (beside its
journal); they are copied out with `docker cp` and every id is counted. An override file only
points the services at other images when asked to.
"""

import json
import os
import secrets
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from procfleet.master.batch import parse_summary

from .procfleet import RunFailed, batch_timeout

IMAGES = ("procfleet-master:latest", "procfleet-worker:latest")
#: where the compose master keeps its results (docker-compose.yml: the `state` volume)
RESULTS = "/var/lib/procfleet/results.jsonl"
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
        self.workdir = workdir
        files = [str(repo / "docker-compose.yml")]
        if images:
            override = workdir / f"{self.project}.yml"
            override.write_text(override_file(tasks, images))
            files.append(str(override))
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
                        PROCFLEET_CONCURRENCY="1", PROCFLEET_WAIT_WORKERS=str(workers))
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
            out = self.workdir / f"{self.project}-results.jsonl"
            copied = subprocess.run(["docker", "cp", f"{master}:{RESULTS}", str(out)],
                                    capture_output=True, text=True,
                                    timeout=PROBE_TIMEOUT + tasks / 10_000)
            if copied.returncode != 0:
                raise RunFailed(f"cannot copy the results out: {copied.stderr.strip()[-300:]}")
            with out.open() as fh:
                ids = {json.loads(line)["id"] for line in fh if line.startswith("{")}
            out.unlink()
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


def override_file(tasks: int, images: tuple[str, str]) -> str:
    """The compose override that points both services at other images."""
    return (f"services:\n  master:\n    image: {images[0]}\n"
            f"  worker:\n    image: {images[1]}\n")


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
