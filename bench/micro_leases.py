"""Micro-benchmark, not a test: the master's CPU time per task in its lease/complete loop.

    python -m bench.micro_leases [--tasks 400000] [--lease 2000] [--runs 5]

One fake worker leases `--lease` demo tasks per call and hands back their ok results, as a real
worker's exchange does, with no sockets: what is left is the Dispatcher's own cost per task
(lease state, the first-result check, the result line). CPU time (process_time), best of
`--runs`, which a busy machine disturbs far less than wall time.
"""

import argparse
import time

from procfleet.master.leases import Dispatcher
from procfleet.master.taskfile import DemoSource


def microseconds_per_task(tasks: int, lease: int) -> float:
    d = Dispatcher(DemoSource(tasks), tasks, lease_timeout=5.0, max_attempts=3)
    calls, held = 0, []
    started = time.process_time()
    while not d.done:
        calls += 1
        d.begin_call("w", "session", calls, calls - 1)
        if held:
            d.complete("w", [(t[0], "ok", t[3][0] * t[3][0], None) for t in held])
        held = d.lease("w", lease, calls)
        d.take_results()
    return (time.process_time() - started) / tasks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400_000)
    parser.add_argument("--lease", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    figures = [microseconds_per_task(args.tasks, args.lease) for _ in range(args.runs)]
    print(f"dispatcher: {min(figures):.2f} us CPU per task (best of {args.runs}; "
          f"all: {', '.join(f'{f:.2f}' for f in figures)})")


if __name__ == "__main__":
    main()
