"""A peer with the key making malformed calls to a real master on loopback.

Every call is all or nothing: a refused one changes no counter and writes no line, so the batch
still ends with each task exactly once; nothing a peer sends reaches the log unescaped or
unthrottled; ids that only said hello do not shrink everyone's fair share.

A call is refused in one of three places: as a malformed message, before its request is
decoded (no reply: the master closes the connection, EOFError here); by its schema while the
server decodes it (a '#TRACEBACK' reply, RemoteError here, and the master closes the
connection); or by the service's own checks (a '#ERROR' reply, RemoteCallError here, counted
as refused_calls in the summary).
"""

import json
import re
import sys
from multiprocessing.managers import RemoteError

import pytest

from procfleet.master.batch import parse_summary
from procfleet.shared.manager import PROTOCOL_VERSION, RUN, STOP, connect
from procfleet.shared.protocol import MAX_DEPTH, OK
from procfleet.shared.codec import RemoteCallError
from peers import msgpack_ext
from procs import assert_exactly_once, master_port, read_results

#: longest a test waits for the master to answer or to end
PROMPT = 10.0
N = 200
#: what a refused call raises in the caller: refused by the service, or by the schema
REFUSED = (RemoteCallError, RemoteError)
MESSAGE, SCHEMA, SERVICE = "message", "schema", "service"


class Intruder:
    """A raw client with the key, calling the master's dispatcher by hand, numbering its calls
    as a worker does."""

    def __init__(self, port: int, key: str, worker_id: str = "intruder") -> None:
        self.address, self.key = ("127.0.0.1", port), key.encode()
        self.reconnect()
        self.id = worker_id
        self.calls = 0
        self.refusals = {MESSAGE: 0, SCHEMA: 0, SERVICE: 0}
        reply = self.proxy.hello(worker_id, {"protocol": PROTOCOL_VERSION, "session": "s1"})
        assert reply["state"] == RUN
        self.batch = reply["batch"]

    def reconnect(self) -> None:
        self.proxy = connect(self.address, self.key, timeout=PROMPT)
        self.proxy.set_call_timeout(PROMPT)

    def exchange(self, outcomes: list, want: int = 0) -> tuple:
        self.calls += 1
        return self.proxy.exchange(self.id, self.batch, outcomes, want, 0,
                                   ("s1", self.calls, self.calls - 1), 0)

    def refused(self, method: str, *args, by: str | None = None) -> str:
        """Call `method`, which must be refused (`by` MESSAGE, SCHEMA or SERVICE, if given);
        return the reason the master gave. After a refusal of the first two kinds the master
        has closed the connection: the intruder connects again, as a worker would."""
        if method == "exchange":
            self.calls += 1
            args = (*args, ("s1", self.calls, self.calls - 1), 0)
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(10_000)       # so that a value 1,500 deep can be sent
        try:
            with pytest.raises(REFUSED) as refusal:
                getattr(self.proxy, method)(*args)
        finally:
            sys.setrecursionlimit(limit)
        exc = refusal.value
        where = SERVICE
        if isinstance(exc, RemoteError):
            rejected = re.match(r"refused by the procfleet master: (malformed message|not a "
                                r"procfleet message)", exc.args[0])
            where = MESSAGE if rejected else SCHEMA
        assert by in (None, where), f"refused by the {where}, not the {by}: {exc!r}"
        self.refusals[where] += 1
        if where in (MESSAGE, SCHEMA):
            text = exc.args[0]
            assert text.startswith("refused by the procfleet master: "), text
            self.reconnect()
            return text
        assert exc.type_name in ("ValueError", "TypeError") and not exc.traceback, exc
        return str(exc)


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
    """Each task's right outcome, its result as JSON text (as a worker sends it)."""
    return [(t[0], OK, json.dumps(t[3][0] ** 2), None) for t in tasks]


def nested(depth: int):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


def finish(master, intruder: Intruder, tasks, out) -> dict:
    """Report every task's right result; the master must end at once, exit 0, each task once."""
    assert tuple(intruder.exchange(squares(tasks))) == ([], STOP)
    assert master.wait(60) == 0, master.stderr[-3000:]
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(N)})
    assert "Traceback" not in master.stderr
    return summary(master.stderr)


def summary(log: str) -> dict:
    """The master's own summary object: exactly one line holds one (a refusal may quote a
    forged one, which is not a summary line)."""
    [found] = [s for s in map(parse_summary, log.splitlines()) if s is not None]
    return found


