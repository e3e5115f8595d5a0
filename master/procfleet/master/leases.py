"""The lease/complete/requeue state machine: a plain class, no threads, no I/O.

Every method takes its time from `clock` (and retry jitter from `rng`), so tests drive it with a
fake clock. The thread-safe wrapper that the manager serves lives in `rpc.py`.

Memory does not grow with the batch: tasks stream in from their source as they are leased, a
task is kept only while it is in flight (leased, requeued or waiting for a retry), and a finished
one leaves a single byte behind (its `done` flag), so late duplicates are still recognised.

The common case is kept cheap, since it runs for every task: a task leased for the first time is
held as the task itself, and gets a TaskState only once something else happens to it (an error,
a crash, a requeue, a result from another worker). `lease` takes fresh tasks from the source in
slices, and `complete` takes a first-time `ok` inline, building the lines of a whole call at once.
"""

import heapq
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice, repeat

from procfleet.shared.backoff import backoff_delay
from procfleet.shared.protocol import (CRASH, ERROR, LEASE_BYTES, OK, SMALL_TASK_BYTES,
                                      Outcome, ResultLines, Task, encode_value)

#: the longest a retry waits, however many times the task failed
MAX_RETRY_DELAY = 300.0
#: a worker that asked for tasks this recently counts in the fair share even if it holds none
#: (an idle worker asks again at least every second, in its long poll)
ASKED_RECENTLY = 2.0
#: a worker id not seen before may join only while fewer than this many live workers hold no
#: task (a fleet joining at once is idle until its first lease: twice the master's connections)
MAX_IDLE_WORKERS = 4096
#: at most this many worker ids are remembered; past it, those that left holding nothing are
#: forgotten (counted in `forgotten`) to make room, and a new id is refused if that is not enough
MAX_WORKERS = 16384
#: admit counts idle and departed workers at most this often (seconds)
ADMIT_RECOUNT = 1.0

_int_repr = int.__repr__     # the common result, printed without a call to encode_value


@dataclass(slots=True)
class TaskState:
    task: Task
    attempts: int = 0        # times leased
    lost: int = 0            # attempts lost: its worker went silent, or its process died
    errors: int = 0          # attempts that raised (retried while errors <= retries)
    holder: str | None = None


def _fresh_state(task: Task, holder: str | None) -> TaskState:
    """The state of a task leased once, to `holder`, with nothing else happened to it yet."""
    return TaskState(task, attempts=1, holder=holder)


@dataclass(slots=True)
class WorkerState:
    id: str
    last_seen: float
    held: dict = field(default_factory=dict)   # seqs in lease order
    alive: bool = True
    told_stop: bool = False
    # Reconciliation (see Dispatcher.begin_call): the worker process's session, the number of
    # its latest call, and the seqs leased in replies it has not yet said it received.
    session: str | None = None
    last_call: int = 0
    unacked: dict = field(default_factory=dict)   # call number -> [seq, ...]
    asked_at: float = float("-inf")   # when it last asked for tasks (see Dispatcher.sharers)
    # What `procfleet status` and the dashboard show (figures.py): results it gave that ended
    # their task, when it joined, how it left, and what its hello said.
    ok: int = 0
    failed: int = 0
    joined_at: float = 0.0
    left: bool = False                # said goodbye (not alive, but not lost either)
    address: str = ""
    python: str = ""
    concurrency: int | None = None


@dataclass(slots=True)
class Counters:
    ok: int = 0
    failed: int = 0
    duplicates: int = 0      # late results for tasks that already had one: dropped
    requeued: int = 0        # leases that expired and went back to the queue
    released: int = 0        # tasks handed back by a worker leaving on purpose
    retried: int = 0         # attempts that raised and were scheduled again
    crashed: int = 0         # attempts whose process died
    workers_lost: int = 0
    stale: int = 0           # results for tasks this master does not have in flight: ignored
    unacked: int = 0         # leases whose reply never reached the worker: requeued at once
    cancelled: int = 0       # tasks taken back before any worker leased them (Dispatcher.cancel)

    def as_dict(self) -> dict[str, int]:
        """Every counter by name (for the service's snapshot and the summary)."""
        return {name: getattr(self, name) for name in self.__slots__}


