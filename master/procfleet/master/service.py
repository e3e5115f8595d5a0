"""What a service (`procfleet master --serve`) exposes: the workers' calls of DispatcherService
over a JobBoard, and the clients' job calls (`procfleet submit`, FleetExecutor).

A client opens a job, puts its tasks in (as task-file lines, checked here as a task file is),
long-polls for result lines, and closes the job. Each call is the job's heartbeat; a job whose
client is silent for a lease timeout is dropped (JobBoard.expire). Every call is checked whole
before it changes anything, like a worker's.
"""

import logging
import math
import threading
import uuid

from procfleet.shared.manager import RUN, STOP
from procfleet.shared.protocol import RESULT_BATCH_BYTES, check_count, check_name, describe

from .board import JobBoard, JobOptions
from .peers import current_peer
from .rpc import MAX_LONG_POLL, DispatcherService
from .taskfile import task_records

log = logging.getLogger(__name__)

#: task lines in one job_put (a client sends more in several calls)
MAX_PUT = 10_000
#: result lines in one job_results reply (and at most RESULT_BATCH_BYTES of them)
MAX_TAKE = 50_000

#: what a client may set per job, and its check: (type, lowest, highest)
_OPTION_RANGES = {"task_timeout": (float, 0.0, 1e9), "retries": (int, 0, 100),
                  "retry_backoff": (float, 0.0, 1e6), "max_attempts": (int, 1, 1000)}


class JobService(DispatcherService):
    def __init__(self, board: JobBoard, *, heartbeat_interval: float) -> None:
        super().__init__(board, heartbeat_interval=heartbeat_interval,
                         batch="service-" + uuid.uuid4().hex[:12])
        self.board = board
        self.clients = threading.Condition(self.lock)     # clients waiting for results
        self.watch.failures = board.failures

    # -- exposed to clients -------------------------------------------------------------------
    def job_open(self, options: dict) -> dict:
        opts = self._checked("job_open", _job_options, options)
        with self.lock:
            if self.stopping:
                raise ValueError("this master is stopping: submit to it once it is back")
            job = self.board.open_job(opts)
        log.info("job %s (%s) opened by %s", job.id, opts.label or "unnamed", current_peer())
        return {"job": job.id, "lease_timeout": self.board.lease_timeout,
                "heartbeat_interval": self.heartbeat_interval, "max_put": MAX_PUT}

    def job_put(self, job_id: str, lines: list, end: bool, wait: float) -> int:
        """Add task lines to the job (all of them, or as many as there is room for, waiting up
        to `wait` s for some); `end` once its last line is in. Returns how many were taken."""
        self._checked("job_put", _check_put, job_id, lines, end, wait)
        with self.lock:
            job = self.board.job(job_id)
            if job.closed:
                raise ValueError(f"job {job_id} already had its last task")
            tasks, sizes = self._checked("job_put", _parse, lines, job.options,
                                         job.dispatcher.total)
            room = self.board.room(job)
            if room < len(tasks) and wait > 0:
                self.wait_for_room(lambda: self.board.room(job) > 0
                                   or job.id not in self.board.by_id,
                                   min(wait, MAX_LONG_POLL))
                job = self.board.job(job_id)
                room = self.board.room(job)
            taken = min(room, len(tasks))
            if taken:
                self.board.put(job, tasks[:taken], sizes[:taken])
                self.cond.notify_all()          # workers waiting in a long poll
            if end and taken == len(tasks):
                job.closed = True
                self.board.collect_all()
                self.clients.notify_all()       # an empty job is done now
            return taken

    def job_results(self, job_id: str, limit: int, wait: float) -> tuple:
        """(result lines, the job's figures): the lines finished since the last call, waiting
        up to `wait` s for one."""
        self._checked("job_results", _check_results, job_id, limit, wait)
        with self.lock:
            job = self.board.job(job_id)
            if not job.outbox and not job.done and wait > 0 and not self.stopping:
                self.clients.wait_for(lambda: job.outbox or job.done or self.stopping
                                      or job.id not in self.board.by_id,
                                      timeout=min(wait, MAX_LONG_POLL))
                job = self.board.job(job_id)
            lines = self.board.take(job, min(limit, MAX_TAKE), RESULT_BATCH_BYTES)
            figures = job.figures()
            figures["done"] = job.done and not job.outbox
            figures["state"] = STOP if self.stopping else RUN
            figures["workers"] = len(self.board.alive_workers())
            return lines, figures

    def job_cancel(self, job_id: str, seqs: list) -> list:
        """Take back the tasks of `seqs` that no worker holds: they never run."""
        self._checked("job_cancel", _check_cancel, job_id, seqs)
        with self.lock:
            job = self.board.job(job_id)
            cancelled = self.board.cancel(job, seqs)
            if cancelled:
                self.board.collect_all()
                self.clients.notify_all()
            return cancelled

    def job_close(self, job_id: str) -> dict:
        """The client is done with the job: forget it (unfinished tasks that no worker holds
        never run; results still coming are dropped)."""
        self._checked("job_close", check_name, "a job id", job_id)
        with self.lock:
            job = self.board.job(job_id)
            figures = job.figures()
            self.board.drop(job, abandoned=not job.done)
            self.clients.notify_all()
        unfinished = figures["submitted"] - figures["finished"]
        log.info("job %s (%s) closed: %d ok, %d failed%s", job_id, job.options.label or
                 "unnamed", figures["ok"], figures["failed"],
                 f", {unfinished} unfinished" if unfinished else "")
        return figures

    def ping(self) -> dict:
        with self.lock:
            b = self.board
            return {"state": STOP if self.stopping else RUN,
                    "total": sum(j.dispatcher.total for j in b.jobs.values()),
                    "done": b.finished, "workers": len(b.alive_workers()), "jobs": len(b.jobs)}

    def _work_figures(self) -> dict:
        b = self.board
        ok, failed = b.totals()
        jobs = [{key: f[key] for key in ("job", "label", "submitted", "finished", "ok",
                                         "failed", "running", "closed")}
                for f in (job.figures() for job in b.jobs.values())]
        return {"mode": "service", "jobs": jobs, "jobs_done": b.jobs_done,
                "jobs_abandoned": b.jobs_abandoned, "ok": ok, "failed": failed,
                "running": b.running(), "pending": b.pending(),
                "alive_workers": len(b.alive_workers())}

    def _worker_parts(self) -> list[dict]:
        return [job.dispatcher.workers for job in self.board.jobs.values()]

    def _totals(self) -> tuple[int, int]:
        return self.board.totals()

    def counter_totals(self) -> dict[str, int]:
        with self.lock:
            return self.board.counter_totals()

    def watch_durations(self, durations) -> None:
        with self.lock:
            self.board.durations = durations
            for job in self.board.jobs.values():
                job.dispatcher.durations = durations

    def snapshot(self) -> dict:
        with self.lock:
            b = self.board
            return {"jobs": len(b.jobs), "jobs_done": b.jobs_done,
                    "jobs_abandoned": b.jobs_abandoned, "dropped_results": b.dropped_results,
                    "running": b.running(), "pending": b.pending(),
                    "alive_workers": len(b.alive_workers()), "workers": b.seen_workers(),
                    "refused_calls": self.notes["refused"].total}

    def tick(self) -> tuple[list, list, list[str]]:
        with self.lock:
            jobs = len(self.board.jobs)
            leased, results, events = super().tick()
            self.board.collect_all()
            if self.board.ready_jobs or len(self.board.jobs) != jobs:
                self.clients.notify_all()
        return leased, results, events

    def stop(self) -> None:
        with self.lock:
            super().stop()
            self.clients.notify_all()

    def _completed(self) -> None:
        if self.board.ready_jobs:
            self.clients.notify_all()



