"""The master's manager server in this process, on loopback, against real and hostile peers.

A real worker-side client (manager.connect) keeps calling a fake dispatcher service while other
connections send code-running pickles (refused as the old wire, never unpickled), msgpack that
smuggles an extension where a request's data belongs, garbage, nothing at all, or trickle bytes.
"""

import logging
import os
import pickle
import re
import selectors
import socket
import threading
import time
import pytest
from fakes import TEST_KEY
from peers import (FLOOD_GARBAGE as GARBAGE, FLOOD_IDLE as IDLE, SystemPayload, answered,
                   ensure_fd_limit, local_port, msgpack_body, msgpack_ext, old_wire_reply,
                   open_flood, raw_session, read_until_closed, rejected_with_reason,
                   wait_all_closed)
from procs import wait_until

from procfleet.master import connections as connections_mod
from procfleet.master.connections import start_server
from procfleet.shared.errors import AuthenticationFailed, UnknownTask
from procfleet.shared.manager import DISPATCHER_METHODS, RUN, connect
from procfleet.shared.codec import MAX_MESSAGE, RemoteCallError

KEY = TEST_KEY.encode()
#: the handshake deadline in these tests (the real one is 3 s)
SHORT_HANDSHAKE = 1.0
#: longest a test waits for anything the server should do at once
PROMPT = 5.0


class FakeService:
    """Stands in for DispatcherService: the same exposed methods, canned answers."""

    heartbeat_interval = 1.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: list = []

    def hello(self, worker_id, info):
        return {"protocol": info.get("protocol"), "state": RUN}

    def exchange(self, worker_id, batch, outcomes, want, wait, cursor=None):
        with self.lock:
            self.outcomes.extend(outcomes)
        return [(i, str(i), "square", [i], {}, None) for i in range(want)], RUN

    def release(self, worker_id, seqs):
        return len(seqs)

    def goodbye(self, worker_id):
        if worker_id == "value-error":
            raise ValueError("no such worker")
        if worker_id == "procfleet-error":
            raise UnknownTask("not a builtin exception")
        return None

    def ping(self):
        return {"state": RUN}

    def status(self):
        return {"state": RUN, "workers": [{"id": "w-1", "rate": 1.5}]}


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(connections_mod, "HANDSHAKE_TIMEOUT", SHORT_HANDSHAKE)
    monkeypatch.setattr(connections_mod, "GUARD_INTERVAL", 0.05)
    srv = start_server(FakeService(), ("127.0.0.1", 0), KEY)
    yield srv
    srv.close()


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG, logger="procfleet.master.connections")
    return caplog


def wait_for_log(caplog, pattern: str, timeout: float = PROMPT) -> re.Match:
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        for record in list(caplog.records):
            m = regex.search(record.getMessage())
            if m:
                return m
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line matched {pattern!r}; got "
                                 f"{[r.getMessage() for r in caplog.records][-10:]}")
        time.sleep(0.02)


def test_a_real_client_calls_every_method(server):
    proxy = connect(server.address, KEY, timeout=PROMPT)
    assert proxy.hello("w-1", {"protocol": 1})["state"] == RUN
    tasks, state = proxy.exchange("w-1", "b", [(0, "ok", '{"v":[1,2]}', None)], 3, 0.0,
                                   ("s", 1, 0))
    assert state == RUN and [t[0] for t in tasks] == [0, 1, 2]
    assert proxy.release("w-1", [1, 2]) == 2
    assert proxy.ping() == {"state": RUN}
    assert proxy.goodbye("w-1") is None
    assert proxy.status() == {"state": RUN, "workers": [{"id": "w-1", "rate": 1.5}]}
    assert set(DISPATCHER_METHODS) == {"hello", "exchange", "release", "goodbye", "ping",
                                       "status", "job_open", "job_put", "job_results",
                                       "job_cancel",
                                       "job_close"}
    assert server.rejected_messages == 0 and server.auth_failures == 0


