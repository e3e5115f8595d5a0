"""Master and worker on different Python versions (3.11 to 3.13) talk to each other."""

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from procs import assert_exactly_once, master_port, read_results

REPO = Path(__file__).resolve().parents[2]
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def interpreter(version: str) -> str | None:
    """An installed CPython `version` (e.g. '3.13'), from pyenv or PATH."""
    found = sorted(glob.glob(str(PYENV / f"{version}.*" / "bin" / "python")))
    if found:
        return found[-1]
    for name in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if os.path.exists(name):
            return name
    return None


@pytest.fixture(scope="module")
def venv_with(tmp_path_factory):
    """Factory: a venv of Python `version` with procfleet's shared package and one side."""
    made = {}

    def make(version: str, side: str) -> str:
        key = (version, side)
        if key not in made:
            python = interpreter(version)
            if python is None:
                pytest.skip(f"no Python {version} on this machine")
            root = tmp_path_factory.mktemp(f"py{version}-{side}")
            subprocess.run([python, "-m", "venv", str(root)], check=True)
            # Installed from copies: pip builds a local project in place, and would leave
            # build/ folders in the checkout.
            sources = [shutil.copytree(REPO / name, root / "src" / name,
                                       ignore=shutil.ignore_patterns("build", "*.egg-info"))
                       for name in ("shared", side)]
            subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "-q",
                            *map(str, sources)], check=True, timeout=600)
            made[key] = str(root / "bin" / "python")
        return made[key]

    return make


@pytest.mark.parametrize("master_version,worker_version", [("3.11", "3.13"), ("3.13", "3.12")])
def test_master_and_worker_on_different_pythons(spawn, venv_with, tmp_path, master_version,
                                                worker_version):
    master_py = sys.executable if master_version == "3.11" and sys.version_info[:2] == (3, 11) \
        else venv_with(master_version, "master")
    worker_py = venv_with(worker_version, "worker")
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--demo", "200", "--bind", "127.0.0.1:0", "--results", str(out),
                   python=master_py)
    address = f"127.0.0.1:{master_port(master)}"
    worker = spawn("worker", "--master", address, "--concurrency", "2", python=worker_py)
    assert master.wait(60) == 0, master.stderr
    assert worker.wait(30) == 0, worker.stderr
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(200)})
    _, m = master.wait_for(r"joined from .* \(python (3\.\d+)")
    assert m.group(1) == worker_version
