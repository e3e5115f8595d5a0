"""Running tasks in long-lived child processes, killed on a timeout and replaced when they die.

One parent thread (a slot) owns one child at a time. It sends the child chunks of tasks down a
pipe and reads results back in batches; the child shows which task it is running, and since
when, in a two-number shared array instead of a message per task, so tiny tasks stay cheap while
the slot can still time out the running task and blame a crash on it. This is the parent's
side; what runs inside a child is in taskproc.py.
"""

import atexit
import collections
import logging
import multiprocessing
import operator
import pickle
import signal
import sys
import threading
import time

from procfleet.shared import compat
from procfleet.shared import tasks as builtin_tasks
from procfleet.shared.protocol import CRASH, TIMEOUT, Outcome, Task
from procfleet.shared.tasks import TaskRegistry

from .taskproc import SINCE, STARTED, child_main, error_outcome, reason

#: a record from a plain tuple without NamedTuple's Python-level __new__ (a third of the cost)
_outcome = tuple.__new__

log = logging.getLogger(__name__)

#: a chunk holds about this much work, judged by how long the child took per task so far ...
CHUNK_SECONDS = 0.005
#: ... and at most this many tasks (a slot starts at 1 and doubles while tasks stay quick)
CHUNK_MAX = 256
#: a slot keeps up to this many chunks of quick tasks in its child's pipe, so the child goes on
#: to the next chunk while the worker, which shares the CPU with other processes, has not yet read
#: the last one's results; the tasks a child holds are still at most AHEAD * CHUNK_SECONDS of work.
#: Tasks longer than a chunk go one at a time, so none waits behind a slow one in a child's pipe.
AHEAD = 4
#: while a child still has work, a slot sends more only if the pipe then holds at most this many
#: bytes, so the send cannot block: a slot stuck in a send could not read results (the child may be
#: blocked sending them) nor enforce a timeout
PIPELINE_BYTES = 32 * 1024
#: the longest a slot waits before looking again at its child, the queue and close()
MAX_WAIT = 1.0
#: how long to wait for a killed or dead child's exit status
REAP_TIMEOUT = 0.5
#: close() returns within this, whatever the children are doing
CLOSE_TIMEOUT = 1.5
#: a child that dies without finishing a task is started again after a pause doubling up to the max
RESTART_PAUSE_MIN = 0.05
RESTART_PAUSE_MAX = 2.0
#: a task held by a task process that failed outside any task (it died between tasks, or its slot
#: raised) goes back to the queue, and from then on to a child alone; held by this many such
#: failures, it fails (ERROR) instead, so a task that breaks its process is not retried for ever
MAX_STRIKES = 3

#: tries at reading the two numbers consistently while the child may be changing them
_STATE_READS = 3

#: what a child needs of a task, as a plain tuple: (seq, name, args, kwargs)
_for_child = operator.attrgetter("seq", "name", "args", "kwargs")

# why a slot let go of its child
_DIED = "died"
_TIMED_OUT = "timed out"
_CLOSING = "closing"


# -- the parent --------------------------------------------------------------------------------

