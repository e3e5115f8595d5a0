"""Images to other hosts, for real: `make push` to a registry this test starts (Debian's
docker-registry, on loopback), pulled back and run as a cluster; `make save` and load."""

import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from procs import assert_exactly_once, free_port, unavailable

REPO = Path(__file__).resolve().parents[2]
NAMES = ("procfleet-master", "procfleet-worker")
#: the registry's start, a push or pull of both images, a batch
START_TIMEOUT = 30
PUSH_TIMEOUT = 600
BATCH_TIMEOUT = 120
_counter = itertools.count(1)

REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def unique_tag() -> str:
    """A tag of this test's own: another user's `latest` or version tag is never touched."""
    return f"test{os.getpid()}x{next(_counter)}"


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def registry(tmp_path, docker_client):
    """A real registry on 127.0.0.1 (Docker speaks plain HTTP to loopback registries), with its
    storage under tmp_path; stopped after the test. Yields its host:port."""
    binary = shutil.which("docker-registry")
    if not binary:
        unavailable("Debian's docker-registry is not installed (apt-get install docker-registry;"
                    " .ci/run does it)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(REGISTRY_CONFIG.format(storage=tmp_path / "storage", port=port))
    log = (tmp_path / "registry.log").open("w")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                get_json(f"http://{address}/v2/")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    unavailable(f"docker-registry did not start on {address}: "
                                f"{(tmp_path / 'registry.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def make(*args: str, timeout: float = PUSH_TIMEOUT) -> subprocess.CompletedProcess:
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"make {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


def image_id(client, ref: str) -> str | None:
    try:
        return client.images.get(ref).id
    except Exception:    # docker.errors.ImageNotFound
        return None


def untag(client, *refs: str) -> None:
    for ref in refs:
        if image_id(client, ref):
            client.images.remove(ref)


def key_file(tmp_path: Path) -> Path:
    """The key as a read-only file the images' uid 10001 can read through its group, as the
    Kubernetes Secret is mounted (mode 0440, fsGroup 10001); world-readable if this user cannot
    give the file that group."""
    path = tmp_path / "authkey"
    path.write_text(f"{os.urandom(16).hex()}\n")
    try:
        os.chown(path, -1, 10001)
        path.chmod(0o440)
    except PermissionError:
        path.chmod(0o444)
    return path


def run_batch(client, master_image: str, worker_image: str, tmp_path: Path, n: int = 40,
              workers: int = 2) -> list[dict]:
    """A demo batch of `n` tasks: a master and `workers` workers from the given images on a
    network of their own, locked down as deploy/kubernetes/ runs them (read-only root with a
    /tmp, no capabilities, no privilege escalation, the key as a file); its result lines."""
    key = key_file(tmp_path)
    name = f"pfreg{os.getpid()}x{next(_counter)}"
    network = client.networks.create(name)
    locked = dict(detach=True, network=name, read_only=True, tmpfs={"/tmp": ""},
                  cap_drop=["ALL"], security_opt=["no-new-privileges"],
                  volumes={str(key): {"bind": "/run/secrets/procfleet/authkey", "mode": "ro"}},
                  labels={"procfleet.test": name})
    secret = {"PROCFLEET_AUTHKEY_FILE": "/run/secrets/procfleet/authkey"}
    containers = []
    try:
        # On a network of its own a container is found by its name.
        master = client.containers.run(
            master_image, ["master"], name=f"{name}-master",
            environment={**secret, "PROCFLEET_DEMO": str(n), "PROCFLEET_DEMO_SLEEP": "0.02",
                         "PROCFLEET_WAIT_WORKERS": str(workers)}, **locked)
        containers.append(master)
        for i in range(workers):
            containers.append(client.containers.run(
                worker_image, ["worker"], name=f"{name}-w{i}",
                environment={**secret, "PROCFLEET_MASTER": f"{name}-master:50000"}, **locked))
        code = master.wait(timeout=BATCH_TIMEOUT)["StatusCode"]
        stderr = master.logs(stdout=False, stderr=True).decode()
        assert code == 0, stderr
        for worker in containers[1:]:
            assert worker.wait(timeout=30)["StatusCode"] == 0, worker.logs().decode()
        stdout = master.logs(stdout=True, stderr=False).decode()
        return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    finally:
        for c in containers:
            c.remove(force=True)
        network.remove()
        leftovers = client.containers.list(all=True, filters={"label": f"procfleet.test={name}"})
        assert not leftovers, leftovers


@pytest.mark.docker
def test_push_to_a_registry_then_pull_and_run_a_cluster_from_it(docker_client, images, registry,
                                                               tmp_path):
    tag = unique_tag()
    version = subprocess.run(["bash", "-c", ". scripts/lib.sh; package_version"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version
    local = {name: image_id(docker_client, f"{name}:latest") for name in NAMES}
    pulled = [f"{registry}/{name}:{tag}" for name in NAMES]
    try:
        make("push", f"REGISTRY={registry}", f"TAG={tag}")

        # What the registry holds, by its own API: both images, as the tag and as latest.
        catalog = get_json(f"http://{registry}/v2/_catalog")["repositories"]
        assert sorted(catalog) == sorted(NAMES)
        for name in NAMES:
            assert sorted(get_json(f"http://{registry}/v2/{name}/tags/list")["tags"]) == \
                sorted([tag, "latest"])
        # push.sh leaves no registry-named tag behind: the pull below really fetches.
        assert not [r for r in pulled if image_id(docker_client, r)]

        for ref in pulled:
            docker_client.images.pull(ref)
        assert {name: image_id(docker_client, f"{registry}/{name}:{tag}") for name in NAMES} \
            == local

        # A master and workers from the pulled images finish a batch.
        n = 40
        records = run_batch(docker_client, pulled[0], pulled[1], tmp_path, n=n)
        assert_exactly_once(records, {str(i): i * i for i in range(n)})
        print(f"\npushed {tag} and latest to {registry}, pulled back, {n} results from "
              f"{len({r['worker'] for r in records})} workers of the pulled image")
    finally:
        untag(docker_client, *pulled)


@pytest.mark.docker
def test_push_refuses_a_url_and_says_why():
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "push",
                           "REGISTRY=http://127.0.0.1:5000"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert "without a scheme" in done.stderr


@pytest.mark.docker
def test_save_and_load_bring_the_tagged_images_back(docker_client, images, tmp_path):
    tag = unique_tag()
    refs = [f"{name}:{tag}" for name in NAMES]
    local = {name: image_id(docker_client, f"{name}:latest") for name in NAMES}
    tarball = tmp_path / "images.tar.gz"
    try:
        make("save", f"TAG={tag}", f"FILE={tarball}")
        assert tarball.stat().st_size > 10_000_000
        untag(docker_client, *refs)
        assert not [r for r in refs if image_id(docker_client, r)]

        # The script behind `make load`, leaving `latest` alone: another user of this engine
        # may have built a newer one meanwhile.
        loaded = subprocess.run([str(REPO / "scripts" / "load.sh"), "--no-latest", str(tarball)],
                                capture_output=True, text=True, timeout=PUSH_TIMEOUT)
        assert loaded.returncode == 0, loaded.stderr
        assert {name: image_id(docker_client, f"{name}:{tag}") for name in NAMES} == local
        for ref in refs:
            assert f"loaded {ref}" in loaded.stderr
    finally:
        untag(docker_client, *refs)
