"""The recipe's task_master.py with procfleet: put N random numbers as tasks, print each result
as it arrives. From the repo root:

    python examples/blog_master.py                  # 4 worker processes on this machine

Workers on other hosts instead (the key is required once the port is not loopback-only):

    PROCFLEET_AUTHKEY=... python examples/blog_master.py --bind 0.0.0.0:50000 --local-workers 0
    # on each worker host, from examples/ (or with PYTHONPATH=examples):
    PROCFLEET_AUTHKEY=... procfleet worker --master MASTER_HOST:50000 --import blog_tasks
"""

import argparse
import random
import sys
from concurrent.futures import as_completed

from procfleet.master import FleetExecutor
from procfleet.shared.errors import ProcfleetError

import blog_tasks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("-n", "--tasks", type=int, default=10, help="how many tasks (10)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="how long each task sleeps, as the recipe's worker did (1)")
    parser.add_argument("--seed", type=int, help="seed the random numbers (repeatable runs)")
    parser.add_argument("--bind", help="HOST:PORT for workers on other hosts (0.0.0.0:50000)")
    parser.add_argument("--local-workers", type=int, default=4,
                        help="worker processes started here (4; 0 with --bind)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="give up on results after this many seconds (60)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    with FleetExecutor(local_workers=args.local_workers, bind=args.bind,
                       imports=["blog_tasks"]) as executor:
        if args.bind:
            # stderr, so stdout stays the recipe's output
            port = executor.address[1]
            print(f"waiting for workers: procfleet worker --master <this host>:{port} "
                  "--import blog_tasks", file=sys.stderr, flush=True)
        futures = []
        for _ in range(args.tasks):
            n = rng.randint(0, 66)
            print(f"put task {n}", flush=True)
            futures.append(executor.submit(blog_tasks.square_text, n, args.seconds))
        print("get results...", flush=True)
        # the recipe's result_queue.get(): each result as it arrives, in no set order
        for future in as_completed(futures, timeout=args.timeout):
            print(f"result:{future.result()}", flush=True)
    print("manager shutdown")


if __name__ == "__main__":
    try:
        main()
    except ProcfleetError as exc:     # a missing or short key, say: its message says what to do
        sys.exit(f"blog_master: {exc}")