def test_exceptions_reach_the_client_as_data(server):
    """'#ERROR' carries (type name, message, traceback text): no exception object crosses."""
    proxy = connect(server.address, KEY, timeout=PROMPT)
    with pytest.raises(RemoteCallError, match="ValueError: no such worker") as refused:
        proxy.goodbye("value-error")
    assert refused.value.type_name == "ValueError" and refused.value.traceback == ""
    # a failure other than a refusal comes with the master's traceback text
    with pytest.raises(RemoteCallError, match="UnknownTask: not a builtin exception") as failed:
        proxy.goodbye("procfleet-error")
    assert failed.value.type_name == "UnknownTask"
    assert "Traceback (most recent call last)" in failed.value.traceback
    assert proxy.ping() == {"state": RUN}      # the connection survived both


def old_wire_refused(attacker, logs, peer: str) -> None:
    """The server answered a peer of the old pickle wire with one pickle (never decoding
    the peer's), hung up, and logged one line naming the wire."""
    reply = answered(attacker)
    assert reply is not None, "the server hung up without telling the old peer why"
    assert reply[:1] == b"\x80", f"not a pickle, which the old peer could not read: {reply[:40]!r}"
    assert answered(attacker) is None, "the connection stayed open after the old wire's reply"
    m = wait_for_log(logs, r"refused connection from (\S+): the peer speaks the pickle wire "
                           r"of procfleet before wire 4.*same procfleet release "
                           r"\(peer of another wire #(\d+)\)")
    assert m.group(1) == peer and m.group(2) == "1"


def test_the_old_wires_refusal_is_a_pickle_the_old_worker_decodes(server, logs):
    attacker = raw_session(server.address, KEY, PROMPT)
    attacker.send_bytes(pickle.dumps((None, "dummy", (), {}), protocol=5))
    kind, exc = old_wire_reply(attacker)       # as the old worker's RestrictedUnpickler does
    attacker.close()
    assert kind == "#ERROR" and isinstance(exc, ConnectionRefusedError), (kind, exc)
    assert "procfleet wire 4 (msgpack)" in str(exc) and "older pickle wire" in str(exc), exc


@pytest.mark.parametrize("when", ["first request", "in a served connection"])
def test_a_code_running_pickle_is_refused_as_the_old_wire_and_never_unpickled(
        server, logs, tmp_path, when):
    marker = tmp_path / "pwned"
    proxy = connect(server.address, KEY, timeout=PROMPT)
    attacker = raw_session(server.address, KEY, PROMPT)
    peer = "127.0.0.1:%d" % local_port(attacker)
    if when == "in a served connection":
        attacker.send((None, "accept_connection", ("evil",), {}))
        assert attacker.recv() == ("#RETURN", None)
        attacker.send_bytes(pickle.dumps(("0", "ping", (SystemPayload(marker),), {})))
    else:
        attacker.send_bytes(pickle.dumps((None, "create", (SystemPayload(marker),), {})))
    old_wire_refused(attacker, logs, peer)
    attacker.close()
    assert server.old_wire_peers == 1 and server.rejected_messages == 0
    assert not marker.exists()
    # everyone else is still served
    assert proxy.exchange("w-1", "b", [], 2, 0.0, ("s", 2, 1))[1] == RUN
    assert "Traceback" not in logs.text


@pytest.mark.parametrize("when", ["first request", "in a served connection"])
def test_a_protocol_0_pickle_is_rejected_unread(server, logs, tmp_path, when):
    """A text pickle (protocol 0, no 0x80 first byte) is not the old wire's either: garbage."""
    marker = tmp_path / "pwned"
    attacker = raw_session(server.address, KEY, PROMPT)
    peer = "127.0.0.1:%d" % local_port(attacker)
    if when == "in a served connection":
        attacker.send((None, "accept_connection", ("evil",), {}))
        assert attacker.recv() == ("#RETURN", None)
    attacker.send_bytes(f"cos\nsystem\n(Vtouch {marker}\ntR.".encode())
    assert "not a procfleet message" in rejected_with_reason(attacker)
    attacker.close()
    m = wait_for_log(logs, r"rejected a message from (\S+) and closed its connection: not a "
                           r"procfleet message: it starts with b'cos\\nsystem")
    assert m.group(1) == peer
    assert server.rejected_messages == 1 and not marker.exists()