def _job_options(options) -> JobOptions:
    if type(options) is not dict:
        raise TypeError(f"job options are a dict, not {describe(options)}")
    opts = JobOptions()
    for key, value in options.items():
        if key == "label":
            check_name("a job's label", value)
            opts.label = value
            continue
        if key not in _OPTION_RANGES:
            raise ValueError(f"unknown job option {key!r} (known: label, "
                             f"{', '.join(_OPTION_RANGES)})")
        kind, low, high = _OPTION_RANGES[key]
        if value is None and key == "task_timeout":
            continue
        if type(value) is bool or type(value) not in ((int, float) if kind is float else (int,)) \
                or not (math.isfinite(value) and low <= value <= high) \
                or (key == "task_timeout" and value <= 0):
            raise ValueError(f"job option {key} is {'a number' if kind is float else 'an int'}"
                             f" from {low:g} to {high:g}, not {describe(value)}")
        setattr(opts, key, kind(value))
    return opts


def _check_put(job_id, lines, end, wait) -> None:
    check_name("a job id", job_id)
    if type(lines) is not list or len(lines) > MAX_PUT:
        raise TypeError(f"job_put's lines are a list of at most {MAX_PUT:,} task lines, not "
                        f"{describe(lines)}")
    if type(end) is not bool:
        raise TypeError(f"job_put's end is a bool, not {describe(end)}")
    if type(wait) not in (int, float) or not 0 <= wait <= 3600:
        raise ValueError(f"wait is a number of seconds from 0 to 3600, not {describe(wait)}")


def _parse(lines: list, options: JobOptions, first: int) -> tuple[list, list[int]]:
    """The tasks of a client's lines, checked as a task file's; ValueError naming the first
    bad one (by its number in the job: the client checked them already, so this is a bug or a
    hostile client, and nothing of the call is taken)."""
    tasks, sizes = [], []
    for line in lines:
        if type(line) is not str:
            raise TypeError(f"a task line is text, not {describe(line)}")
    name = options.label or "job"
    for lineno, task, size in task_records(lines, name, options.task_timeout):
        if type(task) is str:
            raise ValueError(f"task {first + lineno} of the job: {task.split(': ', 1)[-1]}")
        tasks.append(task)
        sizes.append(size)
    if len(tasks) != len(lines):
        raise ValueError("a task line is blank")
    return tasks, sizes


def _check_results(job_id, limit, wait) -> None:
    check_name("a job id", job_id)
    check_count("limit", limit)
    if type(wait) not in (int, float) or not 0 <= wait <= 3600:
        raise ValueError(f"wait is a number of seconds from 0 to 3600, not {describe(wait)}")


def _check_cancel(job_id, seqs) -> None:
    check_name("a job id", job_id)
    if type(seqs) is not list or len(seqs) > MAX_PUT * 10:
        raise TypeError(f"seqs are a list of at most {MAX_PUT * 10:,} ints, not "
                        f"{describe(seqs)}")
    for seq in seqs:
        check_count("a seq", seq)
