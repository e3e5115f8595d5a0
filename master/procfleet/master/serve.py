"""`procfleet master --serve`: a service that runs the jobs clients submit until SIGTERM."""

import logging
import sys
import time

from procfleet.shared.compat import untested_python_warning
from procfleet.shared.settings import format_address
from procfleet.shared.tuning import tune_gc

from .batch import REPLY_GRACE, SWITCH_INTERVAL, TICK, Interrupt
from .board import JobBoard
from .connections import start_server
from .localworkers import LocalWorkers, check_worker_installed, reachable_host
from .service import JobService
from .settings import MasterSettings
from .web import start_web

log = logging.getLogger(__name__)

#: how often an idle service logs what it holds (only when that changed)
STATUS_INTERVAL = 30.0
#: once told to stop, how long clients of open jobs get to hear it
CLIENT_GRACE = 2.0


def run_service(settings: MasterSettings, interrupt: Interrupt | None = None,
                ready=None, imports: tuple[str, ...] = (), worker_env: dict | None = None) -> int:
    """Serve jobs until SIGTERM/SIGINT (or `interrupt` is set); return the exit code (0).
    For FleetExecutor: `ready(address)` is called once the port is open, and local workers
    import `imports` and run with `worker_env`."""
    if settings.local_workers:
        check_worker_installed()
    if interrupt is None:
        interrupt = Interrupt()
        interrupt.install()
        sys.setswitchinterval(SWITCH_INTERVAL)
        tune_gc()
    if (untested := untested_python_warning()) is not None:
        log.warning("%s", untested)
    board = JobBoard(lease_timeout=settings.lease_timeout)
    service = JobService(board, heartbeat_interval=settings.heartbeat_interval)
    server = start_server(service, settings.bind, settings.authkey)
    local = web = None
    try:
        if settings.metrics:
            web = start_web(service, server, settings.metrics)
        host, port = server.address
        log.info("serving jobs on %s (lease timeout %g s); submit with `procfleet submit`",
                 format_address((host, port)), settings.lease_timeout)
        if settings.local_workers:
            local = LocalWorkers(settings.local_workers, format_address((reachable_host(host), port)),
                                 imports=imports, authkey=settings.authkey, env=worker_env)
            log.info("started %d local workers", settings.local_workers)
        if ready is not None:
            ready((host, port))
        _loop(service, interrupt, local)
        open_jobs = service.snapshot()["jobs"]
        log.info("stopping: %s", f"{open_jobs} jobs unfinished, their clients are told"
                 if open_jobs else "no job was running")
        service.stop()
        with service.lock:
            service.clients.wait_for(lambda: not board.jobs, CLIENT_GRACE)
        service.wait_workers_told(2 * settings.heartbeat_interval + 1.0)
        server.wait_answered(REPLY_GRACE)
        return 0
    finally:
        if local is not None:
            local.stop()
        if web is not None:
            web.close()
        server.close()


def _loop(service: JobService, interrupt: Interrupt, local) -> None:
    last_status, next_status = None, time.monotonic() + STATUS_INTERVAL
    while not interrupt.signum:
        _leased, _results, events = service.tick()
        for event in events:
            log.warning("%s", event)
        if local is not None:
            local.check()
        now = time.monotonic()
        if now >= next_status:
            next_status = now + STATUS_INTERVAL
            s = service.snapshot()
            status = (s["jobs"], s["jobs_done"], s["jobs_abandoned"], s["alive_workers"])
            if status != last_status:
                last_status = status
                log.info("status: %d jobs open (%d running tasks, %d waiting), %d done, %d "
                         "abandoned, %d workers", s["jobs"], s["running"], s["pending"],
                         s["jobs_done"], s["jobs_abandoned"], s["alive_workers"])
        service.wait_for_change(TICK)
