"""`procfleet submit FILE|-`: one job on a running service, its results as they arrive.

A task file is checked whole first (the batch's checks and messages; exit 2, nothing sent),
then streamed in while results stream out. Stdin is streamed as it is read, each line checked
as it comes, so a live producer's tasks start before it ends; a bad line there stops the job
(exit 2, the results so far written). Exit codes are the batch's: 0 all ok, 1 some failed,
2 bad input, 3 unfinished (--timeout, interrupted, the master stopped or went away).
"""

import logging
import queue
import sys
import threading
import time

import click

from procfleet.shared.cli import Command, fail
from procfleet.shared.errors import (EXIT_OK, EXIT_TASKS_FAILED, EXIT_UNFINISHED, EXIT_USAGE,
                                     ProcfleetError, TaskFileError)
from procfleet.shared.logs import configure_logging
from procfleet.shared.settings import click_options, format_address, load_authkey

from .batch import Interrupt, format_summary, log_stopped_early, write_summary_json
from .client import PUT_LINES, JobClient, MasterGone
from .results import ResultWriter
from .settings import SUBMIT_OPTIONS, SubmitSettings
from .taskfile import BOM, _read_lines, check_lines, task_records

log = logging.getLogger("procfleet.submit")

#: how often a long job logs its progress
PROGRESS_INTERVAL = 5.0
#: task lines read ahead of what the master took
READ_AHEAD = 2 * PUT_LINES


@click.command(cls=Command)
@click.argument("tasks_path", metavar="FILE|-")
@click_options(SUBMIT_OPTIONS)
def submit(tasks_path, **options):
    """Submit a JSON Lines task file (or stdin, '-') as one job to a master started with
    --serve, and write its result lines as they arrive.

    \b
    Exit codes: 0 every task ok; 1 all ended, some failed; 2 usage, configuration
    or input error; 3 --timeout passed, interrupted, or the master stopped or went
    away with tasks unfinished (finished results are still written).
    The key comes from PROCFLEET_AUTHKEY or PROCFLEET_AUTHKEY_FILE.
    """
    try:
        settings = SubmitSettings(tasks_path=tasks_path, authkey=load_authkey(), **options)
        settings.validate()
    except ProcfleetError as exc:
        fail(exc)
    configure_logging(settings.verbose, "submit", settings.log_format)
    try:
        code = run_submit(settings)
    except ProcfleetError as exc:
        fail(exc)
    sys.exit(code)


def run_submit(settings: SubmitSettings) -> int:
    if settings.tasks_path != "-":
        lines = file_lines(settings.tasks_path)     # TaskFileError: exit 2, nothing sent
    else:
        lines = None
    writer = ResultWriter(settings.results_path)
    interrupt = Interrupt()
    interrupt.install()
    stop = threading.Event()
    try:
        client = JobClient(settings.master, settings.authkey, settings.job_options(),
                           connect_timeout=settings.connect_timeout, stop=stop)
    except MasterGone:
        return EXIT_UNFINISHED
    log.info("job %s on master %s", client.job, format_address(settings.master))
    writer.start()
    feeder = Feeder(client, lines if lines is not None else stdin_lines(), stop)
    feeder.start()
    try:
        return Job(settings, client, writer, feeder, interrupt).run()
    finally:
        stop.set()
        client.close()
        writer.close()


class Feeder(threading.Thread):
    """Reads task lines (in a reader thread, so a slow producer's lines go out as they come)
    and sends them; `error` is set for a bad stdin line or a lost master."""

    def __init__(self, client: JobClient, lines, stop: threading.Event) -> None:
        super().__init__(name="procfleet-submit-feed", daemon=True)
        self.client, self.lines, self.stop = client, lines, stop
        self.error: ProcfleetError | None = None
        self.queue: queue.Queue = queue.Queue(READ_AHEAD)
        self.reader = threading.Thread(target=self._read, name="procfleet-submit-read",
                                       daemon=True)

    def _read(self) -> None:
        try:
            for line in self.lines:
                while not self.stop.is_set():
                    try:
                        self.queue.put(line, timeout=1.0)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
        except TaskFileError as exc:
            self.error = exc
        finally:
            self.queue.put(None)        # the end (the queue has room: the sender drains it)

    def run(self) -> None:
        self.reader.start()
        try:
            while not self.stop.is_set():
                batch = [self.queue.get()]
                while batch[-1] is not None and len(batch) < PUT_LINES:
                    try:
                        batch.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                end = batch[-1] is None
                if end:
                    batch.pop()
                    if self.error is not None:
                        return              # a bad line: the job stops (Job.run)
                self.client.put(batch, end=end)
                if end:
                    return
        except ProcfleetError as exc:
            self.error = exc


