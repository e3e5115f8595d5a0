"""The object the manager serves: the dispatcher behind one lock, with long polling.

Each worker connection has its own server thread; a worker with free slots and nothing to lease
waits here (bounded by `wait`) instead of polling, and is woken when tasks are requeued or the
batch ends.

Every call is checked whole before it changes anything: a malformed one (a worker id that is
not printable text, an outcome nested too deep, a seq out of range ...) is refused with a
ValueError or TypeError, which the manager sends back to the caller, and leaves the batch as it
was. Log lines a peer can cause are throttled per kind (admission.ThrottledCounter).
"""

import json
import logging
import threading

from procfleet.shared.manager import PROTOCOL_VERSION, RUN, STOP
from procfleet.shared.protocol import (MAX_OUTCOMES, MAX_WIRE_INT, check_count,
                                      check_name, check_outcomes, check_worker_id, describe)

from .admission import ThrottledCounter
from .figures import MAX_STATUS_WORKERS, Watch, done_by_worker, worker_rows
from .leases import Dispatcher
from .schemas import MAX_INFO_ITEMS, MAX_WAIT
from .peers import current_peer

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
        # one lock, two conditions: workers' long polls wait on `cond`, clients' on their own
        # (procfleet.master.service), so a result wakes no idle worker
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        # whoever feeds tasks in (a client's job_put, a batch read from stdin) waits on this
        # for room, woken when tasks are leased or results taken
        self.feeders = threading.Condition(self.lock)
        self.waiting_for_room = 0
        self.stopping = False
        clock = dispatcher.clock
        # Log lines a peer's calls cause, one throttle per kind: (counter, level).
        self.notes = {
            "refused": ThrottledCounter("refused call", "refused calls", clock=clock),
            "protocol": ThrottledCounter("other protocol", "workers of another protocol",
                                         clock=clock),
            "other batch": ThrottledCounter("result of another batch",
                                            "calls with results of another batch", clock=clock),
            # a real fleet joins all at once: room for it, but not for a storm of made-up ids
            "joined": ThrottledCounter("join", "joins", burst=256, refill=1.0, clock=clock),
            "draining": ThrottledCounter("drain", "drains", burst=64, refill=1.0, clock=clock),
            "left": ThrottledCounter("leave", "leaves", burst=64, refill=1.0, clock=clock),
        }
        self.events: dict[str, ThrottledCounter] = {}   # the dispatcher's events, by kind
        self.watch = Watch(clock)           # rates and history for status and the dashboard

    # -- exposed to workers ---------------------------------------------------------------
    def hello(self, worker_id: str, info: dict) -> dict:
        reply = {"protocol": PROTOCOL_VERSION, "lease_timeout": self.dispatcher.lease_timeout,
                 "heartbeat_interval": self.heartbeat_interval, "batch": self.batch}
        self._checked("hello", _check_hello, worker_id, info)
        if info.get("protocol") != PROTOCOL_VERSION:
            self._note("protocol", logging.WARNING, "worker %s from %s speaks protocol %s, this "
                       "master %s: refused", worker_id, current_peer(), info.get("protocol"),
                       PROTOCOL_VERSION)
            return {**reply, "state": STOP}
        session = info.get("session")
        with self.cond:
            known = worker_id in self.dispatcher.workers
            refusal = self.dispatcher.admit(worker_id)
            if refusal:
                self._note("refused", logging.WARNING, "refused hello() from %s (worker %s): %s",
                           current_peer(), worker_id, refusal)
                raise ValueError(f"worker {worker_id} may not join: {refusal}")
            if isinstance(session, str):
                if self.dispatcher.new_session(worker_id, session):
                    self.cond.notify_all()
            else:
                self.dispatcher.touch(worker_id)
            _remember_hello(self.dispatcher.workers[worker_id], info)
            if self._finished():
                return {**reply, "state": self._stop(worker_id)[1]}
            if not self.started and len(self.dispatcher.alive_workers()) >= self.wait_workers:
                self.started = True
                self.cond.notify_all()
                log.info("%d workers have joined (--wait-workers): starting the batch",
                         self.wait_workers)
        self._note("joined", logging.INFO, "worker %s %s from %s (python %s, concurrency %s)",
                   worker_id, "reconnected" if known else "joined", current_peer(),
                   info.get("python", "?"), info.get("concurrency", "?"))
        return {**reply, "state": RUN}

    def exchange(self, worker_id: str, batch: str, outcomes: list, want: int,
                 wait: float, cursor: tuple | None = None) -> tuple:
        """Take finished outcomes, lease up to `want` tasks (waiting up to `wait` s for some).

        `cursor` is (session, call number, number of the last call whose reply arrived): with it
        the master requeues at once what it leased in replies that were lost, and leases
        nothing to a call that arrives after a later one (Dispatcher.begin_call)."""
        ours = batch == self.batch
        self._checked("exchange", _check_exchange, worker_id, batch, outcomes, want, wait,
                      cursor, self.dispatcher.total if ours else MAX_WIRE_INT)
        call = None
        if not ours:
            # Results of another batch (a worker that outlived its master): never ours.
            if outcomes:
                self._note("other batch", logging.WARNING, "worker %s from %s sent %d results "
                           "of batch %r, this is %r: ignored", worker_id, current_peer(),
                           len(outcomes), batch, self.batch)
            outcomes = []
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
            if outcomes:
                d.complete(worker_id, outcomes, encoded=True)
                if d.done:
                    self.cond.notify_all()
                self._completed()
            if self._finished():
                return self._stop(worker_id)
            if self.started:
                tasks = d.lease(worker_id, want, call)
            else:
                tasks = []
                if want > 0:
                    d.wants(worker_id)      # it shares in the batch once it starts
            if not tasks and want > 0 and wait > 0:
                self.cond.wait_for(lambda: (self.started and d.has_pending()) or self._finished(),
                                   timeout=min(wait, MAX_LONG_POLL, self.heartbeat_interval))
                if self._finished():
                    return self._stop(worker_id)
                tasks = d.lease(worker_id, want, call) if self.started else []
            if tasks:
                self._leased()
            return [tuple(t) for t in tasks], RUN

    def release(self, worker_id: str, seqs: list) -> int:
        """A draining worker hands back tasks it has not started."""
        self._checked("release", _check_release, worker_id, seqs, self.dispatcher.total)
        with self.cond:
            returned = self.dispatcher.release(worker_id, seqs)
            if returned:
                self.cond.notify_all()
        self._note("draining", logging.INFO, "worker %s is draining: handed back %d tasks it "
                   "had not started", worker_id, returned)
        return returned

    def goodbye(self, worker_id: str) -> None:
        self._checked("goodbye", check_worker_id, worker_id)
        with self.cond:
            held = self.dispatcher.leave(worker_id)
            if held:
                self.cond.notify_all()
        self._note("left", logging.INFO, "worker %s left, handing back %d tasks", worker_id,
                   held)

    def ping(self) -> dict:
        with self.cond:
            d = self.dispatcher
            return {"state": STOP if self._finished() else RUN, "total": d.total,
                    "done": d.finished, "workers": len(d.alive_workers())}

    def status(self, limit: int | None = MAX_STATUS_WORKERS) -> dict:
        """What `procfleet status` and the dashboard show: the batch's figures and the
        worker table (figures.worker_rows: at most `limit` rows, None for all; a peer's call
        takes no argument), read under the lock."""
        with self.cond:
            d = self.dispatcher
            return {"state": STOP if self._finished() else RUN, "batch": self.batch,
                    **self._work_figures(),
                    "workers": worker_rows(d.workers, self._worker_parts(), self.watch,
                                           d.clock(), limit)}

    def _work_figures(self) -> dict:
        """(Under the lock) the batch's part of status()."""
        d = self.dispatcher
        c = d.counters
        first = d.first_lease_at
        return {"mode": "batch", "total": d.total, "finished": d.finished, "ok": c.ok,
                "failed": c.failed, "running": d.running(), "pending": d.pending(),
                "requeued": c.requeued, "retried": c.retried,
                "duplicates_dropped": c.duplicates,
                "alive_workers": len(d.alive_workers()),
                "elapsed_s": round(d.clock() - first, 1) if first is not None else 0.0}

    def _worker_parts(self) -> list[dict]:
        """The other worker tables whose figures add to the dispatcher's own (a service's
        jobs); a batch has none."""
        return []

    def recent_failures(self) -> list[dict]:
        """The latest failed results (id, task, worker, error), newest first."""
        with self.cond:
            lines = list(self.watch.failures)
        failures = []
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            failures.append({key: record.get(key) for key in ("id", "task", "worker", "error")})
        return failures

    def counter_totals(self) -> dict[str, int]:
        """Every counter of leases.Counters, for the whole run (the metrics)."""
        with self.cond:
            return self.dispatcher.counters.as_dict()

    def watch_durations(self, durations) -> None:
        """From now on, observe each task's lease-to-result seconds into `durations`."""
        with self.cond:
            self.dispatcher.durations = durations

    def durations_snapshot(self, durations) -> tuple:
        with self.cond:
            return durations.snapshot()

    def history(self) -> list[tuple[float, int, int]]:
        """(seconds ago, ok, failed) samples of the whole batch, oldest first."""
        with self.cond:
            now = self.dispatcher.clock()
            return [(round(now - t, 1), ok, failed) for t, ok, failed in self.watch.history]

    # -- exposed to clients: only a service (--serve) has jobs ------------------------------
    def job_open(self, options: dict) -> dict:
        raise ValueError(_NOT_A_SERVICE)

    def job_put(self, job: str, lines: list, end: bool, wait: float) -> int:
        raise ValueError(_NOT_A_SERVICE)

    def job_results(self, job: str, limit: int, wait: float) -> tuple:
        raise ValueError(_NOT_A_SERVICE)

    def job_cancel(self, job: str, seqs: list) -> list:
        raise ValueError(_NOT_A_SERVICE)

    def job_close(self, job: str) -> dict:
        raise ValueError(_NOT_A_SERVICE)

    def _completed(self) -> None:
        """Results were taken (under the lock): a service wakes the clients waiting for them."""

    def _leased(self) -> None:
        """Tasks were leased (under the lock): wake whoever waits to feed more in."""
        if self.waiting_for_room:
            self.feeders.notify_all()

    def wait_for_room(self, has_room, timeout: float) -> bool:
        """Under the lock: wait up to `timeout` s until `has_room()` or the batch stops."""
        self.waiting_for_room += 1
        try:
            return self.feeders.wait_for(lambda: has_room() or self.stopping, timeout)
        finally:
            self.waiting_for_room -= 1

    # -- used by the master's own loop ------------------------------------------------------
    def snapshot(self) -> dict:
        """The batch's figures as plain numbers, read under the lock (server threads change
        them all the time): for the progress and summary lines."""
        with self.cond:
            d = self.dispatcher
            return {"total": d.total, "finished": d.finished, **d.counters.as_dict(),
                    "running": d.running(), "alive_workers": len(d.alive_workers()),
                    "workers": d.seen_workers(), "first_lease_at": d.first_lease_at,
                    "refused_calls": self.notes["refused"].total,
                    "per_worker": {w.id: {"ok": w.ok, "failed": w.failed}
                                   for w in d.workers.values()}}

    def tick(self) -> tuple[list, list, list[str]]:
        """Expire silent workers; return (leased since the last tick, (seq, result, ok?) to
        journal and write, events to log). Leases are recorded only with a journal. Events
        are throttled per kind, with a line for those left out; so are this service's own
        log lines."""
        with self.cond:
            d = self.dispatcher
            if d.expire() or d.has_pending():
                self.cond.notify_all()     # also wakes long polls when a retry comes due
            leased, results, events = d.take_leased(), d.take_results(), d.take_events()
            self._watch(results)
        return leased, results, self._throttled(events)

    def _watch(self, results: list) -> None:
        """(Under the lock) keep the latest failures, and sample the figures once a second."""
        failures = self.watch.failures
        for _seq, line, ok in results:
            if not ok:
                failures.append(line)
        if self.watch.due():
            d = self.dispatcher
            self.watch.sample(done_by_worker(d.workers, self._worker_parts()), *self._totals())

    def _totals(self) -> tuple[int, int]:
        """(ok, failed) results so far (under the lock)."""
        c = self.dispatcher.counters
        return c.ok, c.failed

    def _throttled(self, events: list[tuple[str, str]]) -> list[str]:
        lines = []
        for kind, text in events:
            counter = self.events.get(kind)
            if counter is None:
                counter = self.events[kind] = ThrottledCounter(
                    f"{kind} event", f"{kind} events", burst=20, clock=self.dispatcher.clock)
            if counter.record()[1]:
                lines.append(text)
        for counter in self.events.values():
            suppressed, total = counter.summary()
            if suppressed:
                lines.append(f"{suppressed} more {counter.many} since the last of these lines, "
                             f"not logged one by one ({total} in all)")
        for counter, level in ((c, logging.INFO if kind in _INFO_NOTES else logging.WARNING)
                               for kind, c in self.notes.items()):
            suppressed, total = counter.summary()
            if suppressed:
                log.log(level, "%d more %s since the last of these lines, not logged one by "
                        "one (%d in all)", suppressed, counter.many, total)
        return lines

    def wait_for_change(self, timeout: float) -> None:
        with self.cond:
            if not self.dispatcher.done:
                self.cond.wait(timeout)

    def stop(self) -> None:
        """From now on every worker call answers STOP."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            self.feeders.notify_all()

    def wait_workers_told(self, timeout: float) -> list[str]:
        """Wait until every live worker has been answered STOP; return those that were not."""
        def not_told():
            return [w.id for w in self.dispatcher.workers.values() if w.alive and not w.told_stop]

        with self.cond:
            self.cond.wait_for(lambda: not not_told(), timeout)
            return not_told()

    def _checked(self, method: str, check, *args):
        """Run `check` on a call's arguments and return what it returns; a refused call is
        logged (throttled) and its ValueError/TypeError goes back to the caller, before
        anything changed."""
        try:
            return check(*args)
        except (TypeError, ValueError) as exc:
            self._note("refused", logging.WARNING, "refused %s() from %s: %s", method,
                       current_peer(), exc)
            raise

    def _note(self, kind: str, level: int, fmt: str, *args) -> None:
        total, loud = self.notes[kind].record()
        if loud:
            log.log(level, fmt, *args)

    def _finished(self) -> bool:
        return self.stopping or self.dispatcher.done

    def _stop(self, worker_id: str) -> tuple:
        worker = self.dispatcher.workers[worker_id]
        worker.told_stop = True
        self.cond.notify_all()
        return [], STOP


_NOT_A_SERVICE = ("this master runs one batch (--tasks or --demo); submit jobs to a master "
                  "started with --serve")

_INFO_NOTES = frozenset({"joined", "draining", "left"})


def _remember_hello(worker, info: dict) -> None:
    """Keep what a worker's hello said about it (checked already), for status."""
    worker.address = current_peer()
    python, concurrency = info.get("python"), info.get("concurrency")
    worker.python = python if type(python) is str else ""
    worker.concurrency = concurrency if type(concurrency) is int else None


