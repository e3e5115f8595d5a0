"""Micro-benchmark, not a test: tiny `square` tasks per second through one Executor.

    python tests/bench_executor.py [--tasks 200000] [--concurrency 1 4] [--timeout 60]

Times from submit() to the last outcome collected, the way the worker loop uses the executor
(one submit per lease, collect() on each wakeup); child start-up is done before the clock starts.
"""

import argparse
import threading
import time

from procfleet.shared.records import Task
from procfleet.shared.tasks import registry
from procfleet.worker.executor import Executor

#: tasks submitted per call, about what a worker leases at once with PREFETCH
LEASE = 1024
#: the benchmark gives up if one wait for outcomes lasts this long
STALL = 30.0


def run(n: int, concurrency: int, timeout: float | None) -> float:
    wakeup = threading.Event()
    executor = Executor(registry, concurrency, wakeup)
    try:
        warm = [Task(i, str(i), "square", [i], {}, timeout) for i in range(concurrency * 64)]
        _drain(executor, wakeup, warm, len(warm))
        tasks = [Task(i, str(i), "square", [i], {}, timeout) for i in range(n)]
        started = time.perf_counter()
        got = _drain(executor, wakeup, tasks, n)
        elapsed = time.perf_counter() - started
    finally:
        executor.close()
    assert len(got) == n and all(o.ok for o in got), "lost or failed tasks"
    return n / elapsed


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
        rates = [run(args.tasks, concurrency, args.timeout) for _ in range(args.repeat)]
        print(f"concurrency {concurrency}: {max(rates):,.0f} tasks/s "
              f"(best of {args.repeat}: {', '.join(f'{r:,.0f}' for r in rates)}; "
              f"{args.tasks} tasks, timeout {args.timeout})", flush=True)


if __name__ == "__main__":
    main()