def _context(imports: tuple[str, ...]):
    """A private multiprocessing context for the task processes.

    forkserver where there is one: the worker has threads, so forking it directly is unsafe,
    while a fork server is a single-threaded process that imported our modules once and forks a
    new child in milliseconds. Each child still runs the worker's main script again (before
    3.14, preloading "__main__" does nothing: compat.set_forkserver_preload), so the procfleet
    modules the worker has loaded, which that script imports, are preloaded to make the rerun
    cheap. The preload list is process-wide and fixed once the server runs; children import
    `imports` themselves too, so a later Executor still gets its modules.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        loaded = sorted(name for name in sys.modules if name.startswith("procfleet."))
        compat.set_forkserver_preload(ctx, ["__main__", __name__, *loaded, *imports])
        return ctx
    return multiprocessing.get_context("spawn")


def _registry_for_children(registry: TaskRegistry) -> TaskRegistry | None:
    """None for procfleet's registry (children rebuild it by importing), else the registry to
    pickle to them, which works when its functions are module-level."""
    if registry is builtin_tasks.registry:
        return None
    try:
        pickle.dumps(registry)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError("task processes cannot receive this registry; register module-level "
                         f"functions (or use procfleet's registry with imports=): {exc}") from None
    return registry


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exited (its exit status is unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            return f"was killed by signal {-exitcode}"
        return f"was killed by signal {-exitcode} ({name})"
    return f"exited with code {exitcode}"


def _longer(pause: float) -> float:
    """The next pause before starting a child again after one that did no work."""
    return min(max(2 * pause, RESTART_PAUSE_MIN), RESTART_PAUSE_MAX)


def pace(target: int, per_task: float) -> tuple[int, int]:
    """(tasks per chunk, tasks a child may hold) after chunks of `target` took `per_task` s each.

    A chunk doubles while tasks stay quick, up to CHUNK_MAX and CHUNK_SECONDS of work; a child
    holds AHEAD chunks of quick tasks, but never more than AHEAD * CHUNK_SECONDS of work, and a
    task longer than a chunk alone.
    """
    fits = int(CHUNK_SECONDS / per_task) if per_task > 0 else CHUNK_MAX
    target = max(1, min(CHUNK_MAX, 2 * target, fits))
    return target, target * AHEAD if fits else 1


class _Chunk(collections.namedtuple("_Chunk", "last nbytes min_timeout")):
    """A chunk sent to a child: the child's number of its last task, its pickled size, and its
    smallest timeout (None: none)."""


class _Child:
    """One task process and what its slot has sent it."""

    def __init__(self, ctx, name: str, registry: TaskRegistry | None,
                 imports: tuple[str, ...]) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.state = ctx.RawArray("d", 2)
        self.view = memoryview(self.state).cast("B").cast("d")
        # Not daemonic, so a task may start processes of its own; close(), also run at exit,
        # kills it instead.
        self.proc = ctx.Process(target=child_main, name=name,
                                args=(child_conn, self.state, registry, imports))
        try:
            self.proc.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
            child_conn.close()                      # so the child's death reads as EOF here
        self.inflight: collections.deque[Task] = collections.deque()  # in the order it runs them
        self.received = 0                           # results so far; inflight[0] is task received+1
        self.chunks: collections.deque[_Chunk] = collections.deque()
        self.inflight_bytes = 0
        self.suspect = False                        # inflight is one task sent alone, struck before

    def kill(self) -> None:
        try:
            self.proc.kill()
        except (OSError, ValueError):
            pass                                    # already gone, or closed

    def release(self) -> None:
        self.conn.close()
        if self.proc.exitcode is not None:
            self.proc.close()                       # frees its pipes to the fork server


class _Slot:
    """A thread that keeps one child busy: feeds it chunks, collects results, times out and
    replaces it."""

    def __init__(self, executor: "Executor", index: int) -> None:
        self.ex = executor
        self.index = index
        self.target = 1                             # tasks per chunk, adapted to their duration
        self.limit = 1                              # tasks its child may hold (AHEAD chunks)
        self.child: _Child | None = None
        self.started = False                        # has had a task process at least once
        self.thread = threading.Thread(target=self._run, name=f"task-slot-{index}", daemon=True)

    def kill(self) -> None:
        child = self.child
        if child is not None:
            child.kill()

    # -- life of the slot ------------------------------------------------------------------
    def _run(self) -> None:
        ex = self.ex
        pause = 0.0
        while not ex._closing.is_set():
            if pause and ex._closing.wait(pause):
                break
            child = self._start_child()
            if child is None:
                pause = _longer(pause)
                continue
            try:
                worked = self._serve(child)
            except Exception as exc:
                log.exception("task slot %d failed; its tasks go back to the queue", self.index)
                child.kill()
                child.proc.join(REAP_TIMEOUT)
                ex._strike(list(child.inflight), f"its task slot failed: {reason(exc)}")
                worked = False
            finally:
                self.child = None
                child.release()
            pause = 0.0 if worked else _longer(pause)

    def _start_child(self) -> _Child | None:
        ex = self.ex
        try:
            child = _Child(ex._ctx, f"procfleet-task-{self.index}", ex._child_registry, ex.imports)
        except Exception:
            log.exception("cannot start a task process; trying again")
            return None
        self.child = child
        if not self.started:
            self.started = True
            with ex._cond:
                ex._slots_started += 1
                ex._cond.notify_all()
        if ex._closing.is_set():                    # close() ran while we were starting it
            child.kill()
            child.proc.join(REAP_TIMEOUT)
            self.child = None
            child.release()
            return None
        return child

    def _serve(self, child: _Child) -> bool:
        """Run tasks on `child` until it dies, overruns a timeout or the executor closes.

        True if the child got through a task (so a replacement can start at once)."""
        ex = self.ex
        while True:
            try:
                if not child.inflight:
                    with ex._cond:
                        ex._cond.wait_for(lambda: ex._queue or ex._closing.is_set(), MAX_WAIT)
                    if not ex._closing.is_set():
                        self._feed(child)
                elif child.conn.poll(self._wait_time(child)):
                    busy, results = pickle.loads(child.conn.recv_bytes())
                    self._accept(child, busy, results)
                    self._feed(child)
            except (EOFError, OSError):
                return self._bury(child, _DIED)
            if ex._closing.is_set():
                return self._bury(child, _CLOSING)
            running = self._running(child)
            if running is not None and self._overdue(*running):
                return self._bury(child, _TIMED_OUT)

    # -- feeding and reading ---------------------------------------------------------------
    def _feed(self, child: _Child) -> None:
        """Send the child a chunk if it is running low; never blocks on a full pipe."""
        ex = self.ex
        if len(child.inflight) >= self.limit or (child.suspect and child.inflight):
            return
        alone = False
        with ex._cond:
            fair_share = -(-len(ex._queue) // ex.concurrency)
            n = min(self.target, fair_share)
            if ex._strikes and n:
                n, alone = self._before_suspect(child, n)
            chunk = [ex._queue.popleft() for _ in range(n)]
        if not chunk:
            return
        try:
            data = pickle.dumps(list(map(_for_child, chunk)), pickle.HIGHEST_PROTOCOL)
        except Exception:                           # too deep, or not picklable: find which
            chunk, data = self._sendable(chunk)
            if not chunk:
                return
        if child.inflight and child.inflight_bytes + len(data) > PIPELINE_BYTES:
            ex._requeue(chunk)                      # sent once the child has caught up
            return
        timeouts = [t.timeout for t in chunk if t.timeout is not None]
        child.inflight.extend(chunk)
        child.chunks.append(_Chunk(child.received + len(child.inflight), len(data),
                                   min(timeouts, default=None)))
        child.inflight_bytes += len(data)
        child.suspect = alone
        child.conn.send_bytes(data)

    def _before_suspect(self, child: _Child, n: int) -> tuple[int, bool]:
        """(how many of the first `n` queued tasks to send, whether that is a struck task alone):
        the tasks before the first struck one, or that one alone once the child holds nothing."""
        queue, strikes = self.ex._queue, self.ex._strikes
        for i in range(n):
            if queue[i].seq in strikes:
                if i == 0 and not child.inflight:
                    return 1, True
                return i, False
        return n, False

    def _sendable(self, chunk: list[Task]) -> tuple[list[Task], bytes]:
        """The tasks of `chunk` that can be pickled, and them pickled as a chunk; the others
        fail at once (ERROR), since sending them again would fail again."""
        good, failed = [], []
        for task in chunk:
            try:
                pickle.dumps(_for_child(task), pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                text = (f"TaskNotSent: task {task.name!r} cannot be sent to a task process: "
                        f"its arguments do not pickle: {reason(exc)}")
                log.warning("%.300s (seq %d)", text, task.seq)
                failed.append(_outcome(Outcome, error_outcome(task.seq, text)))
            else:
                good.append(task)
        try:
            data = pickle.dumps(list(map(_for_child, good)), pickle.HIGHEST_PROTOCOL)
        except Exception as exc:                    # each alone, not together: out of memory?
            failed += [_outcome(Outcome, error_outcome(task.seq, f"TaskNotSent: task {task.name!r} "
                                                f"cannot be sent: {reason(exc)}"))
                       for task in good]
            good, data = [], b""
        self.ex._deliver(failed)
        return good, data

    def _accept(self, child: _Child, busy: float, results: list[tuple]) -> None:
        n = len(results)
        if not n:
            return
        for _ in range(n):
            child.inflight.popleft()
        child.received += n
        while child.chunks and child.chunks[0].last <= child.received:
            child.inflight_bytes -= child.chunks.popleft().nbytes
        self.target, self.limit = pace(self.target, busy / n)
        self.ex._deliver([_outcome(Outcome, r) for r in results])

    # -- watching the running task ---------------------------------------------------------
    def _running(self, child: _Child) -> tuple[Task, float] | None:
        """The task the child is running and when it started, or None between tasks.

        The child writes the task's number, then its start time, and zeroes the time when the
        task ends; equal times before and after reading the number mean the number belongs to
        them."""
        view = child.view
        for _ in range(_STATE_READS):
            since = view[SINCE]
            number = int(view[STARTED])
            if view[SINCE] == since:
                break
        else:
            return None                             # changing fast: nothing is overdue
        index = number - child.received - 1
        if not since or not 0 <= index < len(child.inflight):
            return None
        return child.inflight[index], since

    @staticmethod
    def _overdue(task: Task, since: float) -> bool:
        return task.timeout is not None and time.monotonic() - since >= task.timeout

    def _wait_time(self, child: _Child) -> float:
        """How long to wait for results before something could be overdue."""
        wait = MAX_WAIT
        running = self._running(child)
        if running is not None and running[0].timeout is not None:
            task, since = running
            wait = min(wait, since + task.timeout - time.monotonic())
        # a task that has not started yet cannot be overdue sooner than its whole timeout
        for chunk in child.chunks:
            if chunk.min_timeout is not None:
                wait = min(wait, chunk.min_timeout)
        return max(wait, 0.0)

    # -- the end of a child ----------------------------------------------------------------
    def _bury(self, child: _Child, why: str) -> bool:
        """Make sure the child is gone, take the results it sent, report the task it was running
        (TIMEOUT or CRASH) and queue the rest again. Returns whether it got through a task."""
        ex = self.ex
        if why != _DIED:
            child.kill()
        child.proc.join(REAP_TIMEOUT)
        if child.proc.exitcode is None:             # its pipe broke but it lingers: end it
            child.kill()
            child.proc.join(REAP_TIMEOUT)
        if why == _CLOSING:
            return True
        for _ in range(len(child.inflight) + 1):    # each message holds at least one result
            try:
                if not child.conn.poll(0):
                    break
                self._accept(child, *pickle.loads(child.conn.recv_bytes()))
            except (EOFError, OSError):
                break
        worked = child.received > 0
        culprit = None
        since = child.view[SINCE]                  # final now: the child is dead
        index = int(child.view[STARTED]) - child.received - 1
        if since and 0 <= index < len(child.inflight):
            task = child.inflight[index]
            pid = child.proc.pid
            if why == _TIMED_OUT and self._overdue(task, since):
                culprit = error_outcome(task.seq, f"TaskTimeout: timed out after {task.timeout:g} s; "
                                           f"the process running task {task.name!r} was killed",
                                 TIMEOUT)
                log.warning("task %.200r (seq %d) timed out after %g s; killed its process %d",
                            task.name, task.seq, task.timeout, pid)
            elif why == _DIED:
                how = _describe_exit(child.proc.exitcode)
                culprit = error_outcome(task.seq,
                                 f"WorkerCrash: the process running task {task.name!r} {how}",
                                 CRASH)
                log.warning("task %.200r (seq %d): its process %d %s; starting another",
                            task.name, task.seq, pid, how)
            if culprit is not None:
                del child.inflight[index]
                worked = True
        elif why == _DIED:
            how = _describe_exit(child.proc.exitcode)
            log.warning("task process %d %s between tasks; starting another", child.proc.pid, how)
            ex._strike(list(child.inflight), f"its task process {how} between tasks")
            child.inflight.clear()
        ex._requeue(list(child.inflight))
        child.inflight.clear()
        if culprit is not None:
            ex._deliver([_outcome(Outcome, culprit)])
        return worked


class Executor:
    """Runs tasks in `concurrency` child processes; outcomes are collected and set `wakeup`.

    A task that runs past its timeout is killed with its process (TIMEOUT); one whose process
    dies fails as CRASH; either way a fresh process takes over and the worker carries on. A task
    may run more than once (a child killed before sending a result), never report twice.
    `imports` are the user's task modules, which every child imports.
    """

    def __init__(self, registry: TaskRegistry, concurrency: int, wakeup: threading.Event,
                 imports: tuple[str, ...] = ()) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.registry = registry
        self.concurrency = concurrency
        self.wakeup = wakeup
        self.imports = tuple(imports)
        self._ctx = _context(self.imports)
        self._child_registry = _registry_for_children(registry)
        self._cond = threading.Condition()          # guards _queue and _submitted/_taken
        self._queue: collections.deque[Task] = collections.deque()
        self._results_lock = threading.Lock()       # guards _outcomes and _collected
        self._outcomes: list[Outcome] = []
        self._strikes: dict[int, int] = {}         # under _cond: seq -> failures that held it
        self._submitted = self._collected = self._taken = 0
        self._slots_started = 0
        self._closing = threading.Event()
        self._slots = [_Slot(self, i) for i in range(concurrency)]
        atexit.register(self.close)                 # children ignore SIGTERM; never leave them
        for slot in self._slots:
            slot.thread.start()

    def wait_started(self, timeout: float) -> bool:
        """Wait until every slot has started its task process; False if `timeout` passed."""
        with self._cond:
            return self._cond.wait_for(lambda: self._slots_started >= self.concurrency
                                       or self._closing.is_set(), timeout)

    def submit(self, tasks: list[Task]) -> None:
        """Queue `tasks` to run; never blocks."""
        if self._closing.is_set():
            raise RuntimeError("the executor is closed")
        with self._cond:
            self._queue.extend(tasks)
            self._submitted += len(tasks)
            self._cond.notify(len(tasks))

    def collect(self) -> list[Outcome]:
        """The outcomes that finished since the last call; never blocks."""
        with self._results_lock:
            outcomes, self._outcomes = self._outcomes, []
            self._collected += len(outcomes)
        return outcomes

    def take_unstarted(self) -> list[Task]:
        """Remove and return the queued tasks no child has been given; they get no outcome."""
        with self._cond:
            tasks = list(self._queue)
            self._queue.clear()
            self._taken += len(tasks)
            for task in tasks if self._strikes else ():
                self._strikes.pop(task.seq, None)
        return tasks

    def unstarted(self) -> int:
        """Tasks submitted that no task process has begun: queued here, or sent to a child
        that has not reached them. Read without stopping the slots: a moment's count."""
        with self._cond:
            count = len(self._queue)
        for slot in self._slots:
            child = slot.child
            if child is not None:
                # sent to the child and not yet started there: sent - started
                count += max(0, child.received + len(child.inflight) - int(child.view[STARTED]))
        return count

    def outstanding(self) -> int:
        """Tasks submitted and neither collected nor taken back, queued ones included."""
        with self._cond, self._results_lock:
            return self._submitted - self._taken - self._collected

    def close(self) -> None:
        """Kill the children and stop the slots, within CLOSE_TIMEOUT; safe to call again."""
        with self._cond:
            if self._closing.is_set():
                return
            self._closing.set()
            self._cond.notify_all()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for slot in self._slots:
            slot.kill()
        for slot in self._slots:
            slot.thread.join(max(0.0, deadline - time.monotonic()))
        atexit.unregister(self.close)

    # -- for the slots ---------------------------------------------------------------------
    def _deliver(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        with self._results_lock:
            self._outcomes.extend(outcomes)
        if self._strikes:
            self._forget_strikes(outcomes)
        self.wakeup.set()

    def _strike(self, tasks: list[Task], why: str) -> None:
        """Put back tasks held by a task process that failed outside any task, as _requeue
        does; a task held by MAX_STRIKES such failures fails (ERROR) instead."""
        back, failed = [], []
        with self._cond:
            for task in tasks:
                strikes = self._strikes.pop(task.seq, 0) + 1
                if strikes < MAX_STRIKES:
                    self._strikes[task.seq] = strikes
                    back.append(task)
                else:
                    failed.append(task)
        self._requeue(back)
        for task in failed:
            log.warning("task %.200r (seq %d) was held by %d task processes that failed outside "
                        "any task; failing it", task.name, task.seq, MAX_STRIKES)
        self._deliver([_outcome(Outcome, error_outcome(
            task.seq, f"TaskNotRun: {MAX_STRIKES} task processes failed outside any task while "
                      f"holding task {task.name!r} (last: {why}); it is not tried again here"))
            for task in failed])

    def _forget_strikes(self, done) -> None:
        with self._cond:
            for item in done:
                self._strikes.pop(item.seq, None)

    def _requeue(self, tasks: list[Task]) -> None:
        """Put tasks a child did not finish back at the front of the queue, in order."""
        if not tasks:
            return
        with self._cond:
            self._queue.extendleft(reversed(tasks))
            self._cond.notify(len(tasks))
