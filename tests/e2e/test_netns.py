"""Master and workers on separate hosts (network namespaces): cuts, flaps, loss, partitions.

Each test runs a real master in one namespace and two workers in two others, injects a fault on
one worker's link mid-batch, heals it, and checks that the batch ends soon after (within the
lease timeout, a few seconds to reconnect, and the work still left) with every task's result
exactly once. Needs root and `ip netns`; skips without them, fails without them in CI.
"""

import json
import math
import os
import random
import time

import pytest
from procfleet.worker.worker import CALL_TIMEOUT_LEASES, MIN_CALL_TIMEOUT

import chaos
import netns
from bench.procs import Child
from procs import assert_exactly_once, master_port, read_results, summary, wait_until

pytestmark = pytest.mark.chaos

LEASE_TIMEOUT = 2.0
#: a worker gives up on a call after this long and reconnects (as worker.py derives it)
CALL_TIMEOUT = max(MIN_CALL_TIMEOUT, CALL_TIMEOUT_LEASES * LEASE_TIMEOUT)
#: after a heal: time for the worker's next SYN (its backoff reaches 4 s) and for the master to
#: notice and release what the fault left dangling
SLACK = 5.0
#: the work left after a heal is estimated on every worker's slots (all are back within SLACK),
#: allowing this much over pure sleeping (dispatch, a busy 2-core machine)
OVERHEAD = 1.5


@pytest.fixture
def testbed(spawn):
    """Factory: `testbed(workers, iptables=False)`; removed (and checked gone) at teardown.

    Requests `spawn`, so it is torn down first: whatever still runs in a namespace is killed
    with it, before `spawn` reaps its processes.
    """
    beds: list[netns.Testbed] = []

    def make(workers: int, iptables: bool = False) -> netns.Testbed:
        netns.require(iptables)
        bed = netns.Testbed(workers)
        beds.append(bed)
        return bed

    yield make
    errors = []
    for bed in beds:
        try:
            bed.close()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, errors


class Batch:
    """A master in the testbed's master namespace and one worker per link."""

    def __init__(self, bed, spawn, tmp_path, tasks: list[dict], *, concurrency: int,
                 timeout: float) -> None:
        self.bed = bed
        self.expected = {t["id"]: t["args"][1] for t in tasks}
        self.seconds = tasks[0]["args"][0]
        self.concurrency = concurrency
        task_file = tmp_path / "tasks.jsonl"
        task_file.write_text("".join(json.dumps(t) + "\n" for t in tasks))
        self.out = tmp_path / "results.jsonl"
        workers = len(bed.links)
        self.master = spawn("master", "--tasks", str(task_file), "--bind", "0.0.0.0:0",
                            "--results", str(self.out), "--lease-timeout", str(LEASE_TIMEOUT),
                            "--timeout", str(timeout), "--wait-workers", str(workers),
                            python=bed.python(bed.master_ns))
        self.timeout = timeout
        port = master_port(self.master)
        self.workers = [
            spawn("worker", "--master", f"{link.master_ip}:{port}", "--id", f"w{link.index}",
                  "--concurrency", str(concurrency), "--connect-timeout", str(timeout),
                  python=bed.python(link.worker_ns))
            for link in bed.links]

    def results(self) -> list[dict]:
        """The results file's complete lines so far."""
        if not self.out.exists():
            return []
        text = self.out.read_text()
        return [json.loads(line) for line in text.splitlines(keepends=True)
                if line.endswith("\n") and line.strip()]

    def wait_results(self, count: int, worker: str | None = None, timeout: float = 20) -> None:
        wait_until(lambda: sum(1 for r in self.results()
                               if worker is None or r["worker"] == worker) >= count,
                   timeout, f"{count} results" + (f" from {worker}" if worker else ""))

    def work_left(self) -> float:
        """Seconds every worker's slots together need for the tasks without a result yet."""
        left = len(self.expected) - len(self.results())
        slots = self.concurrency * len(self.workers)
        return math.ceil(left / slots) * self.seconds * OVERHEAD

    def end(self) -> float:
        """Wait for the master's summary (the batch is over, or --timeout passed); its time."""
        t, _ = self.master.wait_for(r"summary: ", timeout=self.timeout + 10)
        return t

    def last_progress(self) -> str:
        lines = [line for line in self.master.stderr.splitlines() if "progress:" in line]
        return lines[-1] if lines else "(no progress line)"


