"""One batch, start to end: load, serve, watch leases, write results, tell workers to stop."""

import json
import logging
import os
import select
import signal
import sys
import threading
import time
import uuid
from contextlib import ExitStack

from procfleet.shared.compat import untested_python_warning
from procfleet.shared.errors import (EXIT_OK, EXIT_TASKS_FAILED, EXIT_UNFINISHED, ProcfleetError,
                                     TaskFileError)
from procfleet.shared.settings import format_address
from procfleet.shared.tuning import tune_gc

from .board import MAX_BACKLOG
from .leases import Dispatcher, Feed
from .journal import Journal, JournalledDispatcher, restore
from .localworkers import LocalWorkers, check_worker_installed, reachable_host
from .progress import make_progress
from .results import ResultWriter
from .connections import start_server
from .rpc import DispatcherService
from .settings import MasterSettings
from .taskfile import DemoSource, StdinStream, open_source
from .web import start_web

log = logging.getLogger(__name__)

#: at the end, how long the replies (STOP) already decided may take to go out
REPLY_GRACE = 2.0

#: how often the master checks leases, writes results and looks at its local workers
TICK = 0.1
#: the GIL hand-off interval in the master (CPython's default is 5 ms): one server thread per
#: worker waits for the GIL after every socket read and write, so under load a shorter interval
#: keeps a round trip from queueing behind another thread's 5 ms slice
SWITCH_INTERVAL = 0.001


#: what opens the master's closing log line; a JSON object follows it on the same line
SUMMARY = "summary: "


def summarize(snapshot: dict, *, ok: int, failed: int, seconds: float, work_seconds: float,
              tasks_per_s: float) -> dict:
    """The batch's summary object, from a service snapshot (README, "The summary line"):
    `ok` and `failed` cover the whole batch (a resumed one's too), the rest this run
    (`per_worker` too: each worker id's results that ended a task, ok or failed)."""
    s = snapshot
    return {"tasks": s["total"], "ok": ok, "failed": failed,
            "unfinished": s["total"] - s["finished"], "duplicates_dropped": s["duplicates"],
            "requeued": s["requeued"], "unacked": s["unacked"], "handed_back": s["released"],
            "retried": s["retried"], "crashed": s["crashed"], "stale": s["stale"],
            "workers": s["workers"], "workers_lost": s["workers_lost"],
            "refused_calls": s["refused_calls"], "seconds": round(seconds, 2),
            "work_seconds": round(work_seconds, 2), "tasks_per_s": round(tasks_per_s),
            "per_worker": s.get("per_worker", {})}


def format_summary(summary: dict) -> str:
    """The summary as the master logs it: `summary: ` and the object as JSON, on one line."""
    return SUMMARY + json.dumps(summary)


