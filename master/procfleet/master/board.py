"""Several jobs on one fleet: the service mode's state machine (`procfleet master --serve`).

A plain class, no threads, no I/O, driven by a clock like the Dispatcher. Each job is a
Dispatcher of its own (leases, first result wins, requeue, retries), fed by its client as tasks
stream in. The board stands in front of them with the Dispatcher's worker-facing methods, so the
same DispatcherService serves a batch or a board:

- seqs on the wire are global: job number << JOB_BITS, plus the task's seq in its job, so a
  worker's outcomes find their job without the worker knowing jobs exist;
- worker liveness is the board's (one registry); a silent worker loses what it held in every job;
- every lease is shared out among the jobs that have tasks waiting, a round robin per call, so a
  small job submitted while a big one runs is leased at once instead of after it;
- a job whose client went silent for a lease timeout is dropped: its unleased tasks never run,
  results that still arrive for it are counted and dropped, and its memory goes with it.
"""

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from procfleet.shared.protocol import Task

from .leases import BigLineSizes, Counters, Dispatcher, Feed

#: a job's tasks have seqs below 2**JOB_BITS; the job number is above
JOB_BITS = 40
#: jobs open at once (each costs a dispatcher; a client opens one per FleetExecutor or submit)
MAX_JOBS = 256
#: tasks of one job held in the master before a worker leases them; past it, job_put accepts
#: nothing until workers catch up (the client waits: bounded memory for any producer)
MAX_BACKLOG = 20_000
#: ...and bytes of their lines
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
#: result lines of one job waiting for its client; past it the job leases nothing more
MAX_OUTBOX = 50_000


@dataclass(slots=True)
class JobOptions:
    task_timeout: float | None = None
    retries: int = 0
    retry_backoff: float = 1.0
    max_attempts: int = 3
    label: str = ""          # what the client calls it (a file name), for errors and logs


@dataclass(slots=True)
class Job:
    id: str
    number: int
    options: JobOptions
    dispatcher: Dispatcher
    last_seen: float
    base: int = 0
    closed: bool = False      # the client sent its last task
    backlog_bytes: int = 0    # bytes of lines not yet leased (roughly: counted at put, freed
    #                           when the backlog is empty)
    outbox: deque = field(default_factory=deque)    # result lines for the client, in order
    delivered: int = 0        # result lines handed to the client

    @property
    def done(self) -> bool:
        return self.closed and self.dispatcher.done

    def backlog(self) -> int:
        """Tasks put but not yet leased."""
        return self.dispatcher._untouched

    def leasable(self) -> bool:
        return len(self.outbox) < MAX_OUTBOX and self.dispatcher.has_pending()

    def figures(self) -> dict:
        d = self.dispatcher
        c = d.counters
        return {"job": self.id, "label": self.options.label, "submitted": d.total,
                "closed": self.closed, "finished": d.finished, "ok": c.ok, "failed": c.failed,
                "cancelled": c.cancelled, "running": d.running(), "retried": c.retried,
                "requeued": c.requeued, "crashed": c.crashed,
                "duplicates_dropped": c.duplicates, "done": self.done}


