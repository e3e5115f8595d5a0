"""The images themselves: each carries only its side, runs as non-root, holds no key."""

import json

import pytest

#: what each image is for, as its stage of the Dockerfile sets it
SIDES = {
    "procfleet-master:latest": {"cmd": ["master"], "ports": {"50000/tcp"}, "healthcheck": True},
    "procfleet-worker:latest": {"cmd": ["worker"], "ports": set(), "healthcheck": False},
}
#: procfleet's distributions in an image, and what its build would leave behind without cleaning
#: up (run as root, to see root's pip cache)
INSPECT = """
import importlib.metadata as m, json, os
print(json.dumps({
    "dists": sorted(d.metadata["Name"] for d in m.distributions()
                    if d.metadata["Name"].startswith("procfleet")),
    "leftovers": [p for p in ("/tmp/procfleet", "/root/.cache/pip") if os.path.exists(p)],
}))
"""


def run(client, image, *command, entrypoint=None, user=None):
    container = client.containers.run(image, list(command), entrypoint=entrypoint, detach=True,
                                      user=user, environment={"PROCFLEET_AUTHKEY": "k" * 20})
    try:
        code = container.wait(timeout=60)["StatusCode"]
        return code, container.logs().decode()
    finally:
        container.remove(force=True)


@pytest.mark.docker
@pytest.mark.parametrize("image,has,lacks", [
    ("procfleet-master:latest", "master", "worker"),
    ("procfleet-worker:latest", "worker", "master"),
])
def test_each_image_carries_only_its_side(docker_client, images, image, has, lacks):
    code, _ = run(docker_client, image, "-c", f"import procfleet.{has}",
                  entrypoint=["python3"])
    assert code == 0
    code, logs = run(docker_client, image, "-c", INSPECT, entrypoint=["python3"], user="root")
    assert code == 0, logs
    found = json.loads(logs)
    # Not even the other side's metadata, and none of the build's sources, wheels or pip cache.
    assert found == {"dists": sorted(["procfleet-shared", f"procfleet-{has}"]), "leftovers": []}
    code, _ = run(docker_client, image, "-c", f"import procfleet.{lacks}",
                  entrypoint=["python3"])
    assert code != 0
    code, logs = run(docker_client, image, lacks)
    assert code == 2
    assert f"'procfleet {lacks}' is not installed here" in logs and "Traceback" not in logs


@pytest.mark.docker
@pytest.mark.parametrize("image", ["procfleet-master:latest", "procfleet-worker:latest"])
def test_image_runs_as_non_root_and_holds_no_key(docker_client, images, image):
    config = docker_client.images.get(image).attrs["Config"]
    assert config["User"] and config["User"].split(":")[0] not in ("root", "0")
    assert not [e for e in config.get("Env") or [] if e.startswith("PROCFLEET_AUTHKEY")]
    assert config["Entrypoint"] == ["procfleet"]
    code, logs = run(docker_client, image, "-c", "import os; print(os.getuid())",
                     entrypoint=["python3"])
    assert code == 0 and logs.strip() != "0"


@pytest.mark.docker
def test_master_image_health_check_is_a_real_ping(docker_client, images):
    test = docker_client.images.get("procfleet-master:latest").attrs["Config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD" and test[1:3] == ["procfleet", "ping"]


@pytest.mark.docker
@pytest.mark.parametrize("image", sorted(SIDES))
def test_each_image_has_its_own_stage_settings(docker_client, images, image):
    """Both images come from one Dockerfile: what one stage sets must not leak into the other
    (the worker has no master health check or port) and what both need is in each."""
    config = docker_client.images.get(image).attrs["Config"]
    side = SIDES[image]
    assert config["Cmd"] == side["cmd"]
    assert set(config.get("ExposedPorts") or {}) == side["ports"]
    assert bool(config.get("Healthcheck")) == side["healthcheck"]
    assert config["StopSignal"] == "SIGTERM"
    assert "PYTHONUNBUFFERED=1" in config["Env"]
    # Build-time pip settings stay out of the environment a derived image inherits.
    assert not [e for e in config["Env"] if e.startswith("PIP_")]
