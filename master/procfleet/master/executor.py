"""`FleetExecutor`: procfleet as a `concurrent.futures.Executor`.

    from procfleet.master import FleetExecutor
    from procfleet.shared.tasks import square

    with FleetExecutor(local_workers=4) as ex:
        print(list(ex.map(square, range(10))))

The executor is a client of a service (`procfleet master --serve`): one it runs in a thread of
this process (the default; `local_workers` worker processes join it, others may too with
`bind=`), or a running one (`master="host:port"`). Its tasks are one job there, so they get the
service's leases, requeues and first-result-wins like any batch. A function travels by name,
never as code: a registered @task, or "module:function" for a module-level function of a module
the workers import (--import, `imports=`). Arguments and results are JSON values plus tuples,
sets, bytes, nan/inf and dicts with any such keys, and come back as they went
(procfleet.shared.values).
"""

import ast
import atexit
import builtins
import collections
import functools
import inspect
import itertools
import json
import math
import os
import secrets
import sys
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FuturesTimeout

from procfleet.shared.errors import (ConfigError, ProcfleetError, TaskFailed, TaskTimeout,
                                     WorkerCrash, WorkerLost)
from procfleet.shared.protocol import MAX_DEPTH, MAX_NAME, MAX_TASK_BYTES, deeper_than
from procfleet.shared.settings import (ENV_AUTHKEY, ENV_AUTHKEY_FILE, MIN_AUTHKEY_LENGTH,
                                       load_authkey, parse_address)
from procfleet.shared.tasks import CALL, MAP_CHUNK, registry
from procfleet.shared.values import Unsendable, pack, unpack

from .batch import Interrupt
from .client import PUT_LINES, JobClient, MasterGone
from .localworkers import reachable_host
from .serve import run_service
from .settings import MasterSettings

#: items of one map() in flight at once: inputs are read this far ahead of the results
MAP_WINDOW = 10_000
#: map's own chunks (chunksize=None): tasks finishing per second it aims at, the most items in
#: one task, and the seconds of results the item rate is measured over (at least MIN_RATE_SPAN)
CHUNKS_PER_SECOND = 2_000
MAX_AUTO_CHUNK = 256
RATE_WINDOW = 0.5
MIN_RATE_SPAN = 0.05
#: how long an embedded service gets to open its port
START_TIMEOUT = 30.0

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_loads = json.loads
#: what follows a task's `Type: message` in its error text (taskproc.format_error)
_TRACEBACK = "\n\nTraceback (most recent call last):"
_FAILURES = {"WorkerLost": WorkerLost, "TaskTimeout": TaskTimeout, "WorkerCrash": WorkerCrash}
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_SCRIPT = ("__main__", "__mp_main__")


