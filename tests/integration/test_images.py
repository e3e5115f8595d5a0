"""The images themselves: each carries only its side, runs as non-root, holds no key."""

import pytest


def run(client, image, *command, entrypoint=None):
    container = client.containers.run(image, list(command), entrypoint=entrypoint, detach=True,
                                      environment={"PROCFLEET_AUTHKEY": "k" * 20})
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
