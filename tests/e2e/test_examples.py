"""examples/: the blog recipe's master run as a user runs it, a real `python examples/...`
subprocess, with its own local workers and with `procfleet worker`s joining it on loopback."""

import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.procs import Child
from procs import free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BLOG_MASTER = EXAMPLES / "blog_master.py"
#: every run of an example ends within this long, or the test fails
RUN_TIMEOUT = 60.0


@pytest.fixture
def run_example(tmp_path):
    """Factory: start `python examples/blog_master.py ARGS` from the repo root, its stdout
    kept in a file; killed (with its local workers) at teardown if still running."""
    started: list[Child] = []

    def start(*args, env: dict[str, str]) -> tuple[Child, Path]:
        out = tmp_path / f"blog_master-{len(started)}.out"
        with out.open("w") as stdout:
            child = Child([sys.executable, str(BLOG_MASTER), *map(str, args)], env, cwd=REPO,
                          stdout=stdout, name="blog_master.py")
        started.append(child)
        return child, out

    yield start
    for child in started:
        child.kill()


def check_recipe_output(text: str, n: int) -> None:
    """What the recipe's master prints: n "put task N" lines (0 <= N <= 66), "get results...",
    one "result:N*N=<N*N>" per task put (in any order: they are printed as they arrive),
    "manager shutdown"; nothing else."""
    lines = text.splitlines()
    assert len(lines) == 2 * n + 2, text
    puts = [re.fullmatch(r"put task (\d+)", line) for line in lines[:n]]
    assert all(puts), text
    numbers = [int(m.group(1)) for m in puts]
    assert all(0 <= number <= 66 for number in numbers), numbers
    assert lines[n] == "get results..."
    assert Counter(lines[n + 1:2 * n + 1]) == Counter(f"result:{k}*{k}={k * k}" for k in numbers)
    assert lines[-1] == "manager shutdown"


def test_blog_master_with_local_workers_prints_every_result_once(run_example):
    n = 8
    # no key in the environment: loopback and local workers only, so a random key serves
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCFLEET_")}
    master, out = run_example("-n", n, "--seed", 12, "--seconds", "0.05", env=env)
    assert master.wait(RUN_TIMEOUT) == 0, master.stderr
    check_recipe_output(out.read_text(), n)
    assert "Traceback" not in master.stderr, master.stderr


def test_blog_master_with_workers_joining_from_elsewhere(run_example, spawn, authkey_env):
    n, port = 12, free_port()
    master, out = run_example("-n", n, "--seed", 12, "--seconds", "0.05",
                              "--bind", f"127.0.0.1:{port}", "--local-workers", "0",
                              env=dict(os.environ))
    master.wait_for(rf"waiting for workers: .*:{port} --import blog_tasks", RUN_TIMEOUT)
    address = f"127.0.0.1:{port}"
    # the two ways the example's README gives: from examples/, and PYTHONPATH=examples
    workers = [spawn("worker", "--master", address, "--import", "blog_tasks", "--id", "in-dir",
                     cwd=EXAMPLES),
               spawn("worker", "--master", address, "--import", "blog_tasks", "--id", "on-path",
                     cwd=REPO, env={"PYTHONPATH": str(EXAMPLES)})]
    for worker in workers:
        worker.wait_for(r"connected to master", RUN_TIMEOUT)
    assert master.wait(RUN_TIMEOUT) == 0, master.stderr
    check_recipe_output(out.read_text(), n)
    # the workers leave once the master's `with` block ends, having run each task once
    ran = 0
    for worker in workers:
        assert worker.wait(RUN_TIMEOUT) == 0, worker.stderr
        _, m = worker.wait_for(r"after (\d+) tasks here; exiting", 1)
        ran += int(m.group(1))
    assert ran == n
