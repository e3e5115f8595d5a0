"""FleetExecutor.map over a long generator: the process's memory as results come in.

    python -m bench.map_memory [--items N] [--workers K]

Runs `map(square, (i for i in range(N)))` on an embedded executor with K local workers and
prints this process's RSS (it holds the embedded master too) after every tenth of the items,
so a line that climbs with N is a leak and a flat one is what map promises (inputs are read at
most MAP_WINDOW tasks ahead of the results).
"""

import argparse
import resource
import time

from procfleet.master import FleetExecutor
from procfleet.shared.tasks import square


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2_000_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    step = max(1, args.items // 10)
    started = time.monotonic()
    print(f"{'results':>10} {'RSS MiB':>8} {'s':>7}")
    with FleetExecutor(local_workers=args.workers) as ex:
        for n, value in enumerate(ex.map(square, (i for i in range(args.items))), start=1):
            if value != (n - 1) ** 2:
                raise SystemExit(f"result {n - 1} is {value}")
            if n % step == 0:
                print(f"{n:>10,} {rss_mib():>8.1f} {time.monotonic() - started:>7.1f}",
                      flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.1f} MiB over {args.items:,} items")


if __name__ == "__main__":
    main()