class RemoteTraceback(Exception):
    """The worker's traceback text, as the `__cause__` of an exception re-raised here."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.text}\"\"\""


class FleetFuture(Future):
    """A Future whose cancel() also takes back a task the master holds but no worker leased."""

    def __init__(self, executor: "FleetExecutor", seq: int, line: str, name: str) -> None:
        super().__init__()
        self._executor, self._seq, self._line, self._name = executor, seq, line, name
        self._master_seq: int | None = None     # its number in the job, once sent

    def cancel(self) -> bool:
        executor = self._executor
        with executor._lock:
            if self.done():
                return super().cancel()     # False, unless already cancelled
            master_seq = self._master_seq
            if master_seq is None:          # still here: the feeder skips it
                executor._futures.pop(self._seq, None)
                return super().cancel()
        try:
            taken = executor._client.cancel([master_seq])
        except ProcfleetError:
            return False
        if not taken:
            return False                    # leased: it runs
        executor._futures.pop(self._seq, None)
        return super().cancel()


class FleetExecutor(Executor):
    """See the module's doc. Options mirror `procfleet master`'s; `authkey` defaults to
    PROCFLEET_AUTHKEY(_FILE), or a random key when only loopback and local workers are
    involved."""

    def __init__(self, local_workers: int = 0, *, bind: str | None = None,
                 master: str | None = None, authkey: bytes | str | None = None,
                 lease_timeout: float = 5.0, max_attempts: int = 3,
                 task_timeout: float | None = None, retries: int = 0,
                 retry_backoff: float = 1.0, wait_workers: int = 0,
                 imports: tuple[str, ...] | list[str] = (), connect_timeout: float = 30.0,
                 label: str = "FleetExecutor") -> None:
        if master is not None and (bind is not None or local_workers):
            raise ConfigError("FleetExecutor(master=...) is a client of a running master: "
                              "bind= and local_workers= belong to that master, not here")
        self.imports = tuple(imports)
        self.task_timeout = task_timeout
        self._embedded = master is None
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._futures: dict[int, FleetFuture] = {}
        self._queue: collections.deque[FleetFuture] = collections.deque()
        self._next_seq = 0
        self._shutdown = False
        self._broken: str | None = None
        self._service_thread = self._interrupt = None
        key = _key(authkey, master, bind)
        if self._embedded:
            #: (host, port) the master serves on (workers elsewhere join it there)
            self.address = self._start_service(local_workers, bind or "127.0.0.1:0", key,
                                               lease_timeout)
            host, port = self.address
            connect_to = (reachable_host(host), port)
        else:
            self.address = connect_to = parse_address(master, "FleetExecutor(master=...)")
        options = {"label": label, "max_attempts": max_attempts, "retries": retries,
                   "retry_backoff": float(retry_backoff)}
        if task_timeout is not None:
            options["task_timeout"] = float(task_timeout)
        try:
            self._client = JobClient(connect_to, key, options,
                                     connect_timeout=connect_timeout)
            if wait_workers:
                self._wait_workers(wait_workers)
        except BaseException:
            self._stop_service()
            raise
        self._feeder = threading.Thread(target=self._feed, name="procfleet-feed", daemon=True)
        self._collector = threading.Thread(target=self._collect, name="procfleet-collect",
                                           daemon=True)
        self._feeder.start()
        self._collector.start()
        if self._embedded:
            # A program that ends without shutdown() still stops its master and local workers
            # (else they would wait out their connect timeout for a master that is gone).
            atexit.register(_stop_at_exit, weakref.ref(self))

    # -- the executor's API ---------------------------------------------------------------------
    def submit(self, fn, /, *args, **kwargs) -> FleetFuture:
        """Run fn(*args, **kwargs) on a worker; TypeError here if `fn` or an argument cannot
        travel (a lambda, a closure, a value that is not JSON...)."""
        return self._submit(self._task_name(fn), args, kwargs)

    def map(self, fn, *iterables, timeout: float | None = None,
            chunksize: int | None = None):
        """Results of fn over the inputs, in order; `timeout` as the standard library's.
        Inputs are read lazily, at most MAP_WINDOW items ahead of the results. `chunksize`
        items travel and run as one task; by default (None) map sizes its chunks itself: one
        item a task while results come slowly, more as they come fast (ChunkSizer), so tiny
        tasks do not pay a task's overhead each. chunksize=1: every item its own task (its
        own retries and timeout)."""
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        run = _MapRun(self, self._task_name(fn), zip(*iterables), chunksize,
                      None if timeout is None else time.monotonic() + timeout)
        run.refill()                             # the first window starts now, as stdlib's
        return run.results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for future in list(self._queue):
                    future.cancel()
            self._wake.notify_all()
        if cancel_futures:
            self._cancel_many(list(self._futures.values()))
        if wait:
            self._finish()
        else:
            threading.Thread(target=self._finish, name="procfleet-shutdown", daemon=True).start()

    # -- inside --------------------------------------------------------------------------------
    def _task_name(self, fn) -> str:
        name = task_name(fn)
        if not isinstance(fn, str) and getattr(fn, "__module__", None) in _SCRIPT:
            raise TypeError(f"{name}: it is defined in the script being run (__main__), which "
                            "workers cannot import: move it to a module and pass that "
                            "module in imports=[...]")
        if self._embedded and not isinstance(fn, str):
            module = name.partition(":")[0] if ":" in name else getattr(fn, "__module__", "")
            if module != "procfleet.shared.tasks" and module not in self.imports:
                raise TypeError(f"{name}: its module {module!r} is not in this executor's "
                                f"imports, so its workers cannot run it: "
                                f"FleetExecutor(..., imports=[{module!r}])")
        return name

    def _submit(self, name: str, args, kwargs: dict, timeout: float | None = None, *,
                chunk: list | None = None) -> FleetFuture:
        """A future for fn(*args, **kwargs), or for fn over each argument tuple of `chunk`."""
        with self._lock:
            if self._broken:
                raise BrokenFleet(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            seq = self._next_seq
            if chunk is None:
                line = task_line(seq, name, args, kwargs, timeout)
            else:
                line = chunk_line(seq, name, chunk, timeout)
            self._next_seq = seq + 1
            future = FleetFuture(self, seq, line, name)
            self._futures[seq] = future
            self._queue.append(future)
            if len(self._queue) == 1:
                self._wake.notify()
        return future

    def _cancel_many(self, futures) -> None:
        """cancel() for many futures, in one call to the master."""
        sent = []
        with self._lock:
            for future in futures:
                if future.done():
                    continue
                if future._master_seq is None:
                    self._futures.pop(future._seq, None)
                    Future.cancel(future)
                else:
                    sent.append(future)
        if not sent or self._broken:
            return
        try:
            taken = set(self._client.cancel([future._master_seq for future in sent]))
        except ProcfleetError:
            return
        for future in sent:
            if future._master_seq in taken:
                self._futures.pop(future._seq, None)
                Future.cancel(future)

    def _feed(self) -> None:
        """Send queued tasks to the master, in order, as fast as it takes them."""
        client = self._client
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._queue or self._shutdown or self._broken)
                if self._broken:
                    return
                batch = []
                while self._queue and len(batch) < PUT_LINES:
                    future = self._queue.popleft()
                    if future.cancelled():
                        continue
                    future._master_seq = client.sent + len(batch)
                    batch.append(future)
                end = self._shutdown and not self._queue
            lines = [future._line for future in batch]
            for future in batch:
                future._line = None
            try:
                client.put(lines, end=end)
            except MasterGone as exc:
                self._break(str(exc))
                return
            except ProcfleetError as exc:       # the master refused the lines: they fail
                for future in batch:
                    self._futures.pop(future._seq, None)
                    _settle(future, None, TypeError(f"the master refused the task: {exc}"))
                continue
            if end:
                return

    def _collect(self) -> None:
        """Resolve futures as their result lines arrive."""
        client = self._client
        while True:
            try:
                lines, figures = client.results()
            except (MasterGone, ProcfleetError) as exc:
                self._resolve(getattr(exc, "lines", ()))
                self._break(str(exc))
                return
            self._resolve(lines)
            if figures["done"]:
                return

    def _resolve(self, lines) -> None:
        futures = self._futures
        for line in lines:
            record = _loads(line)
            future = futures.pop(record["id"], None)
            if future is None:
                continue
            if record["status"] != "ok":
                _settle(future, None, exception_of(record, future._name))
                continue
            try:
                value = unpack(record["result"])
            except ValueError as exc:      # a tag of another procfleet, or a forged one
                _settle(future, None, TaskFailed(
                    f"its result cannot be read: {exc}", task=future._name,
                    attempts=record.get("attempts", 0), worker=record.get("worker")))
            else:
                _settle(future, value, None)

    def _finish(self) -> None:
        """After shutdown(): every sent task resolved, then the job closed and the service
        stopped."""
        self._feeder.join()
        self._collector.join()
        self._client.close()
        self._stop_service()

    def _break(self, why: str) -> None:
        """The master is gone: every unresolved future fails, and so does every submit."""
        with self._lock:
            if self._broken:
                return
            self._broken = why
            self._wake.notify_all()
            futures = list(self._futures.values())
            self._futures.clear()
            self._queue.clear()
        for future in futures:
            _settle(future, None, BrokenFleet(why))

    def _start_service(self, local_workers: int, bind: str, key: bytes,
                       lease_timeout: float) -> tuple[str, int]:
        settings = MasterSettings(authkey=key, serve=True, bind=parse_address(bind, "bind"),
                                  lease_timeout=lease_timeout, local_workers=local_workers)
        self._interrupt = Interrupt()
        started = threading.Event()
        box: dict = {}

        def ready(address):
            box["address"] = address
            started.set()

        def serve():
            try:
                run_service(settings, self._interrupt, ready, imports=self.imports,
                            worker_env=_worker_env())
            except BaseException as exc:    # reported to the constructor below
                box["error"] = exc
                started.set()

        self._service_thread = threading.Thread(target=serve, name="procfleet-service",
                                                daemon=True)
        self._service_thread.start()
        if not started.wait(START_TIMEOUT) or "error" in box:
            self._stop_service()
            error = box.get("error")
            if isinstance(error, ProcfleetError):
                raise error
            raise RuntimeError(f"the executor's master did not start: {error!r}")
        return box["address"]

    def _stop_service(self) -> None:
        if self._service_thread is not None:
            self._interrupt.signum = 15
            self._service_thread.join()
            self._service_thread = None

    def _wait_workers(self, count: int) -> None:
        """Block until `count` workers joined (like the master's --wait-workers)."""
        event = threading.Event()
        while self._client.workers() < count:
            event.wait(0.1)


def _stop_at_exit(ref) -> None:
    executor = ref()
    if executor is not None and executor._service_thread is not None:
        executor._break("the program is exiting")
        executor._stop_service()


class BrokenFleet(ProcfleetError):
    """The executor lost its master: no future of it can resolve any more."""

    exit_code = 3


def task_name(fn) -> str:
    """The name `fn` travels by: a registered task's name, a task name given as text, or
    "module:function" for a module-level function; TypeError for anything else."""
    if isinstance(fn, str):
        if not fn or len(fn) > MAX_NAME or not fn.isprintable():
            raise TypeError(f"a task name is printable text of 1-{MAX_NAME} characters, not "
                            f"{fn!r}")
        return fn
    name = registry.name_of(fn)
    if name is not None:
        return name
    what = _unsendable(fn)
    if what is not None:
        raise TypeError(f"{fn!r} cannot run on a worker: {what}. procfleet sends a function "
                        "by name, never as code: use a module-level function of a module the "
                        "workers import (imports=[...], procfleet worker --import), or one "
                        "registered with @procfleet.shared.tasks.task")
    return f"{fn.__module__}:{fn.__qualname__}"


def _unsendable(fn) -> str | None:
    if not callable(fn):
        return "it is not callable"
    if isinstance(fn, functools.partial):
        return "it is a functools.partial (pass its arguments to submit instead)"
    if inspect.ismethod(fn):
        return "it is a bound method"
    if not inspect.isfunction(fn):
        return f"it is a {type(fn).__name__}, not a function"
    if fn.__name__ == "<lambda>":
        return "it is a lambda"
    if "<locals>" in fn.__qualname__:
        return "it is defined inside another function (a closure)"
    if "." in fn.__qualname__:
        return "it is not at the top level of its module"
    if fn.__module__ is None or fn.__module__ in _SCRIPT:
        return ("it is defined in the script being run (__main__), which workers cannot "
                "import: move it to a module")
    return None


def task_line(seq: int, name: str, args, kwargs: dict, timeout: float | None = None) -> str:
    """The task-file line of one call, as the CALL task with its values packed (`timeout`: its
    own, else the job's); TypeError if its arguments cannot travel."""
    return _line(seq, name, CALL, [name, _pack_args(name, "args", list(args)),
                                     _pack_args(name, "kwargs", kwargs)], timeout)


def chunk_line(seq: int, name: str, chunk: list, timeout: float | None = None) -> str:
    """The task-file line of map's calls of `name` on each argument tuple of `chunk`."""
    return _line(seq, name, MAP_CHUNK,
                 [name, [_pack_args(name, "args", list(args)) for args in chunk]], timeout)


def _pack_args(name: str, root: str, value):
    try:
        return pack(value)
    except Unsendable as exc:
        raise TypeError(f"{name}: an argument cannot travel to a worker: "
                        f"{exc.describe(root)}") from None
    except RecursionError:      # (json's own encoder goes deeper than pack)
        raise TypeError(f"{name}: an argument cannot travel to a worker: it is nested too "
                        "deeply") from None


def _line(seq: int, name: str, task: str, args: list, timeout: float | None) -> str:
    record = {"id": seq, "task": task, "args": args}
    if timeout is not None:
        record["timeout"] = timeout
    line = _dumps(record)
    if line.count("[") + line.count("{") > MAX_DEPTH + 2 and deeper_than(line, MAX_DEPTH + 2):
        raise TypeError(f"{name}: arguments nest more than {MAX_DEPTH} deep (lists, tuples, "
                        "sets and dicts in one another), more than a task may carry")
    if len(line) > MAX_TASK_BYTES // 4 and len(line.encode("utf-8", "surrogatepass")) > \
            MAX_TASK_BYTES:
        raise TypeError(f"{name}: arguments of {len(line):,} characters as JSON; a task may "
                        f"carry at most {MAX_TASK_BYTES:,} bytes: pass big inputs as paths or "
                        "URLs")
    return line


def exception_of(record: dict, task: str | None = None) -> BaseException:
    """What result() raises for a failed result line: the builtin exception the task raised,
    caused by the worker's traceback, or TaskFailed (a subclass for WorkerLost, TaskTimeout and
    WorkerCrash) carrying the task (`task`, else the line's), its attempts, its last worker and
    the error text."""
    error = record.get("error") or "failed without an error text"
    head = error.split(_TRACEBACK, 1)[0] if _TRACEBACK in error else error.partition("\n")[0]
    type_name, colon, message = head.partition(": ")
    common = {"task": task or record.get("task", ""), "attempts": record.get("attempts", 0),
              "worker": record.get("worker")}
    failure = _FAILURES.get(type_name)
    if failure is not None:
        return failure(error, **common)
    kind = getattr(builtins, type_name, None)
    if colon and isinstance(kind, type) and issubclass(kind, Exception):
        if kind is KeyError:                # str(KeyError('x')) is its key's repr
            try:
                message = ast.literal_eval(message)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                pass
        try:
            exc = kind(message)
        except Exception:        # a builtin that wants other arguments (UnicodeDecodeError)
            exc = None
        if exc is not None and type(exc) is kind:
            exc.__cause__ = RemoteTraceback(error)
            return exc
    return TaskFailed(error, **common)


def _settle(future: Future, value, exc: BaseException | None) -> None:
    if future.done():
        return
    try:
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)
    except Exception:           # cancelled meanwhile (InvalidStateError)
        pass


