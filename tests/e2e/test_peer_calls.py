"""A peer with the key making malformed calls to a real master on loopback.

Every call is all or nothing: a refused one changes no counter and writes no line, so the batch
still ends with each task exactly once; nothing a peer sends reaches the log unescaped or
unthrottled; ids that only said hello do not shrink everyone's fair share.
"""

import re
import sys
from multiprocessing.managers import RemoteError

import pytest

from procfleet.shared.manager import PROTOCOL_VERSION, RUN, STOP, connect
from procfleet.shared.records import OK
from procs import assert_exactly_once, master_port, read_results

#: longest a test waits for the master to answer or to end
PROMPT = 10.0
N = 200
#: what a refused call raises in the caller: the server's ValueError/TypeError, or its text
REFUSED = (TypeError, ValueError, RemoteError)


class Intruder:
    """A raw client with the key, calling the master's dispatcher by hand, numbering its calls
    as a worker does."""

    def __init__(self, port: int, key: str, worker_id: str = "intruder") -> None:
        self.proxy = connect(("127.0.0.1", port), key.encode(), timeout=PROMPT)
        self.proxy.set_call_timeout(PROMPT)
        self.id = worker_id
        self.calls = 0
        reply = self.proxy.hello(worker_id, {"protocol": PROTOCOL_VERSION, "session": "s1"})
        assert reply["state"] == RUN
        self.batch = reply["batch"]

    def exchange(self, outcomes: list, want: int = 0) -> tuple:
        self.calls += 1
        return self.proxy.exchange(self.id, self.batch, outcomes, want, 0,
                                   ("s1", self.calls, self.calls - 1))

    def refused(self, method: str, *args) -> str:
        """Call `method`, which must be refused; return the reason the master gave."""
        if method == "exchange":
            self.calls += 1
            args = (*args, ("s1", self.calls, self.calls - 1))
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(10_000)       # so that pickle can send a value 1,500 deep
        try:
            with pytest.raises(REFUSED) as refusal:
                getattr(self.proxy, method)(*args)
        finally:
            sys.setrecursionlimit(limit)
        return str(refusal.value)


@pytest.fixture
def batch(spawn, tmp_path, authkey_env):
    """Factory: a master serving N demo tasks with no workers of its own, and an Intruder."""

    def start(*options):
        out = tmp_path / "results.jsonl"
        master = spawn("master", "--demo", str(N), "--bind", "127.0.0.1:0", "--results",
                       str(out), *options)
        return master, Intruder(master_port(master), authkey_env), out

    return start


def squares(tasks) -> list:
    return [(t[0], OK, t[3][0] ** 2, None) for t in tasks]


def nested(depth: int):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


def finish(master, intruder: Intruder, tasks, out) -> dict:
    """Report every task's right result; the master must end at once, exit 0, each task once."""
    assert intruder.exchange(squares(tasks)) == ([], STOP)
    assert master.wait(60) == 0, master.stderr[-3000:]
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(N)})
    assert "Traceback" not in master.stderr
    return summary(master.stderr)


def summary(log: str) -> dict[str, float]:
    """The figures of the master's own summary line (a refusal may quote a forged one)."""
    [line] = re.findall(r"(?m)^\d\d:\d\d:\d\d [^:]+: summary: (.*)$", log)
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split())}


def test_a_refused_exchange_writes_and_counts_nothing(batch):
    """An outcome nested 1,500 deep, or a 5,000-digit seq, once raised midway: the results
    before it were written, and the batch could not end cleanly."""
    master, intruder, out = batch("--lease-timeout", "30")
    tasks, _ = intruder.exchange([], N)
    assert len(tasks) == N
    good = squares(tasks)
    reasons = [
        intruder.refused("exchange", intruder.id, intruder.batch,
                         good[:-1] + [(good[-1][0], OK, nested(1500), None)], 0, 0),
        intruder.refused("exchange", intruder.id, intruder.batch,
                         good[:100] + [(10 ** 5000, OK, 0, None)] + good[100:], 0, 0),
        intruder.refused("exchange", intruder.id, intruder.batch,
                         good[:100] + [(N, OK, 0, None)], 0, 0),
    ]
    assert all("\n" not in r and len(r) < 400 for r in reasons), reasons
    assert intruder.proxy.ping()["done"] == 0          # nothing was counted
    got = finish(master, intruder, tasks, out)
    assert got["ok"] == N and got["failed"] == 0 and got["duplicates_dropped"] == 0
    assert got["refused_calls"] == 3


def test_a_peer_cannot_forge_log_lines_or_break_the_batchs_end(batch):
    """A newline in a worker id forged a `summary:` line; a non-text id made a successful
    batch exit 1 at its end."""
    master, intruder, out = batch("--lease-timeout", "3")
    forged = "w\nFORGED summary: tasks=0 ok=0 failed=0 unfinished=0"
    intruder.refused("hello", forged, {"protocol": PROTOCOL_VERSION})
    intruder.refused("hello", "w2", {"protocol": PROTOCOL_VERSION, "python": f"3.12\n{forged}"})
    intruder.refused("release", 5, [])
    intruder.refused("goodbye", None)
    intruder.refused("exchange", ["w"], intruder.batch, [], 1, 0)
    tasks, _ = intruder.exchange([], N)
    assert finish(master, intruder, tasks, out)["ok"] == N
    assert not any(line.startswith("FORGED") for line in master.stderr.splitlines())


def test_a_flood_of_malformed_outcomes_is_a_few_log_lines(batch):
    """One call with 200k malformed outcomes once wrote 200k warning lines (21.8 MB)."""
    master, intruder, out = batch("--lease-timeout", "30")
    malformed = [("x", OK, 0, None)]
    intruder.refused("exchange", intruder.id, intruder.batch, malformed * 60_000, 0, 0)
    intruder.refused("exchange", intruder.id, intruder.batch, malformed * 200_000, 0, 0)
    for _ in range(300):
        intruder.refused("exchange", intruder.id, intruder.batch, malformed, 0, 0)
    tasks, _ = intruder.exchange([], N)
    assert finish(master, intruder, tasks, out)["refused_calls"] == 302   # each one counted
    refusals = [line for line in master.stderr.splitlines() if "refused" in line]
    assert 1 <= len(refusals) <= 20, f"{len(refusals)} lines for 302 refused calls"
    assert len(master.stderr) < 50_000


def test_ids_that_only_said_hello_do_not_shrink_the_fair_share(batch, authkey_env):
    """3,000 idle ids kept alive by hello() made a batch 5-6x slower: each lease was a 3,001st
    of what was left."""
    master, intruder, out = batch("--lease-timeout", "3")
    for i in range(3000):
        assert intruder.proxy.hello(f"idle-{i}", {"protocol": PROTOCOL_VERSION})["state"] == RUN
    tasks, _ = intruder.exchange([], N)
    assert len(tasks) == N
    finish(master, intruder, tasks, out)
    joins = [line for line in master.stderr.splitlines() if " joined from " in line]
    assert len(joins) <= 300, f"{len(joins)} join lines for 3,001 ids"
