"""Micro-benchmark, not a test: a real master's CPU time per task, over real connections.

    python -m bench.micro_master_cpu [--python PY] [--tasks 200000] [--workers 4] [--runs 3]

Starts `PY -m procfleet.shared master --demo TASKS` and WORKERS separate worker processes (not
--local-workers, so that the master has no children), waits for the master with os.wait4 and
reports the master's own user+system CPU time per task, which a busy machine disturbs far less
than wall time, and the batch's tasks/s from its summary line. `--python` picks the
installation to measure (another checkout's venv, to compare two versions of the wire).
"""

import argparse
import os
import secrets
import sys
import tempfile
import time

from .procfleet import SERVING
from .procs import Child

from procfleet.master.batch import parse_summary

#: longest one batch may take
BATCH_LIMIT = 600.0
#: how often the master is checked for having exited (os.wait4 has no timeout)
EXIT_POLL = 0.05


def one_run(python: str, tasks: int, workers: int) -> tuple[float, float]:
    """(master CPU microseconds per task, tasks/s) of one batch."""
    env = {**os.environ, "PROCFLEET_AUTHKEY": secrets.token_hex(16)}
    cli = [python, "-m", "procfleet.shared"]
    with tempfile.TemporaryDirectory() as tmp:
        master = Child([*cli, "master", "--demo", str(tasks), "--bind", "127.0.0.1:0",
                        "--wait-workers", str(workers), "--results",
                        os.path.join(tmp, "results.jsonl")], env)
        fleet = []
        try:
            # --wait-workers holds the batch, so the master cannot exit before this line.
            _, serving = master.wait_for(SERVING, 60)
            fleet = [Child([*cli, "worker", "--master", f"127.0.0.1:{serving[1]}",
                            "--id", f"w{i}"], env) for i in range(workers)]
            # os.wait4, not Child.wait: the master's own rusage is the measurement. Nothing
            # else may reap it meanwhile (Child.wait_for would, through Popen.poll).
            deadline = time.monotonic() + BATCH_LIMIT
            while True:
                pid, status, usage = os.wait4(master.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the master did not finish within {BATCH_LIMIT:g} s")
                time.sleep(EXIT_POLL)
            for worker in fleet:
                worker.wait(30)
        finally:
            for child in (master, *fleet):
                child.kill()
    code = os.waitstatus_to_exitcode(status)
    summary = parse_summary(master.stderr)
    if code != 0 or not summary or summary.get("ok") != tasks:
        raise SystemExit(f"the batch failed (exit {code}):\n{master.tail(20)}")
    return (usage.ru_utime + usage.ru_stime) / tasks * 1e6, summary["tasks_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run(args.python, args.tasks, args.workers) for _ in range(args.runs)]
    cpu = sorted(r[0] for r in runs)
    rate = sorted(r[1] for r in runs)
    print(f"master: {cpu[len(cpu) // 2]:.2f} us CPU per task (median of {args.runs}; all: "
          f"{', '.join(f'{c:.2f}' for c in cpu)}); tasks/s median {rate[len(rate) // 2]:,.0f} "
          f"(all: {', '.join(f'{r:,.0f}' for r in rate)}) [{args.python}]")


if __name__ == "__main__":
    main()
