"""The object the manager serves: the dispatcher behind one lock, with long polling.

Each worker connection has its own server thread; a worker with free slots and nothing to lease
waits here (bounded by `wait`) instead of polling, and is woken when tasks are requeued or the
batch ends.
"""

import logging
import threading

from procfleet.shared.manager import PROTOCOL_VERSION, RUN, STOP
from procfleet.shared.records import outcome_checked, outcome_from_wire

from .dispatcher import Dispatcher
from .server import current_peer

log = logging.getLogger(__name__)

#: longest a worker's exchange may be held waiting for work
MAX_LONG_POLL = 1.0


class DispatcherService:
    def __init__(self, dispatcher: Dispatcher, *, heartbeat_interval: float,
                 batch: str = "", wait_workers: int = 0) -> None:
        self.dispatcher = dispatcher
        self.heartbeat_interval = heartbeat_interval
        self.batch = batch
        self.wait_workers = wait_workers     # lease nothing until this many workers joined
        self.started = wait_workers == 0
        self.cond = threading.Condition()
        self.stopping = False

    # -- exposed to workers ---------------------------------------------------------------
    def hello(self, worker_id: str, info: dict) -> dict:
        reply = {"protocol": PROTOCOL_VERSION, "lease_timeout": self.dispatcher.lease_timeout,
                 "heartbeat_interval": self.heartbeat_interval, "batch": self.batch}
        if not isinstance(worker_id, str) or not isinstance(info, dict):
            raise TypeError("hello(worker_id: str, info: dict)")
        if info.get("protocol") != PROTOCOL_VERSION:
            log.warning("worker %s from %s speaks protocol %s, this master %s: refused",
                        worker_id, current_peer(), info.get("protocol"), PROTOCOL_VERSION)
            return {**reply, "state": STOP}
        session = info.get("session")
        with self.cond:
            known = worker_id in self.dispatcher.workers
            if isinstance(session, str):
                if self.dispatcher.new_session(worker_id, session):
                    self.cond.notify_all()
            else:
                self.dispatcher.touch(worker_id)
            if self._finished():
                return {**reply, "state": self._stop(worker_id)[1]}
            if not self.started and len(self.dispatcher.alive_workers()) >= self.wait_workers:
                self.started = True
                self.cond.notify_all()
                log.info("%d workers have joined (--wait-workers): starting the batch",
                         self.wait_workers)
        log.info("worker %s %s from %s (python %s, concurrency %s)", worker_id,
                 "reconnected" if known else "joined", current_peer(),
                 info.get("python", "?"), info.get("concurrency", "?"))
        return {**reply, "state": RUN}

    def exchange(self, worker_id: str, batch: str, outcomes: list, want: int,
                 wait: float, cursor: tuple | None = None) -> tuple:
        """Take finished outcomes, lease up to `want` tasks (waiting up to `wait` s for some).

        `cursor` is (session, call number, number of the last call whose reply arrived): with it
        the master requeues at once what it leased in replies that were lost, and leases
        nothing to a call that arrives after a later one (Dispatcher.begin_call)."""
        if not (isinstance(worker_id, str) and isinstance(outcomes, list)
                and isinstance(want, int) and isinstance(wait, (int, float))
                and (cursor is None or _is_cursor(cursor))):
            raise TypeError("exchange(worker_id: str, batch: str, outcomes: list, want: int, "
                            "wait: float, cursor: (session: str, call: int, acked: int))")
        call = None
        if batch != self.batch:
            # Results of another batch (a worker that outlived its master): never ours.
            if outcomes:
                log.warning("worker %s from %s sent %d results of batch %r, this is %r: "
                            "ignored", worker_id, current_peer(), len(outcomes), batch, self.batch)
            outcomes = []
        parsed = self._parse(worker_id, outcomes)
        d = self.dispatcher
        with self.cond:
            if cursor is not None:
                taken_back = d.counters.unacked
                if d.begin_call(worker_id, *cursor):
                    call = cursor[1]
                else:
                    want = 0            # a stale call: its reply would go nowhere
                if d.counters.unacked != taken_back:
                    self.cond.notify_all()      # requeued: wake the long polls
            if parsed:
                d.complete(worker_id, parsed)
                if d.done:
                    self.cond.notify_all()
            if self._finished():
                return self._stop(worker_id)
            tasks = d.lease(worker_id, want, call) if self.started else []
            if not tasks and want > 0 and wait > 0:
                self.cond.wait_for(lambda: (self.started and d.has_pending()) or self._finished(),
                                   timeout=min(wait, MAX_LONG_POLL, self.heartbeat_interval))
                if self._finished():
                    return self._stop(worker_id)
                tasks = d.lease(worker_id, want, call) if self.started else []
            return [tuple(t) for t in tasks], RUN

    def release(self, worker_id: str, seqs: list) -> int:
        """A draining worker hands back tasks it has not started."""
        with self.cond:
            returned = self.dispatcher.release(worker_id, [s for s in seqs if isinstance(s, int)])
            if returned:
                self.cond.notify_all()
        log.info("worker %s is draining: handed back %d tasks it had not started",
                 worker_id, returned)
        return returned

    @staticmethod
    def _parse(worker_id: str, outcomes: list) -> list:
        if all(map(outcome_checked, outcomes)):
            return outcomes
        parsed = []
        for item in outcomes:
            try:
                parsed.append(outcome_from_wire(item))
            except ValueError as exc:
                log.warning("worker %s from %s: %s: ignored", worker_id, current_peer(), exc)
        return parsed

    def goodbye(self, worker_id: str) -> None:
        with self.cond:
            held = self.dispatcher.leave(worker_id)
            if held:
                self.cond.notify_all()
        log.info("worker %s left, handing back %d tasks", worker_id, held)

    def ping(self) -> dict:
        with self.cond:
            d = self.dispatcher
            return {"state": STOP if self._finished() else RUN, "total": d.total,
                    "done": d.finished, "workers": len(d.alive_workers())}

    # -- used by the master's own loop ------------------------------------------------------
    def tick(self) -> tuple[list, list, list[str]]:
        """Expire silent workers; return (leased since the last tick, (seq, result) pairs to
        journal and write, events to log). Leases are recorded only with a journal."""
        with self.cond:
            d = self.dispatcher
            if d.expire() or d.has_pending():
                self.cond.notify_all()     # also wakes long polls when a retry comes due
            return d.take_leased(), d.take_results(), d.take_events()

    def wait_for_change(self, timeout: float) -> None:
        with self.cond:
            if not self.dispatcher.done:
                self.cond.wait(timeout)

    def stop(self) -> None:
        """From now on every worker call answers STOP."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def wait_workers_told(self, timeout: float) -> list[str]:
        """Wait until every live worker has been answered STOP; return those that were not."""
        def not_told():
            return [w.id for w in self.dispatcher.workers.values() if w.alive and not w.told_stop]

        with self.cond:
            self.cond.wait_for(lambda: not not_told(), timeout)
            return not_told()

    def _finished(self) -> bool:
        return self.stopping or self.dispatcher.done

    def _stop(self, worker_id: str) -> tuple:
        worker = self.dispatcher.workers[worker_id]
        worker.told_stop = True
        self.cond.notify_all()
        return [], STOP


def _is_cursor(cursor) -> bool:
    return (type(cursor) is tuple and len(cursor) == 3 and type(cursor[0]) is str
            and type(cursor[1]) is int and type(cursor[2]) is int)
