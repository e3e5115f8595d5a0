"""FleetExecutor measured from a process of its own (bench/service.py runs it): prints one JSON
object on stdout, so the harness reads figures, never log lines.

    python -m bench.fleet_client map --tasks 200000 --local-workers 4
    python -m bench.fleet_client latency --master 127.0.0.1:PORT --samples 200

It runs under the python of the procfleet installation being measured, from the repo root, and
imports nothing of bench but itself. The key comes from PROCFLEET_AUTHKEY, as for any client.
"""

import argparse
import json
import sys
import time

from procfleet.master import FleetExecutor
from procfleet.shared.tasks import square

#: round trips before the latency clock starts (connections and code paths warm)
WARMUP = 5
#: longest one round trip may take before the run counts as failed
ROUND_TRIP_LIMIT = 30.0


def executor_map(tasks: int, local_workers: int) -> dict:
    """tasks/s of `list(ex.map(square, range(tasks)))`, timed around map() once every local
    worker joined (as Pool.map is timed with its pool started)."""
    with FleetExecutor(local_workers=local_workers, wait_workers=local_workers) as ex:
        started = time.perf_counter()
        results = list(ex.map(square, range(tasks)))
        seconds = time.perf_counter() - started
    if len(results) != tasks or any(r != i * i for i, r in enumerate(results)):
        raise SystemExit(f"map returned {len(results)} results, not the {tasks} squares")
    return {"tasks": tasks, "seconds": seconds, "tasks_per_s": tasks / seconds}


def round_trips(master: str, samples: int) -> dict:
    """Milliseconds of each `submit(square, 3).result()`, one at a time, on one executor (one
    job) that is a client of the service at `master`."""
    latencies = []
    with FleetExecutor(master=master) as ex:
        for i in range(WARMUP + samples):
            started = time.perf_counter()
            value = ex.submit(square, 3).result(ROUND_TRIP_LIMIT)
            elapsed = time.perf_counter() - started
            if value != 9:
                raise SystemExit(f"square(3) returned {value!r}")
            if i >= WARMUP:
                latencies.append(elapsed * 1000)
    return {"samples": samples, "ms": latencies}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_client",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("map", help="tasks/s of FleetExecutor(local_workers=N).map")
    m.add_argument("--tasks", type=int, default=200_000)
    m.add_argument("--local-workers", type=int, default=4)
    lat = sub.add_parser("latency", help="submit().result() round trips against a service")
    lat.add_argument("--master", required=True, metavar="HOST:PORT")
    lat.add_argument("--samples", type=int, default=200)
    args = parser.parse_args(argv)
    if args.what == "map":
        out = executor_map(args.tasks, args.local_workers)
    else:
        out = round_trips(args.master, args.samples)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
