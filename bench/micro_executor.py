"""Micro-benchmark, not a test: tiny `square` tasks per second through one Executor.

    python -m bench.micro_executor [--tasks 200000] [--concurrency 1 4] [--timeout 60]

Times from submit() to the last outcome collected, the way the worker loop uses the executor
(one submit per lease, collect() on each wakeup); child start-up is done before the clock starts.
Also prints the CPU time per task of this process (all its threads) and of the task processes
(from /proc, Linux), which a busy machine disturbs far less than the wall-clock rate.
"""

import argparse
import multiprocessing
import os
import threading
import time
from pathlib import Path

from procfleet.shared.protocol import Task
from procfleet.shared.tasks import registry
from procfleet.worker.executor import Executor

#: tasks submitted per call, about what a worker leases at once with PREFETCH
LEASE = 1024
#: the benchmark gives up if one wait for outcomes lasts this long
STALL = 30.0


def run(n: int, concurrency: int, timeout: float | None) -> tuple[float, float, float]:
    """(tasks/s, CPU µs per task here, CPU µs per task in the task processes)."""
    wakeup = threading.Event()
    executor = Executor(registry, concurrency, wakeup)
    try:
        warm = [Task(i, str(i), "square", [i], {}, timeout) for i in range(concurrency * 64)]
        _drain(executor, wakeup, warm, len(warm))
        tasks = [Task(i, str(i), "square", [i], {}, timeout) for i in range(n)]
        children = [p.pid for p in multiprocessing.active_children()]
        cpu_children = _cpu_seconds(children)
        cpu = time.process_time()
        started = time.perf_counter()
        got = _drain(executor, wakeup, tasks, n)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        cpu_children = _cpu_seconds(children) - cpu_children
    finally:
        executor.close()
    assert len(got) == n and all(o.ok for o in got), "lost or failed tasks"
    return n / elapsed, cpu / n * 1e6, cpu_children / n * 1e6


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids`, NaN where /proc cannot tell."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _drain(executor: Executor, wakeup: threading.Event, tasks: list[Task], n: int) -> list:
    """Submit `tasks` a lease at a time, keeping about four leases queued, until `n` outcomes."""
    got: list = []
    sent = 0
    while len(got) < n:
        while sent < len(tasks) and executor.outstanding() < 4 * LEASE:
            executor.submit(tasks[sent:sent + LEASE])
            sent += LEASE
        if not wakeup.wait(STALL):
            raise RuntimeError(f"no outcome for {STALL} s; {len(got)} of {n} done")
        wakeup.clear()
        got += executor.collect()
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--timeout", type=float, default=None,
                        help="give every task this timeout (default: none)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per setting; best is shown")
    args = parser.parse_args()
    for concurrency in args.concurrency:
        runs = [run(args.tasks, concurrency, args.timeout) for _ in range(args.repeat)]
        rate, here, children = max(runs)
        print(f"concurrency {concurrency}: {rate:,.0f} tasks/s, CPU per task {here:.2f} µs here "
              f"+ {children:.2f} µs in task processes (best of {args.repeat}: "
              f"{', '.join(f'{r[0]:,.0f}' for r in runs)}; {args.tasks} tasks, "
              f"timeout {args.timeout})", flush=True)


if __name__ == "__main__":
    main()
