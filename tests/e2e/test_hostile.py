"""A real master and workers on loopback, attacked while the batch runs: nothing runs, nothing lost.

One attacker has the key and sends code-running pickles or manager plumbing (decref); others
open hundreds of connections that never authenticate, or send random bytes. The batch must end
with every task exactly once.
"""

import os
import pickle
import re
import socket
import time

import pytest

import chaos
from peers import (OpenPayload, SystemPayload, answered, ensure_fd_limit, local_port,
                   raw_session, wait_all_closed)
from procs import assert_exactly_once, master_port, read_results

#: the master's handshake deadline (procfleet.master.server.HANDSHAKE_TIMEOUT)
HANDSHAKE_TIMEOUT = 3.0
#: longest the test waits for something the master should do at once
PROMPT = 10.0
IDLE = 500
GARBAGE = 50
#: decref requests an attacker sends: two used to be enough to unregister the dispatcher
DECREFS = 4
#: how far accept() may trail connect() in a flood on a busy machine
ACCEPT_LAG = 3.0


def demo_batch_under_way(spawn, out, n: int):
    """A master running `n` slow demo tasks with 2 local workers, one of them joined; its port."""
    master = spawn("master", "--demo", str(n), "--demo-sleep", "0.05", "--local-workers", "2",
                   "--bind", "127.0.0.1:0", "--results", str(out))
    port = master_port(master)
    master.wait_for(r"worker \S+ joined")
    return master, port


@pytest.mark.chaos
def test_code_running_requests_are_rejected_and_the_batch_completes(spawn, tmp_path,
                                                                      authkey_env):
    out = tmp_path / "results.jsonl"
    n = 60
    started = time.monotonic()
    master, port = demo_batch_under_way(spawn, out, n)
    markers = [tmp_path / "pwned-system", tmp_path / "pwned-open"]

    address, key = ("127.0.0.1", port), authkey_env.encode()
    first = raw_session(address, key, PROMPT)      # the very first request is the payload
    first_port = local_port(first)
    first.send_bytes(pickle.dumps((None, "create", (SystemPayload(markers[0]),), {})))
    served = raw_session(address, key, PROMPT)     # a served connection, then the payload
    served_port = local_port(served)
    served.send((None, "accept_connection", ("intruder",), {}))
    assert served.recv() == ("#RETURN", None)
    served.send_bytes(pickle.dumps(("0", "ping", (OpenPayload(markers[1]),), {}), protocol=4))
    for conn in (first, served):
        reply = answered(conn)
        conn.close()
        assert reply is None, f"the master answered a rejected message: {reply[:200]!r}"

    for peer_port, name in ((first_port, r"posix\.system"), (served_port, r"io\.open")):
        master.wait_for(rf"rejected a message from 127\.0\.0\.1:{peer_port} and closed its "
                        rf"connection: forbidden global {name}\b", timeout=PROMPT)
    assert master.wait(60) == 0, master.stderr
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(n)})
    assert not any(m.exists() for m in markers)
    assert "Traceback" not in master.stderr
    chaos.record("2 code-running pickles sent with the right key", range(n), read_results(out),
                 recovery="rejected and logged; batch unaffected")
    print(f"\nbatch of {n} with 2 rejected code-running requests done in "
          f"{time.monotonic() - started:.2f} s")


@pytest.mark.chaos
def test_decref_requests_are_refused_and_the_workers_keep_their_dispatcher(spawn, tmp_path,
                                                                          authkey_env):
    """Two decrefs used to unregister the dispatcher: every worker then died of a RemoteError."""
    out = tmp_path / "results.jsonl"
    n = 60
    master, port = demo_batch_under_way(spawn, out, n)
    address, key = ("127.0.0.1", port), authkey_env.encode()
    asking = raw_session(address, key, PROMPT)      # the dispatcher's id, as a worker asks it
    asking.send((None, "create", ("dispatcher",), {}))
    kind, (ident, _exposed) = asking.recv()
    asking.close()
    replies, ports = [], []
    for _ in range(DECREFS):       # more than the workers' creates and ours: refcount to 0
        attacker = raw_session(address, key, PROMPT)
        ports.append(local_port(attacker))
        attacker.send((ident, "decref", (ident,), {}))
        replies.append(attacker.recv())
        assert answered(attacker) is None, "the connection stayed open after a refused call"
        attacker.close()
    assert master.wait(30) == 0, master.stderr
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(n)})
    assert [r[0] for r in replies] == ["#TRACEBACK"] * DECREFS, replies
    for i, peer_port in enumerate(ports, 1):
        master.wait_for(rf"refused a request from 127\.0\.0\.1:{peer_port} and closed its "
                        rf"connection: 'decref' .*\(refused request #{i}\)", timeout=PROMPT)
    assert "Traceback" not in master.stderr and "RemoteError" not in master.stderr
    chaos.record(f"{DECREFS} decref requests sent with the right key", range(n),
                 read_results(out), recovery="refused and logged; batch unaffected")