class Job:
    """The results side: write lines as they arrive, log progress, decide the exit code."""

    def __init__(self, settings: SubmitSettings, client: JobClient, writer: ResultWriter,
                 feeder: Feeder, interrupt: Interrupt) -> None:
        self.settings, self.client, self.writer = settings, client, writer
        self.feeder, self.interrupt = feeder, interrupt

    def run(self) -> int:
        started = time.monotonic()
        deadline = started + self.settings.timeout if self.settings.timeout else None
        next_progress = started + PROGRESS_INTERVAL
        figures: dict = {}
        outcome = None
        while outcome is None:
            try:
                lines, figures = self.client.results()
            except MasterGone as exc:
                self.writer.write_lines(exc.lines)
                figures = exc.figures or figures
                log.error("%s", exc)
                outcome = "master gone"
                break
            self.writer.write_lines(lines)
            now = time.monotonic()
            if figures["done"]:
                outcome = "done"
            elif isinstance(self.feeder.error, TaskFileError):
                outcome = "bad input"
            elif isinstance(self.feeder.error, ProcfleetError):
                log.error("%s", self.feeder.error)
                outcome = "master gone"
            elif self.interrupt.signum:
                outcome = "interrupted"
            elif deadline is not None and now >= deadline:
                outcome = "timeout"
            elif now >= next_progress:
                next_progress = now + PROGRESS_INTERVAL
                log.info("progress: %d/%d%s done (%d ok, %d failed), %d leased to workers, "
                         "%d workers, %.1f s", figures["finished"], figures["submitted"],
                         "" if figures["closed"] else "+", figures["ok"], figures["failed"],
                         figures["leased"], figures["workers"], now - started)
        return self._report(outcome, figures, time.monotonic() - started)

    def _report(self, outcome: str, figures: dict, elapsed: float) -> int:
        if outcome != "master gone":
            closing = self.client.close()       # what no worker holds never runs
            if closing is not None:
                figures = {**closing, "workers": figures.get("workers", 0)}
        total = figures.get("submitted", 0)
        unfinished = total - figures.get("finished", 0) + figures.get("cancelled", 0)
        if outcome == "bad input":
            log.error("%s", self.feeder.error)
        elif outcome in ("timeout", "interrupted"):
            log_stopped_early(outcome, self.settings.timeout if outcome == "timeout"
                              else self.interrupt.signum, unfinished, total)
        summary = {"job": self.client.job, "tasks": total, "ok": figures.get("ok", 0),
                   "failed": figures.get("failed", 0), "unfinished": unfinished,
                   "duplicates_dropped": figures.get("duplicates_dropped", 0),
                   "requeued": figures.get("requeued", 0), "retried": figures.get("retried", 0),
                   "crashed": figures.get("crashed", 0), "workers": figures.get("workers", 0),
                   "seconds": round(elapsed, 2),
                   "tasks_per_s": round(figures.get("finished", 0) / elapsed) if elapsed else 0}
        log.info("%s", format_summary(summary), extra={"summary": summary})
        if self.settings.summary_json:
            write_summary_json(self.settings.summary_json, summary)
        if outcome == "bad input":
            return EXIT_USAGE
        if outcome != "done" or unfinished:
            return EXIT_UNFINISHED
        return EXIT_TASKS_FAILED if summary["failed"] else EXIT_OK


def file_lines(path: str) -> "FileLines":
    """The task file's lines, once it passed the batch's checks (TaskFileError if not)."""
    try:
        check_lines(lambda: _read_lines(open(path, encoding="utf-8", newline="")), path)
    except OSError as exc:
        raise TaskFileError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from None
    return FileLines(path)


class FileLines:
    """The non-blank lines of a checked task file, read again as they are sent."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __iter__(self):
        with open(self.path, encoding="utf-8", newline="") as fh:
            for lineno, line in enumerate(fh, start=1):
                if lineno == 1 and line.startswith(BOM):
                    line = line[1:]
                line = line.rstrip("\r\n")
                if line.strip():
                    yield line


def stdin_lines():
    """Stdin's task lines as they come, each checked as a task file's line (TaskFileError at
    the first bad one). Ids are not checked for duplicates: that needs the whole input."""
    current = [None]

    def raw():
        for line in _read_lines(sys.stdin):
            current[0] = line
            yield line

    for lineno, task, _size in task_records(raw(), "<stdin>", None):
        if type(task) is str:
            raise TaskFileError(f"{task}; the job stopped there")
        line = current[0]
        if lineno == 1 and line.startswith(BOM):
            line = line[1:]
        yield line.rstrip("\r\n")