#: the msgpack equivalents of a code-running pickle: an extension value (the only thing in
#: MessagePack that is not plain data) holding a pickle, where a request's data belongs; each
#: is refused by its schema, with its reason: in the arguments, a refused request; in the
#: envelope, a rejected message
SMUGGLED = {
    "create's typeid": (lambda payload: (None, "create", (msgpack_ext(1, payload),), {}),
                        "refused a request", "create\\(\\) arguments: Expected `str`, got `ext`"),
    "accept_connection's name": (lambda payload: (None, "accept_connection",
                                                  (msgpack_ext(2, payload),), {}),
                                 "refused a request",
                                 "accept_connection\\(\\) arguments: Expected `str`, got `ext`"),
    "the ident": (lambda payload: (msgpack_ext(3, payload), "create", ("dispatcher",), {}),
                  "rejected a message", "malformed message: Expected `str \\| null`, got `ext`"),
}


@pytest.mark.parametrize("where", list(SMUGGLED))
def test_an_extension_where_data_belongs_is_refused_by_the_schema(server, logs, tmp_path,
                                                                  where):
    marker = tmp_path / "pwned"
    message, outcome, reason = SMUGGLED[where]
    proxy = connect(server.address, KEY, timeout=PROMPT)
    attacker = raw_session(server.address, KEY, PROMPT)
    peer = "127.0.0.1:%d" % local_port(attacker)
    attacker.send_bytes(msgpack_body(message(pickle.dumps(SystemPayload(marker)))))
    assert re.search(reason, rejected_with_reason(attacker))
    attacker.close()
    wait_for_log(logs, rf"{outcome} from {re.escape(peer)} and closed its connection: {reason}")
    assert server.refused_requests + server.rejected_messages == 1
    assert not marker.exists()
    assert proxy.ping() == {"state": RUN}
    assert "Traceback" not in logs.text


def test_an_oversized_request_is_rejected_without_reading_it(server, logs):
    attacker = raw_session(server.address, KEY, PROMPT)
    attacker.send((None, "accept_connection", ("big",), {}))
    assert attacker.recv() == ("#RETURN", None)
    # A header announcing 100 MiB and then nothing: the server must not wait for the body.
    os.write(attacker.fileno(), b"\xff\xff\xff\xff" + (100 * 2 ** 20).to_bytes(8, "big"))
    assert answered(attacker) is None       # no reply (no '#TRACEBACK'): the server hung up
    attacker.close()
    wait_for_log(logs, rf"rejected a message from 127\.0\.0\.1:\d+ .*104,857,600 bytes, over "
                       rf"the limit of {MAX_MESSAGE:,} \(MAX_MESSAGE\)")
    assert server.rejected_messages == 1


def test_a_wrong_key_is_refused_fast_logged_and_counted(server, logs):
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed):
        connect(server.address, b"not-the-key-0123456789", timeout=PROMPT)
    refused_in = time.monotonic() - started
    wait_for_log(logs, r"refused connection from 127\.0\.0\.1:\d+: wrong key "
                       r"\(authentication failure #1\)")
    # Refused for its key, not closed at the handshake deadline.
    assert server.auth_failures == 1 and server.handshake_timeouts == 0
    print(f"\nwrong key refused in {refused_in * 1000:.1f} ms")