@pytest.mark.chaos
def test_idle_and_garbage_floods_are_closed_and_the_batch_completes(spawn, tmp_path):
    ensure_fd_limit(IDLE + GARBAGE + 200)
    out = tmp_path / "results.jsonl"
    n = 320          # 2 workers x 20 tasks/s: ~8 s, longer than the flood takes to clear
    master = spawn("master", "--demo", str(n), "--demo-sleep", "0.05", "--local-workers", "2",
                   "--bind", "127.0.0.1:0", "--results", str(out))
    started = time.monotonic()
    port = master_port(master)
    master.wait_for(r"worker \S+ joined")

    opened: dict[socket.socket, float] = {}
    try:
        flood_started = time.monotonic()
        for _ in range(IDLE):
            s = socket.create_connection(("127.0.0.1", port), timeout=PROMPT)
            opened[s] = time.monotonic()
        for i in range(GARBAGE):
            s = socket.create_connection(("127.0.0.1", port), timeout=PROMPT)
            s.sendall(os.urandom(300 + i))    # more than any length header under 256 asks for
            opened[s] = time.monotonic()
        opened_in = time.monotonic() - flood_started
        closed_at = wait_all_closed(list(opened), HANDSHAKE_TIMEOUT + opened_in + PROMPT)
        assert master.popen.poll() is None, "the master exited before closing the flood"
    finally:
        for s in opened:
            s.close()
    lifetimes = [closed_at[s] - opened[s] for s in opened]
    idle_times, garbage_times = lifetimes[:IDLE], lifetimes[IDLE:]
    # The master's clock starts at accept(), which trails connect() while it works through
    # the backlog.
    assert HANDSHAKE_TIMEOUT - 0.2 <= min(idle_times)
    assert max(idle_times) <= HANDSHAKE_TIMEOUT + opened_in + ACCEPT_LAG

    assert master.wait(60) == 0, master.stderr
    elapsed = time.monotonic() - started
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(n)})
    log = master.stderr
    timeouts = counted(log, "handshake timeout", "connections not authenticated in time")
    failures = counted(log, "authentication failure", "authentication failures")
    assert timeouts == IDLE and failures == GARBAGE, log[-3000:]
    warnings = sum(1 for line in log.splitlines()
                   if "not authenticated" in line or "refused connection" in line
                   or "authentication failures" in line)
    assert warnings <= 60, f"{warnings} log lines for {IDLE + GARBAGE} refusals"
    assert "Traceback" not in log
    chaos.record(f"{IDLE} idle TCP connections + {GARBAGE} of random bytes", range(n),
                 read_results(out), recover_s=max(idle_times),
                 recovery="connect to closed by the master")
    print(f"\nbatch of {n} done in {elapsed:.2f} s with {IDLE} idle + {GARBAGE} garbage "
          f"connections (opened in {opened_in:.2f} s); the master closed them all: idle "
          f"{min(idle_times):.2f}-{max(idle_times):.2f} s after connecting (deadline "
          f"{HANDSHAKE_TIMEOUT} s), garbage {min(garbage_times) * 1000:.0f}-"
          f"{max(garbage_times) * 1000:.0f} ms; log: {timeouts} timeouts and {failures} "
          f"failures counted in {warnings} lines")


def counted(log: str, one: str, many: str) -> int:
    """The highest count the master's log gives for a kind of refusal."""
    counts = [int(m) for m in re.findall(rf"\({re.escape(one)} #(\d+)\)", log)]
    counts += [int(m) for m in re.findall(rf"{re.escape(many)} .*\((\d+) in all\)", log)]
    return max(counts, default=0)