def sleep_tasks(n: int, seconds: float) -> list[dict]:
    return [{"id": f"t{i}", "task": "sleep", "args": [seconds, i]} for i in range(n)]


def check(batch: Batch, fault: str, healed: float, deadline: float, *,
          recovery: str = "heal to batch end") -> dict:
    """Wait for the batch to end; add the chaos row; assert exit 0, exactly once, in time."""
    ended = batch.end()
    code = batch.master.wait(30)
    stats = summary(batch.master)
    results = batch.results()
    allowed = f"{recovery}; {deadline - healed:.1f} allowed"
    if "unacked" in stats:      # leases whose reply was lost, requeued at once
        allowed += f"; {stats['unacked']:.0f} unacked"
    chaos.record(fault, batch.expected, results, dropped=stats["duplicates_dropped"],
                 recover_s=ended - healed, recovery=allowed)
    print(f"\n{fault}: what the master said about w0:")
    print("\n".join(line for line in batch.master.stderr.splitlines() if "worker w0 " in line))
    tail = "\n".join(batch.master.stderr.splitlines()[-15:])
    assert code == 0, (f"master exit {code}, last progress: {batch.last_progress()}\n"
                       f"master stderr (tail):\n{tail}")
    assert_exactly_once(results, batch.expected)
    assert ended <= deadline, (f"batch ended {ended - healed:.1f} s after the heal, allowed "
                               f"{deadline - healed:.1f} s; master stderr (tail):\n{tail}")
    return stats


def test_worker_link_cut_longer_than_the_lease_then_restored(testbed, spawn, tmp_path):
    """The reported hang: 80 x sleep(0.5), a worker's link down 12 s mid-batch, then up."""
    bed = testbed(2)
    batch = Batch(bed, spawn, tmp_path, sleep_tasks(80, 0.5), concurrency=1, timeout=55)
    victim = bed.links[0]
    batch.wait_results(2, worker="w0")
    victim.cut()
    time.sleep(12.0)        # the fault's length, not a condition
    victim.restore()
    healed = time.monotonic()
    deadline = healed + LEASE_TIMEOUT + SLACK + batch.work_left()
    stats = check(batch, "netns: a worker's link down 12 s (> lease 2 s), then up",
                  healed, deadline)
    assert stats["workers_lost"] >= 1 and stats["requeued"] >= 1, stats