def _check_hello(worker_id, info) -> None:
    check_worker_id(worker_id)
    if type(info) is not dict or len(info) > MAX_INFO_ITEMS:
        raise TypeError(f"hello(worker_id, info): info is a dict of at most {MAX_INFO_ITEMS} "
                        f"items, not {describe(info)}")
    for key, value in info.items():
        check_name("a key of hello's info", key)
        if type(value) is str:
            check_name(f"info[{key!r}]", value)
        elif type(value) in (int, float, bool, type(None)):
            if type(value) is int and value.bit_length() > 64:
                raise ValueError(f"info[{key!r}] is a number, not {describe(value)}")
        else:
            raise TypeError(f"info[{key!r}] is text, a number or None, not {describe(value)}")


def _check_exchange(worker_id, batch, outcomes, want, wait, cursor, seq_limit) -> None:
    check_worker_id(worker_id)
    check_name("batch", batch)
    check_count("want", want)
    if type(wait) not in (int, float) or not 0 <= wait <= MAX_WAIT:
        raise ValueError(f"wait is a number of seconds from 0 to {MAX_WAIT:g}, not "
                         f"{describe(wait)}")
    if cursor is not None:
        if type(cursor) is not tuple or len(cursor) != 3:
            raise TypeError(f"cursor is (session: str, call: int, acked: int), not "
                            f"{describe(cursor)}")
        check_name("a cursor's session", cursor[0])
        check_count("a cursor's call number", cursor[1])
        check_count("a cursor's acked call number", cursor[2])
    check_outcomes(outcomes, seq_limit)


def _check_release(worker_id, seqs, total: int) -> None:
    check_worker_id(worker_id)
    if type(seqs) is not list or len(seqs) > MAX_OUTCOMES:
        raise TypeError(f"release(worker_id, seqs): seqs is a list of at most {MAX_OUTCOMES:,} "
                        f"ints, not {describe(seqs)}")
    for seq in seqs:
        check_count("a seq", seq, total)
