"""The lease/complete/requeue state machine: a plain class, no threads, no I/O.

Every method takes its time from `clock`, so tests drive it with a fake clock. The thread-safe
wrapper that the manager serves lives in `service.py`.
"""

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from procfleet.shared.records import Outcome, Task, result_record


@dataclass(slots=True)
class TaskState:
    task: Task
    attempts: int = 0        # times leased
    lost: int = 0            # times its lease expired with its worker silent
    holder: str | None = None
    done: bool = False


@dataclass(slots=True)
class WorkerState:
    id: str
    last_seen: float
    held: dict = field(default_factory=dict)   # task ids in lease order
    alive: bool = True
    told_stop: bool = False


@dataclass(slots=True)
class Counters:
    ok: int = 0
    failed: int = 0
    duplicates: int = 0      # late results for tasks that already had one: dropped
    requeued: int = 0        # leases that expired and went back to the queue
    released: int = 0        # tasks handed back by a worker leaving on purpose
    workers_lost: int = 0


class Dispatcher:
    """Leases tasks to workers, takes the first result per task, requeues silent workers' tasks."""

    def __init__(self, tasks: Iterable[Task], *, lease_timeout: float, max_attempts: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_timeout = lease_timeout
        self.max_attempts = max_attempts
        self.clock = clock
        self.tasks: dict[str, TaskState] = {}
        for task in tasks:
            if task.id in self.tasks:
                raise ValueError(f"duplicate task id {task.id!r}")
            self.tasks[task.id] = TaskState(task)
        self.pending: deque[str] = deque(self.tasks)
        self.workers: dict[str, WorkerState] = {}
        self.counters = Counters()
        self.finished = 0
        self._ready: list[dict] = []
        self.events: list[str] = []   # human-readable notes for the log, drained by the owner

    # -- state ------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return len(self.tasks)

    @property
    def done(self) -> bool:
        return self.finished == len(self.tasks)

    def has_pending(self) -> bool:
        return bool(self.pending)

    def running(self) -> int:
        return sum(len(w.held) for w in self.workers.values())

    def alive_workers(self) -> list[str]:
        return [w.id for w in self.workers.values() if w.alive]

    def take_results(self) -> list[dict]:
        """Result records finished since the last call, each task id exactly once."""
        ready, self._ready = self._ready, []
        return ready

    def take_events(self) -> list[str]:
        events, self.events = self.events, []
        return events

    # -- worker calls -----------------------------------------------------------------------
    def touch(self, worker_id: str) -> WorkerState:
        """Record that `worker_id` is alive now (every call from a worker is a heartbeat)."""
        now = self.clock()
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = self.workers[worker_id] = WorkerState(worker_id, now)
        elif not worker.alive:
            worker.alive = True
            self.events.append(f"worker {worker_id} is back after its leases expired")
        worker.last_seen = now
        return worker

    def lease(self, worker_id: str, want: int) -> list[Task]:
        """Lease up to `want` tasks, capped at a fair share of what is pending."""
        worker = self.touch(worker_id)
        if want <= 0 or not self.pending:
            return []
        sharers = max(1, len(self.alive_workers()))
        fair = -(-len(self.pending) // sharers)
        leased = []
        pending = self.pending
        while pending and len(leased) < min(want, fair):
            state = self.tasks[pending.popleft()]
            if state.done:      # a late result already finished it while it waited
                continue
            state.attempts += 1
            state.holder = worker_id
            worker.held[state.task.id] = None
            leased.append(state.task)
        return leased

    def complete(self, worker_id: str, outcomes: Iterable[Outcome]) -> None:
        """Take results; the first per task id wins, later ones are dropped and counted."""
        worker = self.touch(worker_id)
        for outcome in outcomes:
            state = self.tasks.get(outcome.id)
            if state is None:
                self.events.append(f"worker {worker_id} sent a result for unknown task id "
                                   f"{outcome.id!r}: ignored (a worker of another batch?)")
                continue
            worker.held.pop(outcome.id, None)
            if state.done:
                self.counters.duplicates += 1
                continue
            if state.holder is not None and state.holder != worker_id:
                self.workers[state.holder].held.pop(outcome.id, None)
            state.holder = None
            self._finish(state, result_record(
                state.task.id, state.task.name, outcome, attempts=state.attempts, worker=worker_id))

    def release(self, worker_id: str, task_ids: Iterable[str]) -> int:
        """A worker leaving on purpose hands tasks back; they do not count as lost."""
        worker = self.touch(worker_id)
        returned = []
        for task_id in task_ids:
            state = self.tasks.get(task_id)
            if state is None or state.done or state.holder != worker_id:
                continue
            worker.held.pop(task_id, None)
            state.holder = None
            returned.append(task_id)
        self.pending.extendleft(reversed(returned))
        self.counters.released += len(returned)
        return len(returned)

    def leave(self, worker_id: str) -> None:
        """The worker said goodbye: requeue whatever it still holds, without counting it lost."""
        worker = self.touch(worker_id)
        self.release(worker_id, list(worker.held))
        worker.alive = False

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
            requeue = []
            for task_id in worker.held:
                state = self.tasks[task_id]
                state.holder = None
                state.lost += 1
                if state.lost >= self.max_attempts:
                    self._finish(state, result_record(
                        task_id, state.task.name, None, attempts=state.attempts, worker=worker.id,
                        error=f"WorkerLost: worker lost {state.lost} times "
                              f"(last holder {worker.id}, lease timeout {self.lease_timeout:g} s)"))
                else:
                    requeue.append(task_id)
            worker.held.clear()
            self.pending.extendleft(reversed(requeue))
            self.counters.requeued += len(requeue)
            self.events.append(
                f"worker {worker.id} silent for {now - worker.last_seen:.1f} s: "
                f"requeued {len(requeue)} tasks")
        return expired

    def _finish(self, state: TaskState, record: dict) -> None:
        state.done = True
        self.finished += 1
        if record["status"] == "ok":
            self.counters.ok += 1
        else:
            self.counters.failed += 1
        self._ready.append(record)