def test_flapping_link_cuts_exchanges_midway(testbed, spawn, tmp_path):
    """A worker's link goes down six times for 0.05-6.5 s (shorter than the lease, between the
    lease and the call timeout, longer than both) while quick tasks keep exchanges busy.

    The last cut is always a long one: a lease left dangling by a cut longer than the call
    timeout is requeued anyway when a later cut expires the worker's leases, which would hide it.
    """
    seed = int(os.environ.get("PROCFLEET_NETNS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    downs = [rng.uniform(0.05, 1.5) for _ in range(2)]
    downs += [rng.uniform(LEASE_TIMEOUT + 0.2, CALL_TIMEOUT - 0.5) for _ in range(2)]
    downs += [rng.uniform(CALL_TIMEOUT + 0.2, CALL_TIMEOUT + 1.5) for _ in range(2)]
    last = downs.pop()
    rng.shuffle(downs)
    downs.append(last)
    bed = testbed(2)
    batch = Batch(bed, spawn, tmp_path, sleep_tasks(1800, 0.05), concurrency=2, timeout=58)
    victim = bed.links[0]
    batch.wait_results(20, worker="w0")
    flaps = []
    for down in downs:
        if flaps:
            time.sleep(rng.uniform(0.1, 1.0))   # up between two cuts
        if batch.master.popen.poll() is not None:
            break
        victim.cut()
        time.sleep(down)    # the fault's length
        victim.restore()
        flaps.append(round(down, 2))
    healed = time.monotonic()
    deadline = healed + LEASE_TIMEOUT + SLACK + batch.work_left()
    stats = check(batch, f"netns: a worker's link flapping {len(flaps)} times (seed {seed})",
                  healed, deadline, recovery="last flap to batch end")
    assert len(flaps) == len(downs), f"the batch ended after {len(flaps)} flaps: too short"
    assert stats["workers_lost"] >= 1, stats


@pytest.mark.parametrize("loss", [0.05])
def test_packet_loss_both_ways_over_the_whole_batch(testbed, spawn, tmp_path, loss):
    """Every packet between master and both workers is dropped with probability `loss`."""
    bed = testbed(2, iptables=True)
    for link in bed.links:
        link.lose(loss)
    started = time.monotonic()
    tasks = sleep_tasks(400, 0.05)
    batch = Batch(bed, spawn, tmp_path, tasks, concurrency=2, timeout=45)
    nominal = len(tasks) * 0.05 / 4
    deadline = started + 3 * nominal + LEASE_TIMEOUT + SLACK
    stats = check(batch, f"netns: {loss:.0%} packet loss both ways on both links", started,
                  deadline, recovery="whole batch under loss")
    dropped = [link.heal() for link in bed.links]
    assert all(dropped), f"the loss rules dropped {dropped} packets: not exercised"
    print(f"\n{loss:.0%} loss: dropped {dropped} packets; {stats}")


@pytest.mark.parametrize("direction", [netns.TO_WORKER, netns.TO_MASTER])
def test_one_way_partition_longer_than_the_lease_then_healed(testbed, spawn, tmp_path,
                                                             direction):
    """One direction of a worker's link drops everything for 8 s (> lease and call timeout)."""
    bed = testbed(2, iptables=True)
    batch = Batch(bed, spawn, tmp_path, sleep_tasks(200, 0.25), concurrency=2, timeout=50)
    victim = bed.links[0]
    batch.wait_results(4, worker="w0")
    victim.drop(direction)
    time.sleep(8.0)         # the fault's length
    dropped = victim.heal()
    healed = time.monotonic()
    deadline = healed + LEASE_TIMEOUT + SLACK + batch.work_left()
    stats = check(batch, f"netns: one-way partition {direction} 8 s (> lease 2 s)", healed,
                  deadline)
    assert dropped > 0, "the partition dropped nothing"
    assert stats["workers_lost"] >= 1 and stats["requeued"] >= 1, stats


@pytest.mark.parametrize("rate, pad", [("1mbit", 5_000), ("200kbit", 20_000)])
def test_a_slow_link_delays_every_call_and_the_batch_still_ends_once_each(testbed, spawn,
                                                                        tmp_path, rate, pad):
    """One worker's link throttled both ways, with up to 1 s of queueing, and tasks carrying
    `pad` bytes each way. At 1 Mbit/s a lease or a batch of results takes a fraction of a second
    and the slow worker still does its share; at 200 kbit/s it takes seconds, so leases expire
    while replies are still on the way (netem delay is not in this kernel; tbf queueing is the
    delay we can make)."""
    bed = testbed(2)
    slow = bed.links[0]
    slow.throttle(rate, "1s")
    tasks = [{"id": f"t{i}", "task": "sleep", "args": [0.05, {"i": i, "pad": "x" * pad}]}
             for i in range(300)]
    started = time.monotonic()
    batch = Batch(bed, spawn, tmp_path, tasks, concurrency=2, timeout=55)
    nominal = len(tasks) * 0.05 / 2                     # the fast worker alone could do it
    deadline = started + 3 * nominal + LEASE_TIMEOUT + SLACK
    stats = check(batch, f"netns: one worker's link at {rate} with 1 s of queueing, "
                         f"{pad // 1000} KB a task each way", started, deadline,
                  recovery="whole batch on the slow link")
    slow.unthrottle()
    slow_results = sum(1 for r in batch.results() if r["worker"] == "w0")
    print(f"\nslow link {rate}: w0 delivered {slow_results} of {len(tasks)}; {stats}")
    if rate == "1mbit":
        assert slow_results > 0, "the slow worker did nothing: the link was as good as cut"


def serve_across(bed, spawn):
    """A `--serve` master in the bed's master namespace and a worker w<i> (2 slots) in each
    worker namespace, all joined; the master and its port."""
    master = spawn("master", "--serve", "--bind", "0.0.0.0:0", "--lease-timeout",
                   str(LEASE_TIMEOUT), python=bed.python(bed.master_ns))
    _, m = master.wait_for(r"serving jobs on [\d.]+:(\d+)")
    port = int(m.group(1))
    for link in bed.links:
        spawn("worker", "--master", f"{link.master_ip}:{port}", "--id", f"w{link.index}",
              "--concurrency", "2", "--connect-timeout", "40",
              python=bed.python(link.worker_ns)).wait_for("connected to master")
    return master, port


def cut_w0_past_the_lease(bed, master) -> float:
    """Take w0's link down until the master has requeued its tasks, 6 s in all, then bring it
    back; when it healed."""
    victim = bed.links[0]
    victim.cut()
    master.wait_for(r"worker w0 silent for more than 2 s: requeued", timeout=10)
    time.sleep(4.0)         # the rest of the fault's length, not a condition
    victim.restore()
    return time.monotonic()


def test_a_service_job_across_a_cut_worker_link(testbed, spawn, tmp_path):
    """A service (--serve) and its client on the master's host, workers on two others: one
    worker's link is down 6 s (> lease) mid-job; the job ends with every result exactly once."""
    bed = testbed(2)
    tasks = sleep_tasks(120, 0.1)
    task_file = tmp_path / "tasks.jsonl"
    task_file.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    out = tmp_path / "results.jsonl"
    master, port = serve_across(bed, spawn)
    client = spawn("submit", task_file, "--master", f"127.0.0.1:{port}", "--results", out,
                   "--timeout", "50", python=bed.python(bed.master_ns))
    wait_until(lambda: sum(1 for r in read_results(out) if r["worker"] == "w0") >= 2, 20,
               "w0's first results")
    healed = cut_w0_past_the_lease(bed, master)
    assert client.wait(60) == 0, client.tail()
    ended = time.monotonic()
    results = read_results(out)
    chaos.record("netns: a service job, a worker's link down > lease (--serve, submit)",
                 {t["id"]: t["args"][1] for t in tasks}, results,
                 dropped=summary(client, actor="submit")["duplicates_dropped"],
                 recover_s=ended - healed, recovery="heal to the client's exit 0")
    assert_exactly_once(results, {t["id"]: t["args"][1] for t in tasks})


#: a FleetExecutor(master=...) program, run on the master's host: submits TASKS sleep tasks
#: whose values carry a tuple and bytes, and writes one line per future as it resolves
EXECUTOR_CLIENT = """\
import json, sys
from concurrent.futures import as_completed
from procfleet.master import FleetExecutor
from procfleet.shared.tasks import sleep

port, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with FleetExecutor(master=f"127.0.0.1:{port}") as ex, open(out, "w", buffering=1) as lines:
    futures = {ex.submit(sleep, 0.1, (i, b"\\xff")): i for i in range(count)}
    for future in as_completed(futures, timeout=60):
        value = future.result()
        lines.write(json.dumps([futures[future], value[0], value[1].hex(),
                                type(value).__name__]) + "\\n")
"""


def test_a_fleet_executor_across_a_cut_worker_link(testbed, spawn, tmp_path):
    """FleetExecutor(master=...) on the master's host, workers on two others: one worker's link
    is down 6 s (> lease) mid-job, then restored; every future resolves exactly once, with its
    own value (a tuple holding bytes), and the executor exits 0."""
    bed = testbed(2)
    count = 200
    master, port = serve_across(bed, spawn)
    script, out = tmp_path / "client.py", tmp_path / "resolved.jsonl"
    script.write_text(EXECUTOR_CLIENT)

    def resolved() -> list[list]:
        return [json.loads(line) for line in out.read_text().splitlines()] \
            if out.exists() else []

    client = Child([bed.python(bed.master_ns), str(script), str(port), str(out), str(count)],
                   name="executor client")
    try:
        wait_until(lambda: len(resolved()) >= 10, 20, "the first futures to resolve")
        healed = cut_w0_past_the_lease(bed, master)
        assert client.wait(60) == 0, client.tail()
        ended = time.monotonic()
    finally:
        client.kill()
    lines = resolved()
    ids = [line[0] for line in lines]
    assert sorted(ids) == list(range(count)), "a future resolved twice, or never"
    assert all(line[1:] == [line[0], "ff", "tuple"] for line in lines), lines[:5]
    chaos.record("netns: FleetExecutor(master=...), a worker's link down > lease",
                 range(count), [{"id": str(i)} for i in ids],
                 recover_s=ended - healed, recovery="heal to the executor's exit 0")
