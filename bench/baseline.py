"""The blog recipe procfleet grew out of, written as a benchmark baseline, and multiprocessing.Pool.

A master serves two queue.Queue proxies (`get_task_queue`, `get_result_queue`) from a BaseManager
on loopback with an authkey; worker processes connect over TCP, take tasks and put results back,
either one task per proxy call or lists of BATCH tasks per call. The master puts every task, then
reads every result, as the recipe does. `python -m bench.baseline worker ...` is a worker.
"""

import argparse
import multiprocessing
import os
import queue
import secrets
import signal
import subprocess
import sys
import time
from multiprocessing.managers import BaseManager
from pathlib import Path

GET_TASK_QUEUE = "get_task_queue"
GET_RESULT_QUEUE = "get_result_queue"
#: env var that carries the run's random key to the worker processes (never on a command line)
AUTHKEY_ENV = "BENCH_RECIPE_AUTHKEY"
#: how long a worker waits for its first task, and the master for each result, before giving up
GET_TIMEOUT = 60.0
#: how long the workers get to connect and say they are ready
READY_TIMEOUT = 30.0
#: how long a worker gets to exit after its sentinel
EXIT_GRACE = 5.0
READY = "ready"

_queues: dict[str, queue.Queue] = {}


def _task_queue() -> queue.Queue:
    return _queues.setdefault("task", queue.Queue())


def _result_queue() -> queue.Queue:
    return _queues.setdefault("result", queue.Queue())


class RecipeManager(BaseManager):
    """The master's side: serves the two queues."""


RecipeManager.register(GET_TASK_QUEUE, callable=_task_queue)
RecipeManager.register(GET_RESULT_QUEUE, callable=_result_queue)


class RecipeClient(BaseManager):
    """The worker's side: the same names, no callables."""


RecipeClient.register(GET_TASK_QUEUE)
RecipeClient.register(GET_RESULT_QUEUE)


def square(x: int) -> int:
    return x * x


class BaselineError(RuntimeError):
    """A baseline run that did not produce every result."""


def run_recipe(tasks: int, workers: int, batch: int = 1, python: str = sys.executable,
               timeout: float = 600.0) -> float:
    """Run `tasks` squares through the recipe with `workers` worker processes; return seconds.

    The clock starts once every worker is connected (so process start-up is not counted) and
    stops when the last result is read; every task id must come back exactly once.
    """
    authkey = secrets.token_bytes(32)
    manager = RecipeManager(address=("127.0.0.1", 0), authkey=authkey)
    manager.start(_default_signals)
    procs: list[subprocess.Popen] = []
    try:
        host, port = manager.address
        env = dict(os.environ, **{AUTHKEY_ENV: authkey.hex()})
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        for _ in range(workers):
            procs.append(subprocess.Popen(
                [python, "-m", "bench.baseline", "worker", f"{host}:{port}", "--batch", str(batch)],
                env=env, stdin=subprocess.DEVNULL))
        task_q = manager.get_task_queue()
        result_q = manager.get_result_queue()
        for _ in range(workers):
            if result_q.get(timeout=READY_TIMEOUT) != READY:
                raise BaselineError("a recipe worker sent something before saying it was ready")
        deadline = time.monotonic() + timeout
        started = time.perf_counter()
        if batch == 1:
            for i in range(tasks):
                task_q.put(i)
        else:
            for first in range(0, tasks, batch):
                task_q.put(list(range(first, min(first + batch, tasks))))
        for _ in range(workers):
            task_q.put(None)
        seen = bytearray(tasks)
        received = 0
        while received < tasks:
            if time.monotonic() > deadline:
                raise BaselineError(f"recipe: {received} of {tasks} results after {timeout:g} s")
            try:
                got = result_q.get(timeout=GET_TIMEOUT)
            except queue.Empty:
                raise BaselineError(f"recipe: no result for {GET_TIMEOUT:g} s "
                                    f"({received} of {tasks} received)") from None
            for i, value in (got if batch > 1 else [got]):
                if seen[i] or value != i * i:
                    raise BaselineError(f"recipe: duplicate or wrong result for task {i}")
                seen[i] = 1
                received += 1
        return time.perf_counter() - started
    finally:
        _stop(procs)
        manager.shutdown()


def _stop(procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + EXIT_GRACE
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def recipe_worker(address: str, batch: int) -> None:
    """Connect, say ready, take tasks (one or a list per call) until the sentinel None."""
    host, _, port = address.rpartition(":")
    client = RecipeClient(address=(host, int(port)), authkey=bytes.fromhex(os.environ[AUTHKEY_ENV]))
    client.connect()
    task_q = client.get_task_queue()
    result_q = client.get_result_queue()
    result_q.put(READY)
    while True:
        try:
            item = task_q.get(timeout=GET_TIMEOUT)
        except queue.Empty:
            return
        if item is None:
            return
        if batch == 1:
            result_q.put((item, square(item)))
        else:
            result_q.put([(i, square(i)) for i in item])


def run_pool(tasks: int, processes: int, chunksize: int, timeout: float = 600.0) -> float:
    """`Pool(processes).map(square, range(tasks), chunksize)`; return the seconds map took."""
    pool = multiprocessing.Pool(processes, initializer=_default_signals)
    try:
        pool.map_async(square, range(processes)).get(READY_TIMEOUT)   # all started before the clock
        started = time.perf_counter()
        try:
            out = pool.map_async(square, range(tasks), chunksize=chunksize).get(timeout)
        except multiprocessing.TimeoutError:
            raise BaselineError(f"Pool.map: not done after {timeout:g} s") from None
        elapsed = time.perf_counter() - started
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    if len(out) != tasks or any(v != i * i for i, v in enumerate(out)):
        raise BaselineError("Pool.map returned wrong or missing results")
    return elapsed


def _default_signals() -> None:
    # Forked from the suite, whose SIGTERM raises KeyboardInterrupt: a pool worker or the
    # manager's server process just exits, without a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help=f"a recipe worker (the key comes from {AUTHKEY_ENV})")
    worker.add_argument("address", metavar="HOST:PORT")
    worker.add_argument("--batch", type=int, default=1)
    run = sub.add_parser("run", help="time one recipe run and print tasks/s")
    run.add_argument("--tasks", type=int, default=200_000)
    run.add_argument("--workers", type=int, default=4)
    run.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "worker":
        recipe_worker(args.address, args.batch)
    else:
        seconds = run_recipe(args.tasks, args.workers, args.batch)
        print(f"{args.tasks} tasks, {args.workers} workers, batch {args.batch}: "
              f"{seconds:.2f} s, {args.tasks / seconds:.0f} tasks/s")


if __name__ == "__main__":
    main()