def _key(authkey, master, bind) -> bytes:
    if authkey is not None:
        key = authkey.encode() if isinstance(authkey, str) else bytes(authkey)
        if len(key) < MIN_AUTHKEY_LENGTH:
            raise ConfigError(f"authkey= has {len(key)} characters; a key needs at least "
                              f"{MIN_AUTHKEY_LENGTH} (workers refuse a shorter one)")
        return key
    if os.environ.get(ENV_AUTHKEY) or os.environ.get(ENV_AUTHKEY_FILE):
        return load_authkey()
    host = parse_address(bind, "bind")[0] if bind else "127.0.0.1"
    if master is None and host in _LOOPBACK:
        return secrets.token_hex(16).encode()       # nobody else needs it
    where = f"master={master!r}" if master else f"bind={bind!r}"
    raise ConfigError(f"FleetExecutor({where}) needs the cluster's key: authkey=..., or set "
                      f"{ENV_AUTHKEY} (or {ENV_AUTHKEY_FILE})")


def _worker_env() -> dict:
    """Local workers' environment: this one, with this program's folder on the path, so the
    modules beside a script (imports=[...]) import there as here."""
    env = dict(os.environ)
    here = sys.path[0] if sys.path and sys.path[0] else os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


class ChunkSizer:
    """How many items map puts in its next task: one until results arrive, then as many as
    keep its tasks finishing at about CHUNKS_PER_SECOND, at the item rate of the results of
    the last RATE_WINDOW seconds (at most MAX_AUTO_CHUNK). Slow tasks stay one item a task;
    a million tiny ones travel a few hundred at a time."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.recent: collections.deque[tuple[float, int]] = collections.deque()
        self.items = 0          # items in `recent`

    def record(self, items: int) -> None:
        """`items` results arrived now."""
        now = self.clock()
        self.recent.append((now, items))
        self.items += items
        while self.recent and now - self.recent[0][0] > RATE_WINDOW:
            self.items -= self.recent.popleft()[1]

    def size(self) -> int:
        if not self.recent:
            return 1
        span = max(self.clock() - self.recent[0][0], MIN_RATE_SPAN)
        rate = self.items / span
        return max(1, min(MAX_AUTO_CHUNK, math.ceil(rate / CHUNKS_PER_SECOND)))


class _MapRun:
    """One map(): its window of tasks in flight (future, item count, chunked?), kept full as
    results are taken."""

    def __init__(self, executor: FleetExecutor, name: str, items, chunksize: int | None,
                 deadline: float | None) -> None:
        self.executor, self.name, self.items = executor, name, iter(items)
        self.chunksize, self.deadline = chunksize, deadline
        self.sizer = ChunkSizer() if chunksize is None else None
        self.window: collections.deque = collections.deque()
        self.in_flight = 0

    def refill(self) -> None:
        """Submit items until MAP_WINDOW are in flight or the inputs end."""
        executor, items = self.executor, self.items
        while self.in_flight < MAP_WINDOW:
            size = self.chunksize or self.sizer.size()
            if size == 1 and self.chunksize is None or self.chunksize == 1:
                item = next(items, _END)
                if item is _END:
                    return
                self.window.append((executor._submit(self.name, item, {}), 1, False))
                self.in_flight += 1
                continue
            chunk = list(itertools.islice(items, size))
            if not chunk:
                return
            timeout = executor.task_timeout * len(chunk) if executor.task_timeout else None
            future = executor._submit(self.name, (), {}, timeout, chunk=chunk)
            self.window.append((future, len(chunk), True))
            self.in_flight += len(chunk)

    def results(self):
        window = self.window
        try:
            while window:
                future, count, chunked = window.popleft()
                remaining = None if self.deadline is None else self.deadline - time.monotonic()
                try:
                    value = future.result(remaining)
                except FuturesTimeout:
                    raise FuturesTimeout() from None
                self.in_flight -= count
                if self.sizer is not None:
                    self.sizer.record(count)
                self.refill()
                if chunked:
                    yield from value
                else:
                    yield value
        finally:
            self.executor._cancel_many([future for future, _count, _chunked in window])


_END = object()