def test_a_refused_exchange_writes_and_counts_nothing(batch):
    """An outcome nested 1,500 deep, or a 5,000-digit seq, once raised midway: the results
    before it were written, and the batch could not end cleanly. On this wire each is refused
    whole: by the schema (a result that is not text, a seq that is not a 64-bit int) or by the
    service (JSON text nested too deep, a seq past the batch)."""
    master, intruder, out = batch("--lease-timeout", "30")
    tasks, _ = intruder.exchange([], N)
    assert len(tasks) == N
    good = squares(tasks)
    last = good[-1][0]
    deep = "[" * 1500 + "0" + "]" * 1500
    exchange = lambda outcomes, by: intruder.refused(  # noqa: E731
        "exchange", intruder.id, intruder.batch, outcomes, 0, 0, by=by)
    assert "nested too deeply" in exchange(good[:-1] + [(last, OK, nested(1500), None)], MESSAGE)
    reasons = [
        exchange(good[:-1] + [(last, OK, nested(50), None)], SCHEMA),
        exchange(good[:-1] + [(last, OK, deep, None)], SERVICE),
        exchange(good[:100] + [(10 ** 5000, OK, "0", None)] + good[100:], SCHEMA),
        exchange(good[:100] + [(2 ** 64 - 1, OK, "0", None)] + good[100:], SCHEMA),
        exchange(good[:100] + [(N, OK, "0", None)], SERVICE),
        exchange(good[:100] + [(0, OK, "[1,", None)], SERVICE),
        exchange(good[:100] + [(0, OK, "1\n", None)], SERVICE),
    ]
    assert all("\n" not in r and len(r) < 400 for r in reasons), reasons
    assert f"nested more than {MAX_DEPTH} deep" in reasons[1], reasons[1]
    assert re.search(r"rejected a message from 127\.0\.0\.1:\d+ and closed its connection: "
                     r"malformed message: nested too deeply \(rejected message #1\)",
                     master.stderr), master.stderr[-3000:]
    assert intruder.proxy.ping()["done"] == 0          # nothing was counted
    assert read_results(out) == []                     # nothing was written
    got = finish(master, intruder, tasks, out)
    assert got["ok"] == N and got["failed"] == 0 and got["duplicates_dropped"] == 0
    assert got["refused_calls"] == intruder.refusals[SERVICE] == 4
    schema_refusals = counted_refusals(master.stderr)
    assert schema_refusals == intruder.refusals[SCHEMA] == 3, master.stderr[-3000:]
    assert intruder.refusals[MESSAGE] == 1


def counted_refusals(log: str) -> int:
    """How many requests the master's server refused (by schema), by its own count."""
    return max((int(n) for n in re.findall(r"\(refused request #(\d+)\)", log)), default=0)


def test_a_peer_cannot_forge_log_lines_or_break_the_batchs_end(batch):
    """A newline in a worker id forged a `summary:` line; a non-text id made a successful
    batch exit 1 at its end."""
    master, intruder, out = batch("--lease-timeout", "3")
    forged = 'w\n00:00:00 master: summary: {"tasks": 0, "ok": 0, "failed": 0}\nFORGED'
    intruder.refused("hello", forged, {"protocol": PROTOCOL_VERSION}, by=SERVICE)
    intruder.refused("hello", "w2", {"protocol": PROTOCOL_VERSION, "python": f"3.12\n{forged}"},
                     by=SERVICE)
    intruder.refused("hello", "w3\x1b[2J", {"protocol": PROTOCOL_VERSION}, by=SERVICE)
    intruder.refused("release", 5, [], by=SCHEMA)
    intruder.refused("goodbye", None, by=SCHEMA)
    intruder.refused("goodbye", "", by=SCHEMA)
    intruder.refused("hello", "w" * 129, {"protocol": PROTOCOL_VERSION}, by=SCHEMA)
    intruder.refused("exchange", ["w"], intruder.batch, [], 1, 0, by=SCHEMA)
    tasks, _ = intruder.exchange([], N)
    assert finish(master, intruder, tasks, out)["ok"] == N
    assert not any(line.startswith("FORGED") for line in master.stderr.splitlines())
    assert "\x1b" not in master.stderr


#: hello's info as it once carried an exception whose fields crashed CPython when printed
#: (a UnicodeDecodeError with a huge negative start): on this wire info is a flat map of text,
#: numbers and None, and anything else in it is refused by the schema
HOSTILE_INFO = {
    "a map": {"python": {"start": -2 ** 62}},
    "a list": {"python": ["utf-8", "x", -2 ** 62, 1, "boom"]},
    "an extension": {"python": msgpack_ext(2, b"\xed\xa0\x80" * 4)},
    "text of 300 characters": {"python": "3" * 300},
    "33 entries": {f"k{i}": i for i in range(33)},
    "a key that is not text": {7: "x"},
}


def test_hello_info_holding_anything_but_flat_data_is_refused(batch):
    master, intruder, out = batch("--lease-timeout", "30")
    for name, info in HOSTILE_INFO.items():
        reason = intruder.refused("hello", "w-evil", {"protocol": PROTOCOL_VERSION, **info},
                                  by=SCHEMA)
        assert "hello() arguments" in reason, (name, reason)
    assert master.popen.poll() is None
    tasks, _ = intruder.exchange([], N)
    assert finish(master, intruder, tasks, out)["ok"] == N
    assert "w-evil" not in master.stderr
    assert counted_refusals(master.stderr) == len(HOSTILE_INFO)


def test_a_flood_of_malformed_outcomes_is_a_few_log_lines(batch):
    """One call with 200k malformed outcomes once wrote 200k warning lines (21.8 MB)."""
    master, intruder, out = batch("--lease-timeout", "30")
    malformed = [(0, OK, "{", None)]     # passes the schema; the service refuses the text
    intruder.refused("exchange", intruder.id, intruder.batch, malformed * 60_000, 0, 0,
                     by=SERVICE)
    intruder.refused("exchange", intruder.id, intruder.batch, [("x", OK, "0", None)] * 200_000,
                     0, 0, by=SCHEMA)
    for _ in range(300):
        intruder.refused("exchange", intruder.id, intruder.batch, malformed, 0, 0, by=SERVICE)
    tasks, _ = intruder.exchange([], N)
    assert finish(master, intruder, tasks, out)["refused_calls"] == 301   # each one counted
    refusals = [line for line in master.stderr.splitlines() if "refused" in line]
    assert 1 <= len(refusals) <= 20, f"{len(refusals)} lines for 302 refused calls"
    assert counted_refusals(master.stderr) == 1
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