def test_an_idle_connection_is_closed_at_the_handshake_deadline(server, logs):
    with socket.create_connection(server.address, timeout=PROMPT) as idle:
        started = time.monotonic()
        assert read_until_closed(idle) > 0            # the challenge, then EOF
        closed_after = time.monotonic() - started
    assert SHORT_HANDSHAKE - 0.1 <= closed_after < SHORT_HANDSHAKE + PROMPT
    wait_for_log(logs, r"closed connection from 127\.0\.0\.1:\d+: not authenticated within")
    assert server.handshake_timeouts == 1


def test_a_trickling_peer_is_cut_off_at_the_deadline(server):
    """One byte every 0.2 s keeps each read under its own timeout, not the whole handshake."""
    response = (40).to_bytes(4, "big") + b"x" * 40       # a 40-byte answer, byte by byte
    with socket.create_connection(server.address, timeout=PROMPT) as slow:
        started = time.monotonic()
        sel = selectors.DefaultSelector()
        sel.register(slow, selectors.EVENT_READ)
        challenge_read = False
        sent = 0
        closed_after = None
        while closed_after is None and sent < len(response) \
                and time.monotonic() - started < SHORT_HANDSHAKE + PROMPT:
            if sel.select(timeout=0.2):
                try:
                    data = slow.recv(4096)
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed_after = time.monotonic() - started
                challenge_read = True
            elif challenge_read:
                try:
                    slow.send(response[sent:sent + 1])
                    sent += 1
                except OSError:
                    closed_after = time.monotonic() - started
        sel.close()
    assert closed_after is not None, "the server never closed the trickling connection"
    # Cut before the whole answer was in: sending it takes 8 s, past the limit of the loop.
    assert 3 <= sent < len(response)
    assert SHORT_HANDSHAKE - 0.1 <= closed_after < SHORT_HANDSHAKE + PROMPT
    wait_until(lambda: server.handshake_timeouts == 1, PROMPT, "the timeout to be counted")
    assert server.auth_failures == 0


def test_over_the_limit_new_connections_are_closed_at_once(monkeypatch, logs):
    monkeypatch.setattr(connections_mod, "MAX_PENDING_HANDSHAKES", 5)
    # Long enough that none of the five pending ones can time out (and make room) before the
    # extra ones are turned away, on however busy a machine.
    monkeypatch.setattr(connections_mod, "HANDSHAKE_TIMEOUT", PROMPT)
    srv = start_server(FakeService(), ("127.0.0.1", 0), KEY)
    idle = [socket.create_connection(srv.address, timeout=2 * PROMPT) for _ in range(5)]
    try:
        for s in idle:          # each got its challenge: all five are pending on the server
            assert s.recv(4096)
        extra = [socket.create_connection(srv.address, timeout=PROMPT) for _ in range(3)]
        for s in extra:
            assert read_until_closed(s) == 0         # closed before any challenge
            s.close()
        # At once: while all five were still pending (none closed yet), not once one had left.
        with selectors.DefaultSelector() as sel:
            for s in idle:
                sel.register(s, selectors.EVENT_READ)
            assert sel.select(timeout=0) == [], "a pending connection ended before the extras"
        m = wait_for_log(logs, r"closed connection from 127\.0\.0\.1:\d+ at once: (\d+) "
                               r"connections are already authenticating")
        assert m.group(1) == "5"
        wait_until(lambda: srv.shed_connections == 3, PROMPT, "3 connections shed")
        assert sum("at once" in r.getMessage() for r in logs.records) == 1   # once, not 3 times
        for s in idle:
            read_until_closed(s)
        proxy = connect(srv.address, KEY, timeout=PROMPT)   # room again once they timed out
        assert proxy.ping() == {"state": RUN}
    finally:
        for s in idle:
            s.close()
        srv.close()


