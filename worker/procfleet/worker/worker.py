"""The worker's life: initialize (connect, hello), loop (exchange batches), drain and shut down.

Every `exchange` call hands back finished outcomes, leases more tasks and serves as the
heartbeat; while every slot is busy the worker still calls in once per heartbeat interval.
SIGTERM drains: stop leasing, hand back what has not started, finish what is running within
`--drain-timeout`, hand back the rest, exit 0. A second signal ends the drain at once.
"""

import logging
import platform
import signal
import threading
import time
import uuid

from procfleet.shared.compat import untested_python_warning
from procfleet.shared.errors import EXIT_OK, ProtocolMismatch
from procfleet.shared.manager import CONNECT_ERRORS, PROTOCOL_VERSION, STOP
from procfleet.shared.protocol import RESULT_BATCH_BYTES, task_from_wire
from procfleet.shared.settings import format_address
from procfleet.shared.tasks import TaskRegistry
from procfleet.shared.tuning import tune_gc

from procfleet.shared.connection import connect_with_retry
from .executor import Executor
from .settings import WorkerSettings

log = logging.getLogger(__name__)

#: lease at least concurrency * PREFETCH tasks, so the next batch is here before slots run dry
PREFETCH = 2
#: ... and as many as this worker finishes in LEASE_WINDOW seconds, up to MAX_LEASED: tiny
#: tasks travel in big batches, slow ones in small batches (the master's fair share caps both)
LEASE_WINDOW = 0.1
#: the first window the rate is measured over (see Pacer)
FIRST_WINDOW = 0.005
MAX_LEASED = 2000
#: ask for more once fewer than this fraction of the target are left
LOW_WATER = 0.5
#: finished results wait at most this long before they are sent
RESULT_DELAY = 0.02
#: how long the worker waits for its task processes to start before it connects anyway
STARTUP_TIMEOUT = 10.0
#: how long an idle worker lets the master hold its request waiting for work
LONG_POLL = 1.0
#: a call with no reply for this many lease timeouts means the connection is dead
CALL_TIMEOUT_LEASES = 2.0
#: ... but never less than this (a long poll must fit)
MIN_CALL_TIMEOUT = 5.0


