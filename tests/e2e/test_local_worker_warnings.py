"""A local-workers batch is quiet: no Python warnings from the master, its workers or their
task processes (all of them write to the master's stderr)."""

from procs import assert_exactly_once, read_results

N = 200


def test_no_runtime_warning_from_local_workers_or_their_task_processes(spawn, tmp_path):
    out = tmp_path / "results.jsonl"
    # Two task processes per worker: each one used to print runpy's RuntimeWarning. A worker
    # starts them before it joins, and --wait-workers 2 makes both workers join.
    master = spawn("master", "--demo", str(N), "--local-workers", "2", "--wait-workers", "2",
                   "--bind", "127.0.0.1:0", "--results", str(out), "--timeout", "60",
                   env={"PROCFLEET_CONCURRENCY": "2", "PYTHONWARNINGS": "always::RuntimeWarning"})
    assert master.wait(60) == 0, master.stderr
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(N)})
    for i in (1, 2):            # the workers' own log lines reach this stderr
        master.wait_for(rf"worker local-\d+-{i}: connected to master")
    warnings = [line for line in master.stderr.splitlines() if "Warning" in line]
    assert not warnings, "\n".join(warnings)