class BigLineSizes(dict):
    """The line sizes of a dispatcher's big tasks only, by seq; a small task reads as 0. For a
    dispatcher whose tasks stream in (extend), where an entry per task would grow with it."""

    def __missing__(self, seq: int) -> int:
        return 0


class Feed:
    """A task source that grows: the tasks a client streams in (Dispatcher.extend). Unlike a
    generator, it can run dry now and yield again later."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: deque[Task] = deque()

    def __iter__(self) -> "Feed":
        return self

    def __next__(self) -> Task:
        if self.queue:
            return self.queue.popleft()
        raise StopIteration


class Dispatcher:
    """Leases tasks to workers, takes the first result per task, requeues what was lost."""

    def __init__(self, tasks: Iterable[Task], total: int | None = None, *, lease_timeout: float,
                 max_attempts: int, retries: int = 0, retry_backoff: float = 1.0,
                 done: Iterable[int] = (), restored: Iterable[TaskState] = (),
                 sizes=None, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        if total is None:
            tasks = list(tasks)
            total = len(tasks)
        self.total = total
        self.lease_timeout = lease_timeout
        self.max_attempts = max_attempts
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.clock = clock
        self.rng = rng
        self.done_flags = bytearray(total)
        # seqs below this are all done and their flags dropped (trim_done: a long stream's
        # flags would otherwise grow a byte per task); a flag's index is seq - done_below
        self.done_below = 0
        self.finished = 0
        for seq in done:
            self.done_flags[seq] = 1
            self.finished += 1
        # in flight (leased, requeued or delayed): a TaskState, or the task itself while it is
        # on its first lease and nothing else happened to it (see _state)
        self.active: dict[int, TaskState | Task] = {}
        self.requeued: deque[int] = deque()         # active seqs waiting for a worker, in order
        self.delayed: list[tuple[float, int]] = []  # heap of (ready at, seq) for retries
        for state in restored:
            state.holder = None
            self.active[state.task.seq] = state
            self.requeued.append(state.task.seq)
        self._fresh = iter(tasks)
        self._pushback: deque[Task] = deque()       # fresh tasks taken but left out of a lease
        # bytes of each task's line by seq, when some are big enough for leases to be measured
        # (None: every task is small, so a lease is capped by count alone)
        self.sizes = sizes
        self._untouched = total - self.finished - len(self.active)
        # a resumed batch's source also yields tasks that are done or restored: skip those
        self._skip_known = bool(self.finished or self.active)
        self.workers: dict[str, WorkerState] = {}
        self.forgotten = 0      # ids dropped from `workers` to make room (see admit)
        self._idle = 0          # live workers holding nothing, as admit last counted them
        self._counted_at = float("-inf")
        # the workers that share what is left: they hold tasks or asked for some recently; a
        # subset of `workers`, pruned as it is counted (ids that only said hello never enter)
        self._sharing: dict[str, WorkerState] = {}
        self.counters = Counters()
        self._ready: list[tuple[int, str, bool]] = []   # (seq, result line, ok?)
        self.leased_log: list[int] | None = None   # set to a list to record leased seqs
        self.lines = ResultLines()                  # every result line is built by it
        self.first_lease_at: float | None = None   # when work started: the clock of throughput
        # (kind, human-readable note) for the log, drained by the owner (who throttles by kind)
        self.events: list[tuple[str, str]] = []
        # lease-to-result seconds of each task, when someone watches them (figures.Durations:
        # --metrics); None costs the hot path one test per task
        self.durations = None

    #: more tasks may still come (extend): not done until the source says it ended
    open_input = False

    # -- state ------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.finished == self.total and not self.open_input

    def pending(self) -> int:
        """Tasks waiting for a worker now (not counting retries still backing off)."""
        self._wake_delayed()
        return len(self.requeued) + self._untouched

    def has_pending(self) -> bool:
        return self.pending() > 0

    def running(self) -> int:
        return sum(len(w.held) for w in self.workers.values())

    def admit(self, worker_id: str) -> str | None:
        """Why `worker_id`, not seen before, may not join now, or None if it may (a known id
        always may). Bounds what ids that only say hello can cost: MAX_IDLE_WORKERS live ones
        holding nothing, MAX_WORKERS remembered in all. The counts are taken at most once a
        second (ADMIT_RECOUNT), so a flood of new ids costs no more than a constant each."""
        if worker_id in self.workers or len(self.workers) < MAX_IDLE_WORKERS:
            return None
        now = self.clock()
        if now - self._counted_at >= ADMIT_RECOUNT:
            self._counted_at = now
            if len(self.workers) >= MAX_WORKERS:
                gone = [w.id for w in self.workers.values() if not w.alive and not w.held]
                for gone_id in gone:
                    del self.workers[gone_id]
                    self._sharing.pop(gone_id, None)
                self.forgotten += len(gone)
            self._idle = sum(1 for w in self.workers.values() if w.alive and not w.held)
        if len(self.workers) >= MAX_WORKERS:
            return f"the master already knows {len(self.workers):,} workers (MAX_WORKERS)"
        if self._idle >= MAX_IDLE_WORKERS:
            return (f"{self._idle:,} live workers hold no task already (MAX_IDLE_WORKERS); "
                    "join again once the fleet is working")
        self._idle += 1         # this one joins, holding nothing yet
        return None

    def seen_workers(self) -> int:
        """How many worker ids took part in the batch."""
        return len(self.workers) + self.forgotten

    def alive_workers(self) -> list[str]:
        return [w.id for w in self.workers.values() if w.alive]

    def take_leased(self) -> list[tuple[int, int, int, int]]:
        """(seq, attempts, lost, errors) of the tasks leased since the last call that are still
        in flight (the leased_log must be on), for the journal."""
        log = self.leased_log
        if not log:
            return []
        self.leased_log = []
        counts = []
        for seq in dict.fromkeys(log):
            entry = self.active.get(seq)
            if entry is None:
                continue                       # finished since: its result says the rest
            if type(entry) is TaskState:
                counts.append((seq, entry.attempts, entry.lost, entry.errors))
            else:
                counts.append((seq, 1, 0, 0))
        return counts

    def take_results(self) -> list[tuple[int, str, bool]]:
        """(seq, JSON result line, ok?) finished since the last call, each task exactly once."""
        ready, self._ready = self._ready, []
        return ready

    def take_events(self) -> list[tuple[str, str]]:
        events, self.events = self.events, []
        return events

    # -- a growing batch (a job of the service, procfleet.master.board) ---------------------
    def extend(self, tasks: list[Task], sizes: Iterable[int] = ()) -> None:
        """Add `tasks` (seqs total, total + 1, ...) to a dispatcher made with a Feed; `sizes`:
        their lines' bytes, when the dispatcher measures leases (sizes is not None)."""
        self._fresh.queue.extend(tasks)
        count = len(tasks)
        self.total += count
        self.done_flags.extend(bytes(count))
        self._untouched += count
        if type(self.sizes) is BigLineSizes:
            self.sizes.update((task[0], size) for task, size in zip(tasks, sizes)
                              if size > SMALL_TASK_BYTES)
        elif self.sizes is not None:
            self.sizes.extend(sizes)

    def cancel(self, seqs: Iterable[int]) -> list[int]:
        """Take back the tasks of `seqs` that no worker holds (never leased, requeued or waiting
        for a retry): they end now, without a result line. Returns those seqs."""
        cancelled = []
        flags, active, below = self.done_flags, self.active, self.done_below
        for seq in seqs:
            if not below <= seq < self.total or flags[seq - below]:
                continue
            entry = active.get(seq)
            if entry is None:
                self._untouched -= 1        # still in the source: _take_fresh skips it
                self._skip_known = True
            elif type(entry) is TaskState and entry.holder is None:
                del active[seq]             # its place in `requeued`/`delayed` is skipped
            else:
                continue                    # leased: it runs
            flags[seq - below] = 1
            self.finished += 1
            cancelled.append(seq)
        self.counters.cancelled += len(cancelled)
        return cancelled

    def trim_done(self, keep: int = 1 << 20) -> int:
        """Drop the flags of the done tasks that lead the batch, once there are more than `keep`
        of them (they still count as done: done_below). Returns how many were dropped."""
        first_open = self.done_flags.find(0)
        if first_open < 0:
            first_open = len(self.done_flags)
        if first_open <= keep:
            return 0
        del self.done_flags[:first_open]
        self.done_below += first_open
        return first_open

    def lose_worker(self, worker_id: str) -> int:
        """`worker_id` is gone (its service saw it silent): requeue what it held here, as
        expire() does. Returns how many were requeued."""
        worker = self.workers.get(worker_id)
        if worker is None or not worker.alive:
            return 0
        worker.alive = False
        return self._lose_held(worker) if worker.held else 0

    # -- worker calls -----------------------------------------------------------------------
    def touch(self, worker_id: str) -> WorkerState:
        """Record that `worker_id` is alive now (every call from a worker is a heartbeat)."""
        now = self.clock()
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = self.workers[worker_id] = WorkerState(worker_id, now, joined_at=now)
        elif not worker.alive:
            worker.alive = True
            worker.left = False
            self.events.append(("back", f"worker {worker_id} is back after its leases expired"))
        worker.last_seen = now
        return worker

    def wants(self, worker_id: str) -> WorkerState:
        """`worker_id` asks for tasks now: it shares in what is left for ASKED_RECENTLY s,
        and for as long as it holds tasks."""
        worker = self.touch(worker_id)
        worker.asked_at = worker.last_seen
        self._sharing[worker_id] = worker
        return worker

    def sharers(self) -> int:
        """How many workers share the pending tasks (at least 1): alive, and holding tasks or
        having asked for some within ASKED_RECENTLY seconds. Workers that only said hello, or
        only heartbeat with nothing held, do not make everyone's share smaller."""
        now = self.clock()
        sharing = self._sharing
        gone = [worker.id for worker in sharing.values()
                if not worker.alive or (not worker.held and now - worker.asked_at > ASKED_RECENTLY)]
        for worker_id in gone:
            del sharing[worker_id]
        return max(1, len(sharing))

    # -- reconciliation --------------------------------------------------------------------
    def begin_call(self, worker_id: str, session: str, call: int, acked: int) -> bool:
        """Reconcile what the master thinks `worker_id` holds with what reached it.

        A worker numbers its calls (`call`, from 1 per `session`, one session per process) and
        says the number of the last one whose reply it received (`acked`). Tasks leased in a
        reply it never received (a later call acked an earlier number) are requeued at once, not
        held until a lease timeout that its heartbeats would never let come. Returns False for a
        stale call: an older number than one already seen (a request that reached the master
        late, on a connection the worker had given up), or another session's: lease nothing then.
        """
        worker = self.touch(worker_id)
        if worker.session is None:
            worker.session = session
        elif session != worker.session or call <= worker.last_call:
            return False
        worker.last_call = call
        unacked = worker.unacked
        if unacked:
            for number in list(unacked):
                if number <= acked:
                    del unacked[number]                 # its reply arrived
                elif number < call:
                    self._unlease(worker, unacked.pop(number))
        return True

    def new_session(self, worker_id: str, session: str) -> int:
        """A worker (re)connected as process `session`. A new process under a known id means the
        old one is gone: what it held is lost, as if its lease had expired. Returns that count."""
        worker = self.touch(worker_id)
        if worker.session == session:
            return 0
        lost = 0
        if worker.session is not None and worker.held:
            lost = len(worker.held)
            self._lose_held(worker)
            self.events.append(("restarted", f"worker {worker_id} started again (a new "
                                f"process): requeued the {lost} tasks its previous process held"))
        worker.session = session
        worker.last_call = 0
        worker.unacked.clear()
        return lost

    def _unlease(self, worker: WorkerState, seqs: list[int]) -> None:
        """Take back tasks whose lease reply never reached `worker`: it never had them."""
        returned = []
        for seq in seqs:
            if seq not in worker.held:
                continue
            state = self._state(seq, worker.id)
            if state is None or state.holder != worker.id:
                continue
            del worker.held[seq]
            state.holder = None
            state.attempts = max(0, state.attempts - 1)
            returned.append(seq)
        if returned:
            self.requeued.extendleft(reversed(returned))
            self.counters.unacked += len(returned)
            if self.leased_log is not None:
                self.leased_log += returned     # the journal keeps the lowered attempt counts
            self.events.append(("unacked", f"worker {worker.id} never received a lease of "
                                f"{len(returned)} tasks (its reply was lost): requeued them"))

    # -- leasing -----------------------------------------------------------------------------
    def lease(self, worker_id: str, want: int, call: int | None = None,
              sharers: int | None = None) -> list[Task]:
        """Lease up to `want` tasks, capped at a fair share of what is pending and, when tasks
        are big, at LEASE_BYTES of task lines: requeued ones first, then fresh ones from the
        source, in order. `call`: the worker's call number this reply answers (begin_call); a
        call that is no longer the worker's latest gets nothing. `sharers`: how many workers
        share the tasks, when the caller knows better (a service's jobs: JobBoard.lease)."""
        if want <= 0:
            self.touch(worker_id)
            return []
        worker = self.wants(worker_id)
        if call is not None and call != worker.last_call:
            return []
        pending = self.pending()
        if not pending:
            return []
        count = min(want, -(-pending // (sharers or self.sharers())))
        leased = []
        held, log, sizes = worker.held, self.leased_log, self.sizes
        now = worker.last_seen          # held maps each seq to when it was leased
        budget = LEASE_BYTES
        while self.requeued and len(leased) < count:
            state = self._next_requeued()
            if state is None:
                continue
            seq = state.task[0]
            if sizes is not None:
                size = max(sizes[seq], SMALL_TASK_BYTES)
                if leased and size > budget:
                    self.requeued.appendleft(seq)       # the next lease starts with it
                    count = len(leased)
                    break
                budget -= size
            state.attempts += 1
            state.holder = worker_id
            held[seq] = now
            leased.append(state.task)
            if log is not None:
                log.append(seq)
        if len(leased) < count and self._untouched > 0:
            fresh = self._take_fresh(count - len(leased))
            if sizes is not None:
                fresh = self._within(fresh, budget, first=not leased)
            seqs = [task[0] for task in fresh]
            self.active.update(zip(seqs, fresh))
            held.update(dict.fromkeys(seqs, now))
            leased += fresh
            if log is not None:
                log += seqs
        if leased:
            if self.first_lease_at is None:
                self.first_lease_at = self.clock()
            if call is not None:
                worker.unacked[call] = [task[0] for task in leased]
        return leased

    def _within(self, fresh: list[Task], budget: int, first: bool) -> list[Task]:
        """The longest head of `fresh` whose lines fit `budget` bytes (at least one task if
        `first`); the rest goes back to be leased next."""
        sizes = self.sizes
        for index, task in enumerate(fresh):
            size = max(sizes[task[0]], SMALL_TASK_BYTES)
            if size > budget and (index or not first):
                rest = fresh[index:]
                self._pushback.extendleft(reversed(rest))
                self._untouched += len(rest)
                return fresh[:index]
            budget -= size
        return fresh

    def _take_fresh(self, n: int) -> list[Task]:
        """Up to `n` tasks from the source that are neither done nor in flight."""
        n = min(n, self._untouched)
        if self._pushback:
            back = self._pushback
            fresh = [back.popleft() for _ in range(min(n, len(back)))]
            if len(fresh) < n:
                fresh += islice(self._fresh, n - len(fresh))
        else:
            fresh = list(islice(self._fresh, n))
        if self._skip_known:
            flags, active, below = self.done_flags, self.active, self.done_below
            fresh = [t for t in fresh if t[0] >= below and not flags[t[0] - below]
                     and t[0] not in active]
            while len(fresh) < n:
                more = list(islice(self._fresh, n - len(fresh)))
                if not more:
                    break
                fresh += [t for t in more if t[0] >= below and not flags[t[0] - below]
                          and t[0] not in active]
        if len(fresh) < n:
            self._untouched = 0                # the source ended early: nothing more to lease
        else:
            self._untouched -= n
        return fresh

    def _next_requeued(self) -> TaskState | None:
        state = self.active.get(self.requeued.popleft())
        return state if state is not None and state.holder is None else None

    def complete(self, worker_id: str, outcomes: Iterable[tuple], encoded: bool = False) -> None:
        """Take results (Outcomes or checked (seq, kind, value, error) tuples); the first per
        task wins, later ones are dropped and counted. `encoded`: ok values are checked JSON
        text (as they come off the wire), written as they are.

        An `ok` for a task on its first lease, from the worker holding it, is handled inline
        and its line built with the others of the call, in one ok_lines: that is nearly every
        result. Everything else goes through _complete_one."""
        worker = self.touch(worker_id)
        held, active, flags = worker.held, self.active, self.done_flags
        below = self.done_below
        seqs, tasks, texts = [], [], []
        durations = self.durations
        leased_at = [] if durations is not None else None
        try:
            for outcome in outcomes:
                seq = outcome[0]
                task = active.get(seq)
                if (task is not None and type(task) is not TaskState and outcome[1] == OK
                        and seq in held):
                    value = outcome[2]
                    if encoded:
                        text = value
                    else:
                        try:
                            text = _int_repr(value) if type(value) is int else encode_value(value)
                        except (TypeError, ValueError, RecursionError):
                            self._complete_one(worker, outcome)    # ResultNotJSON
                            continue
                    if leased_at is None:
                        del held[seq]
                    else:
                        leased_at.append(held.pop(seq))
                    del active[seq]
                    flags[seq - below] = 1
                    seqs.append(seq)
                    tasks.append(task)
                    texts.append(text)
                else:
                    self._complete_one(worker, outcome, encoded)
        finally:
            # Even if something above raised: every task marked done has its line, and the
            # counters always match the lines.
            if seqs:
                lines = self.lines.ok_lines(tasks, texts, self.lines.tail(1, worker_id))
                self._ready += zip(seqs, lines, repeat(True))
                self.finished += len(seqs)
                self.counters.ok += len(seqs)
                worker.ok += len(seqs)
                if leased_at:
                    durations.observe_since(worker.last_seen, leased_at)

    def _complete_one(self, worker: WorkerState, outcome: tuple, encoded: bool = False) -> None:
        seq, worker_id = outcome[0], worker.id
        leased_at = worker.held.pop(seq, None)
        if not 0 <= seq < self.total:
            self.events.append(("unknown task", f"worker {worker_id} sent a result for task "
                                f"#{seq}, which this batch does not have: ignored"))
            return
        if seq < self.done_below or self.done_flags[seq - self.done_below]:
            self.counters.duplicates += 1
            return
        state = self._state(seq, worker_id)
        if state is None:
            self.counters.stale += 1    # e.g. leased by a master before a restart
            return
        if state.holder != worker_id and state.holder is not None:
            holder = self.workers.get(state.holder)
            if holder is not None:
                holder.held.pop(seq, None)
        state.holder = None
        if self.durations is not None and leased_at is not None:
            self.durations.observe_since(worker.last_seen, (leased_at,))
        if outcome[1] == OK:
            self._finish(state, *self.lines.line(state.task, outcome, attempts=state.attempts,
                                                 worker=worker_id, encoded=encoded), worker)
        else:
            self._settle(state, Outcome(*outcome), worker_id)

    def _state(self, seq: int, holder: str | None = None) -> TaskState | None:
        """The TaskState of in-flight `seq`, made now if it is on its first lease (`holder`:
        a worker that may hold it, checked first)."""
        entry = self.active.get(seq)
        if entry is None or type(entry) is TaskState:
            return entry
        worker = self.workers.get(holder) if holder is not None else None
        if worker is None or seq not in worker.held:
            holder = self._holder_of(seq)
        state = self.active[seq] = _fresh_state(entry, holder)
        return state

    def _holder_of(self, seq: int) -> str | None:
        for worker in self.workers.values():
            if seq in worker.held:
                return worker.id
        return None

    def _settle(self, state: TaskState, outcome: Outcome, worker_id: str) -> None:
        """An attempt that did not return: retry an error (--retries), requeue a crash
        (--max-attempts), else finish failed. A timeout is final: it would overrun again."""
        kind = outcome.kind
        if kind == ERROR and state.errors < self.retries:
            state.errors += 1
            self.counters.retried += 1
            delay = backoff_delay(state.errors, self.retry_backoff, MAX_RETRY_DELAY, self.rng)
            heapq.heappush(self.delayed, (self.clock() + delay, state.task.seq))
            return
        if kind == CRASH:
            self.counters.crashed += 1
            state.lost += 1
            if state.lost < self.max_attempts:
                self.requeued.appendleft(state.task.seq)
                self.events.append(("crashed", f"task {state.task.id!r} crashed on worker "
                                    f"{worker_id}: attempt {state.attempts} of at most "
                                    f"{self.max_attempts}"))
                return
            outcome = outcome._replace(error=f"{outcome.error}\n\n(it crashed {state.lost} "
                                             f"times; --max-attempts {self.max_attempts})")
        if kind == ERROR and self.retries:
            outcome = outcome._replace(error=f"{outcome.error}\n\n(failed on each of "
                                             f"{state.errors + 1} tries; --retries "
                                             f"{self.retries})")
        self._finish(state, *self.lines.line(state.task, outcome, attempts=state.attempts,
                                             worker=worker_id), self.workers.get(worker_id))

    def release(self, worker_id: str, seqs: Iterable[int]) -> int:
        """A worker hands tasks back on purpose; they do not count as lost."""
        worker = self.touch(worker_id)
        returned = []
        for seq in seqs:
            state = self._state(seq, worker_id)
            if state is None or state.holder != worker_id:
                continue
            worker.held.pop(seq, None)
            state.holder = None
            returned.append(seq)
        self.requeued.extendleft(reversed(returned))
        self.counters.released += len(returned)
        return len(returned)

    def leave(self, worker_id: str) -> int:
        """The worker said goodbye: requeue whatever it still holds, without counting it lost."""
        worker = self.touch(worker_id)
        returned = self.release(worker_id, list(worker.held))
        worker.alive = False
        worker.left = True
        return returned

    # -- the master's own ticks ---------------------------------------------------------------
    def expire(self) -> list[str]:
        """Requeue the tasks of workers silent for longer than the lease timeout."""
        now = self.clock()
        expired = []
        for worker in self.workers.values():
            if not worker.alive or now - worker.last_seen <= self.lease_timeout:
                continue
            worker.alive = False
            expired.append(worker.id)
            self.counters.workers_lost += 1
            requeued = self._lose_held(worker)
            self.events.append(("silent", f"worker {worker.id} silent for "
                                f"{now - worker.last_seen:.1f} s: requeued {requeued} tasks"))
        return expired

    def _lose_held(self, worker: WorkerState) -> int:
        """Everything `worker` holds is lost: requeue it, or fail what was lost too often."""
        requeue = []
        for seq in worker.held:
            state = self._state(seq, worker.id)
            if state is None:
                continue
            state.holder = None
            state.lost += 1
            if state.lost >= self.max_attempts:
                self._finish(state, *self.lines.line(
                    state.task, None, attempts=state.attempts, worker=worker.id,
                    error=f"WorkerLost: worker lost {state.lost} times "
                          f"(last holder {worker.id}, lease timeout {self.lease_timeout:g} s)"),
                    worker)
            else:
                requeue.append(seq)
        worker.held.clear()
        worker.unacked.clear()
        self.requeued.extendleft(reversed(requeue))
        self.counters.requeued += len(requeue)
        return len(requeue)

    def _wake_delayed(self) -> None:
        if self.delayed and self.delayed[0][0] <= self.clock():
            now = self.clock()
            while self.delayed and self.delayed[0][0] <= now:
                self.requeued.append(heapq.heappop(self.delayed)[1])

    def _finish(self, state: TaskState, ok: bool, line: str,
                worker: WorkerState | None = None) -> None:
        """`state`'s task ended with `line`; `worker`, whose result (or loss) ended it, is
        credited with it."""
        seq = state.task.seq
        del self.active[seq]
        self.done_flags[seq - self.done_below] = 1
        self.finished += 1
        if ok:
            self.counters.ok += 1
        else:
            self.counters.failed += 1
        if worker is not None:
            if ok:
                worker.ok += 1
            else:
                worker.failed += 1
        self._ready.append((seq, line, ok))
