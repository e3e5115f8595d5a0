"""The images run as uid 10001: a key file or a data folder mounted from the host that this
user may not use is refused with one line naming uid 10001, the owner, and the fix."""

import os

import pytest

#: the images under test: `make images`' own, unless named as deploy/stack.yml takes them
MASTER_IMAGE = os.environ.get("PROCFLEET_MASTER_IMAGE") or "procfleet-master:latest"
WORKER_IMAGE = os.environ.get("PROCFLEET_WORKER_IMAGE") or "procfleet-worker:latest"
KEY_PATH = "/run/secrets/authkey"
DATA = "/var/lib/procfleet"


def run(client, image, environment, volumes, *command):
    container = client.containers.run(image, list(command), detach=True,
                                      environment=environment, volumes=volumes)
    try:
        code = container.wait(timeout=60)["StatusCode"]
        return code, container.logs().decode()
    finally:
        container.remove(force=True)


@pytest.fixture
def not_uid_10001():
    if os.geteuid() == 10001:
        pytest.skip("this test runs as uid 10001 itself: its files are the images' user's")


@pytest.mark.docker
def test_unreadable_key_file_names_uid_10001_and_the_fix(docker_client, images, tmp_path,
                                                          not_uid_10001):
    key = tmp_path / "authkey"
    key.write_text("k" * 24)
    key.chmod(0o600)
    mount = {str(key): {"bind": KEY_PATH, "mode": "ro"}}
    code, logs = run(docker_client, WORKER_IMAGE,
                     {"PROCFLEET_AUTHKEY_FILE": KEY_PATH}, mount)
    assert code == 2, logs
    assert (f"cannot read PROCFLEET_AUTHKEY_FILE='{KEY_PATH}': Permission denied; this process "
            f"runs as uid 10001 and {KEY_PATH} belongs to uid {os.geteuid()}") in logs
    assert "mode -rw-------: make it readable by uid 10001" in logs
    assert "Traceback" not in logs
    # the fix it names works: the key is read, and the worker goes on to look for its master
    key.chmod(0o644)
    code, logs = run(docker_client, WORKER_IMAGE,
                     {"PROCFLEET_AUTHKEY_FILE": KEY_PATH, "PROCFLEET_CONNECT_TIMEOUT": "0"}, mount)
    assert code == 3 and "not reachable" in logs, logs


@pytest.mark.docker
def test_unwritable_bind_mounted_data_folder_names_uid_10001_and_the_fix(
        docker_client, images, tmp_path, not_uid_10001):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    code, logs = run(docker_client, MASTER_IMAGE,
                     {"PROCFLEET_AUTHKEY": "k" * 24, "PROCFLEET_DEMO": "1",
                      "PROCFLEET_RESULTS": f"{DATA}/results.jsonl",
                      "PROCFLEET_JOURNAL": f"{DATA}/journal.db"},
                     {str(data): {"bind": DATA, "mode": "rw"}})
    assert code == 2, logs
    assert f"this process runs as uid 10001 and {DATA} belongs to uid {os.geteuid()}" in logs
    assert "make it writable by uid 10001 (`chown 10001` the folder; a bind mount keeps" in logs
    assert "Traceback" not in logs