class Worker:
    def __init__(self, settings: WorkerSettings, registry: TaskRegistry) -> None:
        self.settings = settings
        self.id = settings.worker_id
        self.registry = registry
        self.wakeup = threading.Event()
        self.signals = 0
        self.signum = 0
        self.pacer = Pacer(settings.concurrency)
        self.heartbeat_interval = 1.0
        self.batch: str | None = None
        self.stopping = threading.Event()   # set on the first signal: connect attempts give up
        # This process's calls are numbered; each one says which was the last reply that
        # arrived, so the master takes back at once what it leased in a reply that was lost.
        self.session = uuid.uuid4().hex[:16]
        self.calls = 0
        self.acked = 0

    # -- signals: the handler only sets flags --------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self.signum = signum
        self.signals += 1
        self.stopping.set()
        self.wakeup.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # -- life cycle -------------------------------------------------------------------------
    def run(self) -> int:
        """Work until the master says the batch is over (0) or a signal arrives (0).

        Raises AuthenticationFailed / ConfigError (exit 2) and MasterUnreachable (exit 3).
        """
        if (untested := untested_python_warning()) is not None:
            log.warning("%s", untested)
        # Task processes start first, so a worker that joins can run tasks at once (a master
        # with --wait-workers starts the batch when the last one joins).
        executor = Executor(self.registry, self.settings.concurrency, self.wakeup,
                            self.settings.imports)
        tune_gc()
        try:
            if not executor.wait_started(STARTUP_TIMEOUT):
                log.warning("task processes still starting after %g s; connecting anyway",
                            STARTUP_TIMEOUT)
            proxy = self._initialize()
            if proxy is None:
                return EXIT_OK
            return self._loop(proxy, executor)
        finally:
            executor.close()

    def _initialize(self):
        s = self.settings
        log.info("connecting to master %s", format_address(s.master))
        proxy = connect_with_retry(s.master, s.authkey, s.connect_timeout, self.stopping)
        if proxy is None:
            return None
        reply = proxy.hello(self.id, {"protocol": PROTOCOL_VERSION,
                                      "python": platform.python_version(),
                                      "concurrency": s.concurrency, "session": self.session})
        if reply.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"master {format_address(s.master)} speaks protocol {reply.get('protocol')}, "
                f"this worker {PROTOCOL_VERSION}: use images of the same procfleet version")
        self.heartbeat_interval = reply["heartbeat_interval"]
        proxy.set_call_timeout(max(MIN_CALL_TIMEOUT,
                                   CALL_TIMEOUT_LEASES * reply["lease_timeout"]))
        if reply["state"] == STOP:
            log.info("the master's batch is already over; exiting")
            return None
        if self.batch is not None and reply["batch"] != self.batch:
            log.warning("the master now runs another batch (%s, was %s): dropping the old "
                        "batch's work", reply["batch"], self.batch)
        self.batch = reply["batch"]
        log.info("connected to master %s (batch %s); running up to %d tasks at once",
                 format_address(s.master), self.batch, s.concurrency)
        return proxy

    def _loop(self, proxy, executor: Executor) -> int:
        leased: dict[int, str] = {}     # seq -> batch it belongs to
        unsent: list = []               # Outcomes not yet accepted by the master
        unsent_since = 0.0
        done = 0
        drain_until = None
        pacer = self.pacer
        last_call = 0.0
        while True:
            self.wakeup.clear()
            finished = executor.collect()
            now = time.monotonic()
            if finished:
                pacer.finished(len(finished), now)
                if not unsent:
                    unsent_since = now
                for outcome in finished:
                    if leased.pop(outcome.seq, None) == self.batch:
                        unsent.append(outcome)
            if self.signals and drain_until is None:
                drain_until = now + self.settings.drain_timeout
                self._begin_drain(proxy, executor, leased)
            if drain_until is not None and (not leased or self.signals > 1
                                            or now >= drain_until):
                return self._shutdown(proxy, executor, unsent, leased)
            target = pacer.target()
            want = 0 if drain_until is not None else max(0, target - len(leased))
            next_call = call_due(now, last_call + self.heartbeat_interval, want, len(leased),
                                 target, unsent_since if unsent else None)
            if next_call > now:
                timeout = next_call - now
                if drain_until is not None:
                    timeout = min(timeout, max(0.0, drain_until - now))
                self.wakeup.wait(timeout)
                continue
            wait = LONG_POLL if not leased and not unsent else 0.0
            sending = unsent[:first_batch(unsent)]
            try:
                tasks, state = self._exchange(proxy, sending, want, wait)
            except CONNECT_ERRORS as exc:
                log.warning("lost the master (%s); reconnecting", type(exc).__name__)
                proxy = self._reconnect(executor, leased, unsent)
                if proxy is None:
                    return EXIT_OK
                continue
            last_call = time.monotonic()
            done += len(sending)
            del unsent[:len(sending)]
            if unsent:
                unsent_since = 0.0          # the rest goes out in the next call, at once
            if state == STOP:
                log.info("the master says stop (its batch is over, or it is stopping) after %d tasks here; exiting", done)
                return EXIT_OK
            if tasks:
                for item in tasks:
                    leased[item[0]] = self.batch
                executor.submit([task_from_wire(t) for t in tasks])

    def _reconnect(self, executor: Executor, leased: dict, unsent: list):
        """Connect again (None if stopped meanwhile). A master of another batch (it restarted
        without a journal) knows nothing of what this worker holds: drop it."""
        batch = self.batch
        proxy = self._initialize()
        if proxy is not None and self.batch != batch:
            unsent.clear()
            for task in executor.take_unstarted():
                leased.pop(task.seq, None)
        return proxy

    def _exchange(self, proxy, outcomes: list, want: int, wait: float) -> tuple:
        """One numbered exchange call; (tasks, state)."""
        self.calls += 1
        reply = proxy.exchange(self.id, self.batch, [o[:4] for o in outcomes], want, wait,
                               (self.session, self.calls, self.acked))
        self.acked = self.calls
        return reply

    def _begin_drain(self, proxy, executor: Executor, leased: dict) -> None:
        """Stop leasing and hand back at once what has not started, so others pick it up."""
        unstarted = [t.seq for t in executor.take_unstarted()]
        for seq in unstarted:
            leased.pop(seq, None)
        log.info("signal %d: draining: handing back %d tasks not started, finishing %d "
                 "running (up to %g s)", self.signum, len(unstarted), len(leased),
                 self.settings.drain_timeout)
        if unstarted:
            try:
                proxy.release(self.id, unstarted)
            except CONNECT_ERRORS as exc:
                log.warning("could not hand back tasks (%s); they are requeued when the "
                            "lease expires", type(exc).__name__)

    def _shutdown(self, proxy, executor: Executor, unsent: list, leased: dict) -> int:
        """Report what is finished, hand back what is not, and leave."""
        for outcome in executor.collect():
            if leased.pop(outcome.seq, None) == self.batch:
                unsent.append(outcome)
        # Killing the task processes is our doing, not the tasks' crash: whatever they were
        # running is handed back below, and nothing close() reports is sent.
        executor.close()
        if leased:
            log.info("drain over: handing back %d unfinished tasks", len(leased))
        try:
            while unsent:
                sending = unsent[:first_batch(unsent)]
                self._exchange(proxy, sending, 0, 0.0)
                del unsent[:len(sending)]
            proxy.goodbye(self.id)
        except CONNECT_ERRORS as exc:
            log.warning("could not reach the master to hand back tasks (%s); "
                        "they are requeued when the lease expires", type(exc).__name__)
        log.info("exiting after the drain")
        return EXIT_OK


