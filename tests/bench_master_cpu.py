"""Micro-benchmark, not a test: a real master's CPU time per task, over real connections.

    python tests/bench_master_cpu.py [--python PY] [--tasks 200000] [--workers 4] [--runs 3]

Starts `PY -m procfleet.shared master --demo TASKS` and WORKERS separate worker processes (not
--local-workers, so that the master has no children), waits for the master with os.wait4 and
reports the master's own user+system CPU time per task, which a busy machine disturbs far less
than wall time, and the batch's tasks/s from its summary line. `--python` picks the
installation to measure (another checkout's venv, to compare two versions of the wire).
"""

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time

from procfleet.master.batch import parse_summary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_run(python: str, tasks: int, workers: int) -> tuple[float, float]:
    """(master CPU microseconds per task, tasks/s) of one batch."""
    env = {**os.environ, "PROCFLEET_AUTHKEY": secrets.token_hex(16)}
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "master.log")
        with open(log_path, "w") as log:
            master = subprocess.Popen(
                [python, "-m", "procfleet.shared", "master", "--demo", str(tasks), "--bind",
                 f"127.0.0.1:{port}", "--wait-workers", str(workers), "--results",
                 os.path.join(tmp, "results.jsonl")], env=env, stdout=log, stderr=log)
        fleet = [subprocess.Popen([python, "-m", "procfleet.shared", "worker", "--master",
                                   f"127.0.0.1:{port}", "--id", f"w{i}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(workers)]
        deadline = time.monotonic() + 600
        try:
            while True:
                pid, status, usage = os.wait4(master.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("the master did not finish within 600 s")
                time.sleep(0.05)
        finally:
            for proc in fleet:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        master.returncode = os.waitstatus_to_exitcode(status)
        text = open(log_path).read()
    summary = parse_summary(text)
    if master.returncode != 0 or not summary or summary["ok"] != summary["tasks"]:
        raise SystemExit(f"the batch failed (exit {master.returncode}):\n{text[-2000:]}")
    return (usage.ru_utime + usage.ru_stime) / tasks * 1e6, float(summary["tasks_per_s"])


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
