"""A master name that does not resolve yet, as orchestrators make it: retried within
--connect-timeout and logged once; a name that never appears is exit 3 naming it.

The late name is real: the worker runs in a mount namespace of its own (`unshare --mount`) whose
/etc/hosts is a file of this test's, which gains the name mid-retry. glibc reads /etc/hosts
afresh at each lookup, as it would ask DNS afresh.
"""

import subprocess
import sys
import time

from bench.procs import Child
from procs import assert_exactly_once, master_port, read_results, unavailable, write_tasks

NEVER = "nosuchhost.invalid"
LATE = "pf-late-master"
#: the line a worker logs once while the name does not resolve
UNRESOLVED = r"its name '{}' does not resolve .*; retrying for up to"


def test_a_name_that_never_resolves_ends_in_exit_3_naming_it(spawn):
    timeout = 2.0
    started = time.monotonic()
    worker = spawn("worker", "--master", f"{NEVER}:50000", "--connect-timeout", timeout)
    assert worker.wait(timeout + 15) == 3, worker.stderr
    took = time.monotonic() - started
    assert timeout <= took < timeout + 10, f"exit 3 after {took:.1f} s"
    retried = [line for line in worker.stderr.splitlines() if "retrying for up to" in line]
    assert len(retried) == 1 and f"'{NEVER}'" in retried[0], worker.stderr
    last = worker.last_line()
    assert last.startswith("procfleet: error: ") and f"'{NEVER}' does not resolve" in last
    assert "gave up after 2 s" in last and "check the name in --master" in last
    print(f"\nnever-resolving name: exit 3 after {took:.2f} s; "
          f"{last.split('and ')[1].split(' attempts')[0]} attempts")


def test_submit_to_a_name_that_never_resolves_is_exit_3_naming_it(spawn, tmp_path):
    tasks = write_tasks(tmp_path / "t.jsonl", [{"id": 1, "task": "square", "args": [1]}])
    client = spawn("submit", tasks, "--master", f"{NEVER}:50000", "--connect-timeout", "0.5")
    assert client.wait(15) == 3, client.stderr
    assert f"'{NEVER}' does not resolve" in client.last_line()


def test_a_worker_started_before_its_masters_name_exists_joins_once_it_does(spawn, tmp_path):
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        unavailable("cannot make a mount namespace (`unshare --mount` needs root)")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    n = 30
    results = tmp_path / "results.jsonl"
    master = spawn("master", "--demo", n, "--bind", "127.0.0.1:0", "--results", results)
    port = master_port(master)
    # The mount is private to the worker's namespace (unshare's default propagation).
    worker = Child(["unshare", "--mount", "sh", "-c",
                    'mount --bind "$1" /etc/hosts && shift && exec "$@"', "sh", str(hosts),
                    sys.executable, "-m", "procfleet.shared", "worker",
                    "--master", f"{LATE}:{port}", "--connect-timeout", "30", "--id", "late"],
                   name="procfleet worker (own /etc/hosts)")
    try:
        worker.wait_for(UNRESOLVED.format(LATE), 20)
        time.sleep(1.0)                 # several attempts meanwhile (backoff from 0.1 s)
        with open(hosts, "a") as fh:    # the same file, not a new one: the bind mount holds it
            fh.write(f"127.0.0.1 {LATE}\n")
        appeared = time.monotonic()
        connected, _ = worker.wait_for(r"connected to master", 15)
        assert master.wait(30) == 0, master.stderr
        assert worker.wait(15) == 0, worker.stderr
    finally:
        worker.kill()
    assert_exactly_once(read_results(results), {str(i): i * i for i in range(n)})
    assert len([line for line in worker.stderr.splitlines()
                if "does not resolve" in line]) == 1, worker.stderr
    # connected at the next retry: the backoff is at most a few tenths of a second by then
    assert connected - appeared < 5.0
    print(f"\nlate name: joined {connected - appeared:.2f} s after it appeared; "
          f"{n} results exactly once")