def write_summary_json(path: str, summary: dict) -> None:
    """Write `summary` to `path` as one JSON object (--summary-json), whole or not at all: a
    reader never sees half a file (written beside it, then renamed over it). A failure is
    logged, not raised: the batch is over and its results are written."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(summary, fh)
            fh.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.error("--summary-json %s: cannot write it: %s", path, exc.strerror or exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def parse_summary(text: str, actor: str = "master") -> dict | None:
    """The summary object of the last summary line in `text` (a master's stderr, or its
    container's logs), or None if there is none. A summary line is `HH:MM:SS master: summary: `
    and a JSON object (`submit: summary: ` for `procfleet submit`: actor="submit"); a line
    that only quotes one (a refused worker id, say) is not."""
    for line in reversed(text.splitlines()):
        prefix, found, body = line.partition(": " + SUMMARY)
        if not found or prefix_actor(prefix) != actor or not body.startswith("{"):
            continue
        try:
            summary = json.loads(body)
        except ValueError:
            continue
        if type(summary) is dict:
            return summary
    return None


def log_stopped_early(outcome: str, cause: float | int, unfinished: int, total: int) -> None:
    """The error line of a batch or job that --timeout (`cause`: its seconds) or a signal
    (`cause`: its number) ended unfinished."""
    if outcome == "timeout":
        log.error("--timeout %g s passed with %d of %d tasks unfinished", cause, unfinished,
                  total)
    else:
        log.error("interrupted (signal %d) with %d of %d tasks unfinished", cause, unfinished,
                  total)


def prefix_actor(prefix: str) -> str:
    """`master` of a log line's prefix `HH:MM:SS master`."""
    return prefix.partition(" ")[2]


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
    """Run one batch; return the exit code. ConfigError propagates before anything is served;
    a task file changed during the batch (exit 2) or a failed write (exit 3) propagates as a
    ProcfleetError once the workers were told to stop."""
    if settings.local_workers:
        check_worker_installed()
    with ExitStack() as cleanup:
        source = (DemoSource(settings.demo, settings.demo_sleep, settings.task_timeout)
                  if settings.demo is not None
                  else open_source(settings.tasks_path, settings.task_timeout))
        cleanup.callback(source.close)
        # Opened and locked now, emptied only once the batch is served.
        writer = ResultWriter(settings.results_path, resumable=bool(settings.journal_path))
        cleanup.callback(writer.close)
        journal = None
        if settings.journal_path:
            journal = Journal(settings.journal_path)
            cleanup.callback(journal.close)
        interrupt = Interrupt()
        interrupt.install()
        sys.setswitchinterval(SWITCH_INTERVAL)
        tune_gc()
        return Batch(settings, source, interrupt, journal, writer).run()


#: tasks read from stdin handed to the dispatcher at once (fewer when stdin has no more yet)
STREAM_SLICE = 512


def feed_stream(source: StdinStream, service: DispatcherService) -> None:
    """Read `source` (stdin) into the batch's dispatcher as lines arrive: in slices while
    more is ready, at once when the producer pauses, holding at most MAX_BACKLOG unleased.
    A bad line stops the reading (source.error; the batch ends there)."""
    d = service.dispatcher
    pending: list = []
    sizes: list[int] = []

    def hand_over() -> None:
        with service.lock:
            service.wait_for_room(lambda: d._untouched < MAX_BACKLOG, timeout=None)
            first = d.total
            d.extend([task._replace(seq=first + i) for i, task in enumerate(pending)], sizes)
            d.trim_done()
            service.cond.notify_all()
        pending.clear()
        sizes.clear()

    try:
        for task, size in source.records():
            pending.append(task)
            sizes.append(size)
            if len(pending) >= STREAM_SLICE or not _more_ready(sys.stdin):
                hand_over()
                if service.stopping:
                    return
        if pending:
            hand_over()
    except TaskFileError as exc:
        source.error = exc
    finally:
        with service.lock:
            d.open_input = False
            service.cond.notify_all()


def _more_ready(stream) -> bool:
    """Whether reading `stream` now would not wait (its buffer or its fd has data)."""
    try:
        return bool(select.select([stream], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Batch:
    def __init__(self, settings: MasterSettings, source, interrupt: Interrupt,
                 journal: Journal | None = None, writer: ResultWriter | None = None) -> None:
        self.settings, self.source, self.interrupt = settings, source, interrupt
        self.writer, self.journal = writer, journal     # no writer: run() makes one
        self.resumed = False
        batch, done, restored = "", (), ()
        if journal is not None:
            batch, self.resumed = journal.open_batch(source.name, source.fingerprint,
                                                     source.total)
            if self.resumed:
                done, restored = list(journal.done()), restore(source, journal.in_flight())
        else:
            batch = uuid.uuid4().hex[:12]
        # With a journal, each lease is journalled before its worker gets it: a master killed
        # in between would otherwise count that task's next lease as its first.
        kind = Dispatcher if journal is None else JournalledDispatcher
        streamed = isinstance(source, StdinStream)
        self.dispatcher = kind(Feed() if streamed else source, source.total,
                               lease_timeout=settings.lease_timeout,
                               max_attempts=settings.max_attempts, retries=settings.retries,
                               retry_backoff=settings.retry_backoff, done=done,
                               restored=restored, sizes=getattr(source, "sizes", None))
        self.dispatcher.open_input = streamed
        if journal is not None:
            self.dispatcher.journal = journal
            self.dispatcher.leased_log = []
            if self.resumed:
                log.info("resuming batch %s from journal %s: %d of %d tasks already done, "
                         "%d were in flight and run again", batch, journal.path,
                         self.dispatcher.finished, source.total, len(restored))
        self.service = DispatcherService(self.dispatcher, batch=batch,
                                         heartbeat_interval=settings.heartbeat_interval,
                                         wait_workers=settings.wait_workers)

    def run(self) -> int:
        s = self.settings
        if (untested := untested_python_warning()) is not None:
            log.warning("%s", untested)
        if self.writer is None:
            self.writer = ResultWriter(s.results_path, resumable=self.journal is not None)
        server = start_server(self.service, s.bind, s.authkey)
        try:
            web = start_web(self.service, server, s.metrics) if s.metrics else None
        except BaseException:
            server.close()
            raise
        if isinstance(self.source, StdinStream):
            threading.Thread(target=feed_stream, args=(self.source, self.service),
                             name="procfleet-stdin", daemon=True).start()
        try:
            # Emptied only now: a port in use leaves an earlier results file as it was.
            self.writer.start()
            if self.resumed:
                self.writer.write_lines(self.journal.results())
            return self._serve(server)
        finally:
            if web is not None:
                web.close()
            server.close()

    def _serve(self, server) -> int:
        s = self.settings
        d = self.dispatcher
        host, port = server.address
        log.info("serving %d tasks on %s (lease timeout %g s, max attempts %d)",
                 d.total, format_address((host, port)), s.lease_timeout, s.max_attempts)
        self.progress = make_progress(time.monotonic())
        local = None
        try:
            if s.local_workers:
                local = LocalWorkers(s.local_workers, format_address((reachable_host(host), port)),
                                     log_format=s.log_format, relay_stderr=self.progress.draws)
                log.info("started %d local workers", s.local_workers)
            started = time.monotonic()
            self.done_at_start = d.finished
            deadline = started + s.timeout if s.timeout else None
            outcome = failure = None
            while outcome is None:
                try:
                    self._tick()
                except ProcfleetError as exc:       # the results or the journal
                    outcome, failure = "write failed", exc
                    break
                now = time.monotonic()
                outcome, failure = self._ending(now, deadline, local)
                if outcome is None:
                    if self.progress.due(now):
                        self._progress(now - started)
                    self.service.wait_for_change(TICK)
            if outcome != "write failed":
                try:
                    self._tick()
                except ProcfleetError as exc:
                    failure = exc
            self.service.flush_debug()
            now = time.monotonic()
            elapsed = now - started
            self.progress.close(self.service.snapshot(), now, elapsed)
            code = self._report(outcome, elapsed)
            self._stop_workers(server)
        finally:
            self.progress.stop()    # the terminal back, whatever ended the loop
            if local is not None:
                local.stop()        # still serving: a late local worker hears STOP too
        if failure is not None:
            raise failure
        return code

    def _ending(self, now: float, deadline: float | None, local) -> tuple:
        """(why the batch ends now, the error to raise or None), or (None, None) to go on."""
        bad_input = getattr(self.source, "error", None)
        if bad_input is not None:
            return "bad input", bad_input
        changed = self.source.check_unchanged()
        if changed is not None:
            return "changed", TaskFileError(
                f"--tasks {self.source.name} changed while the batch ran: {changed}; nothing "
                "more is dispatched; run the batch again with the file as it was checked"
                + (" (or with a new --journal)" if self.journal else ""))
        if self.dispatcher.done:
            return "done", None
        if self.interrupt.signum:
            return "interrupted", None
        if deadline is not None and now >= deadline:
            return "timeout", None
        if (local is not None and not local.check()
                and not self.service.snapshot()["alive_workers"]):
            return "workers gone", None
        return None, None

    def _tick(self) -> None:
        """Journal and write what finished; ProcfleetError (exit 3) if either write failed."""
        leased, results, events = self.service.tick()
        if self.journal is not None:
            failed = self.dispatcher.lease_failed    # a lease's own journal write
            if failed is not None:
                raise failed
            self.journal.record(leased, results)   # committed before the file sees them
        self.writer.write_lines([line for _seq, line, _ok in results])
        for event in events:
            log.warning("%s", event)

    def _progress(self, elapsed: float) -> None:
        # Server threads change the dispatcher all the time: read it only through the
        # service's snapshot, under its lock.
        self.progress.show(self.service.snapshot(), time.monotonic(), elapsed)

    def _report(self, outcome: str, elapsed: float) -> int:
        s = self.service.snapshot()
        total = s["total"]
        unfinished = total - s["finished"]
        ok, failed = s["ok"], s["failed"]
        if self.resumed:    # the summary covers the whole batch, before the restart too
            ok, failed = self._totals_with_journal(s["finished"])
        if outcome in ("timeout", "interrupted"):
            log_stopped_early(outcome, self.settings.timeout if outcome == "timeout"
                              else self.interrupt.signum, unfinished, total)
        elif outcome == "workers gone":
            log.error("every local worker exited and no other worker is connected; "
                      "%d of %d tasks unfinished", unfinished, total)
        # Throughput counts from the first lease (workers start at their own pace) to now;
        # nothing leased is no work.
        first = s["first_lease_at"]
        work = time.monotonic() - first if first is not None else 0.0
        rate = (s["finished"] - self.done_at_start) / work if work > 0 else 0.0
        summary = summarize(s, ok=ok, failed=failed, seconds=elapsed, work_seconds=work,
                            tasks_per_s=rate)
        log.info("%s", format_summary(summary), extra={"summary": summary})
        if self.settings.summary_json:
            write_summary_json(self.settings.summary_json, summary)
        if unfinished:
            return EXIT_UNFINISHED
        return EXIT_TASKS_FAILED if failed else EXIT_OK

    def _totals_with_journal(self, finished: int) -> tuple[int, int]:
        ok = self.journal.count_ok()
        return ok, finished - ok

    def _stop_workers(self, server) -> None:
        """Answer STOP to every worker call; wait (bounded) until each live worker heard it."""
        self.service.stop()
        waiting = self.service.wait_workers_told(2 * self.settings.heartbeat_interval + 1.0)
        server.wait_answered(REPLY_GRACE)
        if waiting:
            log.info("%d workers did not call in to hear the batch is over: %s",
                     len(waiting), ", ".join(sorted(waiting)))
