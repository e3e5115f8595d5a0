"""The worker's life: initialize (connect, hello), loop (exchange batches), shutdown.

Every `exchange` call hands back finished outcomes, leases more tasks and serves as the
heartbeat; while every slot is busy the worker still calls in once per heartbeat interval.
"""

import logging
import platform
import signal
import threading

from procfleet.shared.errors import EXIT_OK, ProtocolMismatch
from procfleet.shared.manager import CONNECT_ERRORS, PROTOCOL_VERSION, STOP
from procfleet.shared.records import outcome_to_wire, task_from_wire
from procfleet.shared.settings import format_address
from procfleet.shared.tasks import TaskRegistry

from .connection import connect_with_retry
from .executor import Executor
from .settings import WorkerSettings

log = logging.getLogger(__name__)

#: lease up to concurrency * PREFETCH tasks, so the next batch is here before slots run dry
PREFETCH = 4
#: how long an idle worker lets the master hold its request waiting for work
LONG_POLL = 1.0


class Worker:
    def __init__(self, settings: WorkerSettings, registry: TaskRegistry) -> None:
        self.settings = settings
        self.id = settings.worker_id
        self.registry = registry
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.signum = 0
        self.target = settings.concurrency * PREFETCH
        self.heartbeat_interval = 1.0

    # -- signals: the handler only sets flags --------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self.signum = signum
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
        proxy = self._initialize()
        if proxy is None:
            return EXIT_OK
        return self._loop(proxy)

    def _initialize(self):
        s = self.settings
        log.info("connecting to master %s", format_address(s.master))
        proxy = connect_with_retry(s.master, s.authkey, s.connect_timeout, self.stopping)
        if proxy is None:
            return None
        reply = proxy.hello(self.id, {"protocol": PROTOCOL_VERSION,
                                      "python": platform.python_version(),
                                      "concurrency": s.concurrency})
        if reply.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"master {format_address(s.master)} speaks protocol {reply.get('protocol')}, "
                f"this worker {PROTOCOL_VERSION}: use images of the same procfleet version")
        self.heartbeat_interval = reply["heartbeat_interval"]
        if reply["state"] == STOP:
            log.info("the master's batch is already over; exiting")
            return None
        log.info("connected to master %s; running up to %d tasks at once",
                 format_address(s.master), s.concurrency)
        return proxy

    def _loop(self, proxy) -> int:
        executor = Executor(self.registry, self.settings.concurrency, self.wakeup)
        leased: set[str] = set()
        unsent: list[tuple] = []
        done = 0
        while True:
            self.wakeup.clear()
            for outcome in executor.collect():
                leased.discard(outcome.id)
                unsent.append(outcome_to_wire(outcome))
            if self.stopping.is_set():
                return self._shutdown(proxy, unsent, leased)
            want = max(0, self.target - len(leased))
            wait = LONG_POLL if not leased and not unsent else 0.0
            try:
                tasks, state = proxy.exchange(self.id, unsent, want, wait)
            except CONNECT_ERRORS as exc:
                log.warning("lost the master (%s); reconnecting", type(exc).__name__)
                proxy = self._initialize()
                if proxy is None:
                    return EXIT_OK
                continue
            done += len(unsent)
            unsent = []
            if state == STOP:
                log.info("the batch is over after %d tasks here; exiting", done)
                return EXIT_OK
            if tasks:
                leased.update(t[0] for t in tasks)
                executor.submit([task_from_wire(t) for t in tasks])
            if leased:
                self.wakeup.wait(self.heartbeat_interval)

    def _shutdown(self, proxy, unsent: list, leased: set) -> int:
        """Report what is finished, hand back what is not, and leave."""
        log.info("signal %d: handing back %d unfinished tasks and exiting", self.signum,
                 len(leased))
        try:
            proxy.exchange(self.id, unsent, 0, 0.0)
            proxy.goodbye(self.id)
        except CONNECT_ERRORS as exc:
            log.warning("could not reach the master to hand back tasks (%s); "
                        "they are requeued when the lease expires", type(exc).__name__)
        return EXIT_OK