def call_due(now: float, heartbeat_due: float, want: int, held: int, target: int,
             unsent_since: float | None) -> float:
    """When a worker should call in next: when a heartbeat is due, at once when it wants tasks
    and holds few (LOW_WATER of its target), and for results waiting (`unsent_since`, None for
    none) at once if it holds nothing else, else RESULT_DELAY after the first of them."""
    due = heartbeat_due
    if want and held <= target * LOW_WATER:
        due = min(due, now)
    if unsent_since is not None:
        due = min(due, now if not held else unsent_since + RESULT_DELAY)
    return due


def first_batch(outcomes: list) -> int:
    """How many outcomes one exchange carries: all of them, unless together they are larger
    than RESULT_BATCH_BYTES; then the longest head that fits (at least one outcome)."""
    total = 0
    for index, outcome in enumerate(outcomes):
        total += outcome.size
        if total > RESULT_BATCH_BYTES and index:
            return index
    return len(outcomes)


class Pacer:
    """How many tasks to hold: enough for LEASE_WINDOW seconds at the rate this worker runs.

    The rate is measured over windows that start at FIRST_WINDOW and double up to LEASE_WINDOW,
    taking the highest figure while they grow: a worker holding the floor of a few tasks learns
    within milliseconds that it could run thousands, instead of leasing a handful at a time for
    its whole first LEASE_WINDOW.
    """

    def __init__(self, concurrency: int) -> None:
        self.floor = concurrency * PREFETCH
        self.rate = 0.0            # tasks per second, smoothed
        self.window = FIRST_WINDOW
        self._count = 0
        self._since = None

    def finished(self, count: int, now: float) -> None:
        if self._since is None:
            self._since = now
        self._count += count
        elapsed = now - self._since
        if elapsed >= self.window:
            rate = self._count / elapsed
            if self.window < LEASE_WINDOW:
                self.rate = max(self.rate, rate)
                self.window = min(LEASE_WINDOW, 2 * self.window)
            else:
                self.rate = 0.5 * self.rate + 0.5 * rate
            self._count, self._since = 0, now

    def target(self) -> int:
        return max(self.floor, min(MAX_LEASED, int(self.rate * LEASE_WINDOW)))