class JobBoard:
    """The jobs of a service, behind the Dispatcher's worker-facing methods (see module doc)."""

    def __init__(self, *, lease_timeout: float, clock: Callable[[], float] = time.monotonic,
                 rng=None) -> None:
        self.lease_timeout = lease_timeout
        self.clock = clock
        self.rng = rng
        # worker liveness, sessions and admission: a dispatcher that never has tasks
        self.registry = Dispatcher((), 0, lease_timeout=lease_timeout, max_attempts=1,
                                   clock=clock)
        self.jobs: dict[int, Job] = {}          # by number
        self.by_id: dict[str, Job] = {}
        self._numbers = 0
        self._turn = 0                          # where the next lease's round robin starts
        self.counters = Counters()              # unacked, across jobs (DispatcherService)
        self.dropped_results = 0                # results of jobs that were gone
        self.jobs_done = 0
        self.jobs_abandoned = 0
        self.events: list[tuple[str, str]] = []
        self.ready_jobs: set[str] = set()       # jobs with new result lines since last asked
        self.failures: deque = deque(maxlen=20)  # the latest failed result lines, any job's
        self.dropped = Counters()               # the counters of the jobs no longer open
        self.durations = None                   # each job's Dispatcher.durations

    # -- what DispatcherService reads -------------------------------------------------------
    total = 2 ** 63 - 1           # the seq limit of a worker's outcomes: any job's
    done = False                  # a service is never done: it stops when told

    @property
    def workers(self):
        return self.registry.workers

    @property
    def first_lease_at(self):
        return self.registry.first_lease_at

    @property
    def finished(self) -> int:
        return sum(job.dispatcher.finished for job in self.jobs.values())

    def pending(self) -> int:
        return sum(job.dispatcher.pending() for job in self.jobs.values())

    def has_pending(self) -> bool:
        return any(job.leasable() for job in self.jobs.values())

    def running(self) -> int:
        return sum(job.dispatcher.running() for job in self.jobs.values())

    def admit(self, worker_id: str) -> str | None:
        return self.registry.admit(worker_id)

    def totals(self) -> tuple[int, int]:
        """(ok, failed) results of every job since the service started."""
        jobs = self.jobs.values()
        return (self.dropped.ok + sum(job.dispatcher.counters.ok for job in jobs),
                self.dropped.failed + sum(job.dispatcher.counters.failed for job in jobs))

    def counter_totals(self) -> dict[str, int]:
        """Each of leases.Counters over every job since the service started."""
        totals = self.dropped.as_dict()
        for job in self.jobs.values():
            for name, count in job.dispatcher.counters.as_dict().items():
                totals[name] += count
        return totals

    def seen_workers(self) -> int:
        return self.registry.seen_workers()

    def alive_workers(self) -> list[str]:
        return self.registry.alive_workers()

    def touch(self, worker_id: str):
        return self.registry.touch(worker_id)

    def wants(self, worker_id: str):
        return self.registry.wants(worker_id)

    def take_leased(self) -> list:
        return []                 # no journal in service mode

    def take_results(self) -> list:
        return []                 # results go to each job's outbox as they arrive

    def take_events(self) -> list[tuple[str, str]]:
        events, self.events = self.events, []
        events += self.registry.take_events()
        for job in self.jobs.values():
            for kind, text in job.dispatcher.take_events():
                events.append((kind, f"job {job.id}: {text}"))
        return events

    # -- worker calls -----------------------------------------------------------------------
    def new_session(self, worker_id: str, session: str) -> int:
        lost = 0
        for job in self.jobs.values():
            if worker_id in job.dispatcher.workers:
                lost += job.dispatcher.new_session(worker_id, session)
        self.registry.new_session(worker_id, session)
        return lost

    def begin_call(self, worker_id: str, session: str, call: int, acked: int) -> bool:
        if not self.registry.begin_call(worker_id, session, call, acked):
            return False
        for job in self.jobs.values():
            d = job.dispatcher
            if worker_id in d.workers:
                before = d.counters.unacked
                d.begin_call(worker_id, session, call, acked)
                self.counters.unacked += d.counters.unacked - before
        return True

    def lease(self, worker_id: str, want: int, call: int | None = None) -> list:
        """Up to `want` tasks, shared out among the jobs with tasks waiting: each in turn gets
        an equal part of what is still wanted (what one cannot use goes to the next), and the
        turn moves on every call."""
        if want <= 0:
            self.registry.touch(worker_id)
            return []
        worker = self.registry.wants(worker_id)
        if call is not None and call != worker.last_call:
            return []
        jobs = [job for job in self.jobs.values() if job.leasable()]
        if not jobs:
            return []
        start = self._turn % len(jobs)
        self._turn += 1
        jobs = jobs[start:] + jobs[:start]
        leased: list[tuple] = []
        # A job's fair share counts every worker that asks for work, not only those that
        # leased from it already: else the first to ask takes a new job whole.
        sharers = self.registry.sharers()
        for index, job in enumerate(jobs):
            share = -(-(want - len(leased)) // (len(jobs) - index))
            self._lease_from(job, worker, share, call, leased, sharers)
            if len(leased) >= want:
                break
        if len(leased) < want and len(jobs) > 1:
            for job in jobs:            # what a job could not use, in turn to the others
                if job.leasable():
                    self._lease_from(job, worker, want - len(leased), call, leased, sharers)
                    if len(leased) >= want:
                        break
        if leased and self.registry.first_lease_at is None:
            self.registry.first_lease_at = self.clock()
        return leased

    def _lease_from(self, job: Job, worker, count: int, call: int | None,
                    leased: list[tuple], sharers: int) -> None:
        """Lease up to `count` of `job`'s tasks to `worker`, appended to `leased` with their
        global seqs."""
        d = job.dispatcher
        if call is not None and worker.id not in d.workers:
            d.begin_call(worker.id, worker.session, call, 0)        # its first call here
        base = job.base
        for task in d.lease(worker.id, count, call, sharers):
            leased.append((base + task[0], task[1], task[2], task[3], task[4], task[5]))
        if job.backlog() == 0:
            job.backlog_bytes = 0

    def complete(self, worker_id: str, outcomes: Iterable[tuple], encoded: bool = False) -> None:
        self.registry.touch(worker_id)
        groups: dict[int, list] = {}
        for outcome in outcomes:
            groups.setdefault(outcome[0] >> JOB_BITS, []).append(outcome)
        for number, group in groups.items():
            job = self.jobs.get(number)
            if job is None:
                self.dropped_results += len(group)      # its client is gone, or it was closed
                continue
            base = job.base
            job.dispatcher.complete(worker_id, [(o[0] - base, o[1], o[2], o[3]) for o in group],
                                    encoded)
            self._collect(job)

    def release(self, worker_id: str, seqs: Iterable[int]) -> int:
        self.registry.touch(worker_id)
        groups: dict[int, list[int]] = {}
        for seq in seqs:
            groups.setdefault(seq >> JOB_BITS, []).append(seq)
        returned = 0
        for number, group in groups.items():
            job = self.jobs.get(number)
            if job is not None:
                returned += job.dispatcher.release(worker_id, [s - job.base for s in group])
        return returned

    def leave(self, worker_id: str) -> int:
        returned = 0
        for job in self.jobs.values():
            if worker_id in job.dispatcher.workers:
                returned += job.dispatcher.leave(worker_id)
        self.registry.leave(worker_id)
        return returned

    def expire(self) -> list[str]:
        """Workers silent past the lease timeout lose what they held in every job; clients
        silent as long lose their jobs."""
        expired = self.registry.expire()
        self.registry.take_events()         # its lines say "requeued 0": the jobs hold tasks
        now = self.clock()
        for worker_id in expired:
            requeued = sum(job.dispatcher.lose_worker(worker_id) for job in self.jobs.values())
            self.events.append(("silent", f"worker {worker_id} silent for more than "
                                f"{self.lease_timeout:g} s: requeued {requeued} tasks"))
        for job in list(self.jobs.values()):
            if now - job.last_seen > self.lease_timeout:
                unfinished = job.dispatcher.total - job.dispatcher.finished
                self.drop(job, abandoned=True)
                self.events.append(("client gone", f"job {job.id} ({job.options.label}): its "
                                    f"client was silent for more than {self.lease_timeout:g} s;"
                                    f" dropped it with {unfinished} tasks unfinished"))
        self.collect_all()
        return expired

    # -- client calls -----------------------------------------------------------------------
    def open_job(self, options: JobOptions) -> Job:
        if len(self.jobs) >= MAX_JOBS:
            raise ValueError(f"{len(self.jobs)} jobs are open on this master (MAX_JOBS); "
                             "submit again once one has finished")
        self._numbers += 1
        number = self._numbers
        d = Dispatcher(Feed(), 0, lease_timeout=self.lease_timeout,
                       max_attempts=options.max_attempts, retries=options.retries,
                       retry_backoff=options.retry_backoff, sizes=BigLineSizes(),
                       clock=self.clock, **({"rng": self.rng} if self.rng else {}))
        d.durations = self.durations
        job = Job(uuid.uuid4().hex, number, options, d, self.clock(), base=number << JOB_BITS)
        self.jobs[number] = job
        self.by_id[job.id] = job
        return job

    def job(self, job_id: str) -> Job:
        """The open job `job_id`, touched (every client call is its heartbeat); ValueError if
        there is none."""
        job = self.by_id.get(job_id)
        if job is None:
            raise ValueError(f"no job {job_id!r} on this master: it finished and was closed, "
                             f"or its client was silent for more than {self.lease_timeout:g} s "
                             "and it was dropped")
        job.last_seen = self.clock()
        return job

    def room(self, job: Job) -> int:
        """How many more tasks `job` may put now (MAX_BACKLOG, MAX_BACKLOG_BYTES)."""
        if job.backlog_bytes >= MAX_BACKLOG_BYTES:
            return 0
        return max(0, MAX_BACKLOG - job.backlog())

    def put(self, job: Job, tasks: list[Task], sizes: list[int]) -> None:
        """Add checked tasks (seqs from 0, in the order the client sent them) to `job`."""
        d = job.dispatcher
        first = d.total
        d.extend([task._replace(seq=first + i) for i, task in enumerate(tasks)], sizes)
        job.backlog_bytes += sum(sizes)

    def take(self, job: Job, limit: int, max_bytes: int) -> list[str]:
        """Up to `limit` result lines of `job`, oldest first, adding up to at most `max_bytes`
        characters (but at least one line)."""
        outbox = job.outbox
        lines: list[str] = []
        size = 0
        while outbox and len(lines) < limit:
            size += len(outbox[0])
            if lines and size > max_bytes:
                break
            lines.append(outbox.popleft())
        job.delivered += len(lines)
        if not outbox:
            self.ready_jobs.discard(job.id)
        return lines

    def cancel(self, job: Job, seqs: Iterable[int]) -> list[int]:
        return job.dispatcher.cancel(seqs)

    def drop(self, job: Job, abandoned: bool = False) -> None:
        """Forget `job`: what no worker holds never runs; results still coming are dropped."""
        if self.jobs.pop(job.number, None) is None:
            return
        del self.by_id[job.id]
        self.ready_jobs.discard(job.id)
        # A worker's figures outlive the job (procfleet status): they go to its registry entry.
        for part in job.dispatcher.workers.values():
            known = self.registry.workers.get(part.id)
            if known is not None:
                known.ok += part.ok
                known.failed += part.failed
        for name, count in job.dispatcher.counters.as_dict().items():
            setattr(self.dropped, name, getattr(self.dropped, name) + count)
        if abandoned:
            self.jobs_abandoned += 1
        elif job.done:
            self.jobs_done += 1

    def _collect(self, job: Job) -> None:
        ready = job.dispatcher.take_results()
        if ready:
            job.outbox.extend(line for _seq, line, _ok in ready)
            self.failures.extend(line for _seq, line, ok in ready if not ok)
            self.ready_jobs.add(job.id)
        elif job.done:
            self.ready_jobs.add(job.id)        # nothing new, but its client waits for the end

    def collect_all(self) -> None:
        """Move every job's finished lines to its outbox (results of expiries and retries,
        which happen outside a worker's call), and drop the done flags a long job has no more
        use for (Dispatcher.trim_done)."""
        for job in self.jobs.values():
            self._collect(job)
            job.dispatcher.trim_done()
