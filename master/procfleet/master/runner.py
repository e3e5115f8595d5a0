"""One batch, start to end: load, serve, watch leases, write results, tell workers to stop."""

import logging
import signal
import time

from procfleet.shared.errors import EXIT_OK, EXIT_TASKS_FAILED, EXIT_UNFINISHED
from procfleet.shared.settings import format_address

from .dispatcher import Dispatcher
from .localworkers import LocalWorkers, check_worker_installed
from .output import ResultWriter
from .server import start_server
from .service import DispatcherService
from .settings import MasterSettings
from .taskfile import demo_tasks, read_tasks

log = logging.getLogger(__name__)

#: how often the master checks leases, writes results and looks at its local workers
TICK = 0.1
#: how often a long batch logs its progress
PROGRESS_INTERVAL = 5.0


class Interrupt:
    """Signal handlers only set this flag; the loop acts on it."""

    def __init__(self) -> None:
        self.signum = 0

    def __call__(self, signum, _frame) -> None:
        self.signum = signum

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)


def run_master(settings: MasterSettings) -> int:
    """Run one batch; return the exit code. ConfigError propagates before anything is served."""
    if settings.local_workers:
        check_worker_installed()
    tasks = (demo_tasks(settings.demo, settings.demo_sleep) if settings.demo is not None
             else read_tasks(settings.tasks_path))
    ResultWriter.check(settings.results_path)
    interrupt = Interrupt()
    interrupt.install()
    return Batch(settings, tasks, interrupt).run()


class Batch:
    def __init__(self, settings: MasterSettings, tasks, interrupt: Interrupt) -> None:
        self.settings = settings
        self.writer: ResultWriter | None = None
        self.interrupt = interrupt
        self.dispatcher = Dispatcher(tasks, lease_timeout=settings.lease_timeout,
                                     max_attempts=settings.max_attempts)
        self.service = DispatcherService(self.dispatcher,
                                         heartbeat_interval=settings.heartbeat_interval)

    def run(self) -> int:
        s = self.settings
        server = start_server(self.service, s.bind, s.authkey)
        try:
            # Truncated only now: a port in use leaves an earlier results file as it was.
            self.writer = ResultWriter(s.results_path)
            try:
                return self._serve(server)
            finally:
                self.writer.close()
        finally:
            server.close()

    def _serve(self, server) -> int:
        s = self.settings
        d = self.dispatcher
        host, port = server.address
        log.info("serving %d tasks on %s (lease timeout %g s, max attempts %d)",
                 d.total, format_address((host, port)), s.lease_timeout, s.max_attempts)
        local = None
        if s.local_workers:
            connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            local = LocalWorkers(s.local_workers, format_address((connect_host, port)))
            log.info("started %d local workers", s.local_workers)
        started = time.monotonic()
        deadline = started + s.timeout if s.timeout else None
        next_progress = started + PROGRESS_INTERVAL
        outcome = None
        try:
            while outcome is None:
                self._tick()
                now = time.monotonic()
                if d.done:
                    outcome = "done"
                elif self.interrupt.signum:
                    outcome = "interrupted"
                elif deadline is not None and now >= deadline:
                    outcome = "timeout"
                elif local is not None and not local.check() and not d.alive_workers():
                    outcome = "workers gone"
                else:
                    if now >= next_progress:
                        next_progress = now + PROGRESS_INTERVAL
                        self._progress(now - started)
                    self.service.wait_for_change(TICK)
            self._tick()
            elapsed = time.monotonic() - started
            code = self._report(outcome, elapsed)
            self._stop_workers()
        finally:
            if local is not None:
                local.stop()        # still serving: a late local worker hears STOP too
        return code

    def _tick(self) -> None:
        results, events = self.service.tick()
        self.writer.write(results)
        for event in events:
            log.warning("%s", event)

    def _progress(self, elapsed: float) -> None:
        d = self.dispatcher
        c = d.counters
        log.info("progress: %d/%d done (%d ok, %d failed), %d running, %d workers, %.1f s",
                 d.finished, d.total, c.ok, c.failed, d.running(), len(d.alive_workers()),
                 elapsed)

    def _report(self, outcome: str, elapsed: float) -> int:
        d = self.dispatcher
        c = d.counters
        unfinished = d.total - d.finished
        if outcome == "timeout":
            log.error("--timeout %g s passed with %d of %d tasks unfinished",
                      self.settings.timeout, unfinished, d.total)
        elif outcome == "interrupted":
            log.error("interrupted (signal %d) with %d of %d tasks unfinished",
                      self.interrupt.signum, unfinished, d.total)
        elif outcome == "workers gone":
            log.error("every local worker exited and no other worker is connected; "
                      "%d of %d tasks unfinished", unfinished, d.total)
        rate = d.finished / elapsed if elapsed > 0 else 0.0
        log.info("summary: tasks=%d ok=%d failed=%d unfinished=%d duplicates_dropped=%d "
                 "requeued=%d handed_back=%d workers=%d workers_lost=%d seconds=%.2f "
                 "tasks_per_s=%.0f",
                 d.total, c.ok, c.failed, unfinished, c.duplicates, c.requeued, c.released,
                 len(d.workers), c.workers_lost, elapsed, rate)
        if unfinished:
            return EXIT_UNFINISHED
        return EXIT_TASKS_FAILED if c.failed else EXIT_OK

    def _stop_workers(self) -> None:
        """Answer STOP to every worker call; wait (bounded) until each live worker heard it."""
        self.service.stop()
        waiting = self.service.wait_workers_told(2 * self.settings.heartbeat_interval + 1.0)
        if waiting:
            log.info("%d workers did not call in to hear the batch is over: %s",
                     len(waiting), ", ".join(sorted(waiting)))
