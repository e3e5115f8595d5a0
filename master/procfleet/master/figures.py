"""What `procfleet status`, the metrics and the dashboard show: the worker table with rates,
task durations, throughput over time. Plain classes on the dispatcher's clock, no I/O; the
service (rpc.py) reads them under its lock.
"""

from bisect import bisect_left
from collections import deque

#: a worker's rate is its results over about this many seconds (or since it joined)
RATE_WINDOW = 10.0
#: the figures are sampled at most this often (from the master's tick)
SAMPLE_EVERY = 1.0
#: samples of the whole batch's progress kept for the dashboard's chart (one per SAMPLE_EVERY)
HISTORY = 600
#: at most this many workers in a status reply (alive ones first): a reply stays small
MAX_STATUS_WORKERS = 1000
#: upper bounds (seconds) of the task duration histogram's buckets
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 120.0, 300.0, 600.0)


class Durations:
    """A histogram of lease-to-result seconds: from the lease that handed a task out to the
    worker's result for that attempt (the worker's queue and the exchange's trip included; the
    wire carries no run time of the worker's own)."""

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)     # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe_since(self, now: float, stamps) -> None:
        """One observation per lease time in `stamps`, each `now - stamp` seconds."""
        counts, bounds = self.counts, self.bounds
        total = 0.0
        for stamp in stamps:
            seconds = now - stamp
            counts[bisect_left(bounds, seconds)] += 1
            total += seconds
        self.sum += total
        self.count += len(stamps)

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """(cumulative (bound, count) pairs, the last bound inf), sum, count."""
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            cumulative.append((bound, running))
        return cumulative, self.sum, self.count


class Watch:
    """Samples of each worker's done count and of the batch's progress, for rates and the
    dashboard's throughput chart. `sample` is called often; it keeps one sample a second."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self._last = float("-inf")
        self._done: dict[str, deque] = {}          # worker id -> (time, done) samples
        self.history: deque = deque(maxlen=HISTORY)  # (time, ok, failed) of the whole batch
        self.failures: deque = deque(maxlen=20)     # the latest failed result lines (text)

    def due(self) -> bool:
        return self.clock() - self._last >= SAMPLE_EVERY

    def sample(self, done_by_worker: dict[str, int], ok: int, failed: int) -> None:
        now = self._last = self.clock()
        self.history.append((now, ok, failed))
        samples = self._done
        for gone in samples.keys() - done_by_worker.keys():
            del samples[gone]
        for worker_id, done in done_by_worker.items():
            kept = samples.get(worker_id)
            if kept is None:
                kept = samples[worker_id] = deque()
            kept.append((now, done))
            while len(kept) > 1 and now - kept[0][0] > RATE_WINDOW:
                kept.popleft()

    def rate(self, worker_id: str, done: int, joined_at: float, now: float) -> float:
        """Results a second over the last RATE_WINDOW s, or since `worker_id` joined."""
        kept = self._done.get(worker_id)
        if kept and now - kept[0][0] > 0.5 and now - joined_at > RATE_WINDOW:
            since, before = kept[0]
        else:
            since, before = joined_at, 0
        return (done - before) / (now - since) if now > since else 0.0


def worker_rows(identity: dict, parts: list[dict], watch: Watch, now: float,
                limit: int | None = MAX_STATUS_WORKERS) -> list[dict]:
    """The worker table: one row per worker of `identity` (id -> WorkerState: liveness, what
    its hello said, and its own ok/failed/held), adding the ok/failed/held of the same id in
    each of `parts` (a service's jobs). Alive workers first, then by id; at most `limit`
    (None: all)."""
    rows = []
    order = sorted(identity.values(), key=lambda w: (not w.alive, w.id))[:limit]
    for w in order:
        ok, failed, held = w.ok, w.failed, len(w.held)
        for part in parts:
            other = part.get(w.id)
            if other is not None:
                ok, failed, held = ok + other.ok, failed + other.failed, held + len(other.held)
        state = ("working" if held else "idle") if w.alive else ("left" if w.left else "lost")
        rows.append({"id": w.id, "address": w.address, "python": w.python,
                     "concurrency": w.concurrency, "state": state, "held": held, "ok": ok,
                     "failed": failed, "last_seen_s": round(max(0.0, now - w.last_seen), 1),
                     "rate": round(watch.rate(w.id, ok + failed, w.joined_at, now), 2)})
    return rows


def done_by_worker(identity: dict, parts: list[dict]) -> dict[str, int]:
    """Results that ended a task, by worker id (identity's ids, summed over `parts`)."""
    done = {w.id: w.ok + w.failed for w in identity.values()}
    for part in parts:
        for w in part.values():
            if w.id in done:
                done[w.id] += w.ok + w.failed
    return done