def test_a_flood_of_idle_and_garbage_connections_does_not_stop_a_real_client(server, logs):
    ensure_fd_limit(2 * IDLE + 200)
    proxy = connect(server.address, KEY, timeout=PROMPT)
    calls, errors, stop = [0], [], threading.Event()

    def keep_calling():
        try:
            for _ in range(100_000):
                if stop.wait(0.002):        # leave the server's threads some of the GIL
                    return
                tasks, state = proxy.exchange("w-1", "b", [(0, "ok", "0", None)], 4, 0.0,
                                              ("s", calls[0] + 1, calls[0]))
                assert state == RUN and len(tasks) == 4
                calls[0] += 1
        except Exception as exc:   # reported by the assertion below
            errors.append(exc)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    opened: dict[socket.socket, float] = {}
    try:
        started = time.monotonic()
        open_flood(server.address, opened, PROMPT)
        opened_in = time.monotonic() - started
        connect_started = time.monotonic()
        late = connect(server.address, KEY, timeout=PROMPT)          # in the middle of it
        late_connect = time.monotonic() - connect_started
        closed_at = wait_all_closed(list(opened), SHORT_HANDSHAKE + opened_in + PROMPT)
    finally:
        stop.set()
        caller.join(PROMPT)
        for s in opened:
            s.close()
    assert not errors, errors
    assert late.ping() == {"state": RUN}
    lifetimes = {s: closed_at[s] - opened[s] for s in opened}
    idle_times = list(lifetimes.values())[:IDLE]
    garbage_times = list(lifetimes.values())[IDLE:]
    wait_until(lambda: server.handshake_timeouts == IDLE and server.auth_failures == GARBAGE,
               PROMPT, f"{IDLE} handshake timeouts and {GARBAGE} auth failures counted")
    # From the client's side a connection lives from connect() to EOF; the server's clock starts
    # at accept(), which lags behind connect() while the accepter works through the backlog.
    assert SHORT_HANDSHAKE - 0.1 <= min(idle_times)
    assert max(idle_times) <= SHORT_HANDSHAKE + opened_in + PROMPT
    wait_for_log(logs, r"\d+ more connections not authenticated in time .*\(\d+ in all\)")
    refusal_lines = [r for r in logs.records if r.levelno >= logging.WARNING]
    assert len(refusal_lines) <= 40, "the flood flooded the log"
    print(f"\nflood: {IDLE} idle + {GARBAGE} garbage connections opened in {opened_in:.2f} s; "
          f"all closed by the server: idle {min(idle_times):.2f}-{max(idle_times):.2f} s after "
          f"connecting (deadline {SHORT_HANDSHAKE} s), garbage within "
          f"{max(garbage_times) * 1000:.0f} ms; a new client connected in "
          f"{late_connect * 1000:.0f} ms; {calls[0]} calls meanwhile; "
          f"{len(refusal_lines)} warning lines for {IDLE + GARBAGE} refusals")
    assert calls[0] > 0


class HeldPing(FakeService):
    """A ping that waits for the test's go-ahead: a call taken, its reply not yet sent."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.go = threading.Event(), threading.Event()

    def ping(self):
        self.entered.set()
        self.go.wait(PROMPT)
        return {"state": "stop"}


def test_wait_answered_returns_once_every_taken_call_has_its_reply_out():
    """The master used to exit as soon as the service had told every worker STOP, before the
    server thread had sent that reply: 1 run in 20 left a worker without it (exit 3)."""
    service = HeldPing()
    srv = start_server(service, ("127.0.0.1", 0), KEY)
    try:
        proxy = connect(srv.address, KEY, timeout=PROMPT)
        replies = []
        caller = threading.Thread(target=lambda: replies.append(proxy.ping()))
        caller.start()
        assert service.entered.wait(PROMPT)
        assert not srv.wait_answered(0.05)          # taken, not answered: the master waits
        service.go.set()
        assert srv.wait_answered(PROMPT)
        caller.join(PROMPT)
        assert replies == [{"state": "stop"}]
    finally:
        service.go.set()
        srv.close()
