"""What a peer holding the key can call on the master's server, on loopback: only the dispatcher.

Raw clients send, on the msgpack wire, the requests a stock manager server would serve
(refcounts, debug_info, shutdown, '#GETVALUE', other typeids, other ids, other methods); each is
refused, logged with the peer's address and counted, and closes that connection only, while a
real client keeps calling. A message that is not a request at all is rejected the same way,
without a reply. Idle authenticated connections are closed, and every connection has TCP
keepalive.
"""

import os
import re
import socket
import threading
import time

import pytest
from fakes import TEST_KEY
from peers import (answered, ensure_fd_limit, local_port, msgpack_body, raw_session,
                   rejected_with_reason)
from procs import wait_until

from procfleet.master import connections as connections_mod
from procfleet.master.connections import start_server
from procfleet.shared import transport
from procfleet.shared.manager import DISPATCHER, RUN, connect

KEY = TEST_KEY.encode()
#: longest a test waits for anything the server should do at once
PROMPT = 5.0
#: the idle timeout in these tests (MIN_IDLE_TIMEOUT patched down from 60 s)
SHORT_IDLE = 0.5
#: authenticated connections that go silent at once
IDLE_SESSIONS = 300


class Service:
    """Stands in for DispatcherService: its exposed methods, plus one a peer must not reach."""

    heartbeat_interval = 0.01

    def __init__(self) -> None:
        self.stopped = threading.Event()

    def hello(self, worker_id, info):
        return {"state": RUN}

    def exchange(self, worker_id, batch, outcomes, want, wait, cursor=None, started=None):
        if wait:
            self.stopped.wait(wait)      # a long poll: the master holds the call `wait` s
        return [], RUN

    def release(self, worker_id, seqs):
        return len(seqs)

    def goodbye(self, worker_id):
        return None

    def ping(self):
        return {"state": RUN}

    def stop(self):             # DispatcherService has one: the batch's end, master-side only
        self.stopped.set()


@pytest.fixture
def service():
    return Service()


@pytest.fixture
def server(service, monkeypatch):
    # raising=False: the same test shows what code without an idle timeout does
    monkeypatch.setattr(connections_mod, "MIN_IDLE_TIMEOUT", SHORT_IDLE, raising=False)
    srv = start_server(service, ("127.0.0.1", 0), KEY)
    yield srv
    srv.close()


def dispatcher_id(server) -> str:
    """The dispatcher's id, asked the way a worker asks (create, on a connection of its own)."""
    conn = raw_session(server.address, KEY, PROMPT)
    try:
        conn.send((None, "create", (DISPATCHER,), {}))
        kind, (ident, exposed) = conn.recv()
    finally:
        conn.close()
    assert kind == "#RETURN" and "exchange" in exposed
    return ident


def served_session(server):
    """A raw connection after accept_connection: it now carries calls, as a proxy's does."""
    conn = raw_session(server.address, KEY, PROMPT)
    conn.send((None, "accept_connection", ("raw",), {}))
    assert conn.recv() == ("#RETURN", None)
    return conn


def assert_refused_and_closed(conn, caplog, server, count: int = 1) -> str:
    """The server answered `conn` with the reason it refused, then hung up; logged, counted."""
    peer = "127.0.0.1:%d" % local_port(conn)
    kind, text = conn.recv()
    assert kind == "#TRACEBACK" and text.startswith("refused by the procfleet master: "), \
        (kind, text)
    assert "\n" not in text
    assert answered(conn) is None, "the connection stayed open after a refused call"
    conn.close()
    # The server logs and counts before it replies: both are there by now.
    lines = [r.getMessage() for r in caplog.records
             if re.search(rf"refused a request from {re.escape(peer)} and closed its connection: "
                          rf".*\(refused request #{count}\)", r.getMessage())]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert server.refused_requests == count
    return lines[0]


OPENING = {
    "incref": lambda ident: (ident, "incref", (ident,), {}),
    "decref": lambda ident: (ident, "decref", (ident,), {}),
    "debug_info": lambda ident: (None, "debug_info", (), {}),
    "shutdown": lambda ident: (None, "shutdown", (), {}),
    "number_of_objects": lambda ident: (None, "number_of_objects", (), {}),
    "get_methods": lambda ident: (None, "get_methods", (ident,), {}),
    "#GETVALUE": lambda ident: (ident, "#GETVALUE", (), {}),
    "create another typeid": lambda ident: (None, "create", ("Queue",), {}),
    "create with more arguments": lambda ident: (None, "create", (DISPATCHER, 1), {}),
    "accept_connection of a non-text name": lambda ident: (None, "accept_connection", (7,), {}),
}


@pytest.mark.parametrize("request_kind", list(OPENING))
def test_a_refused_first_request_closes_only_its_connection(server, caplog, request_kind):
    worker = connect(server.address, KEY, timeout=PROMPT)
    assert worker.ping() == {"state": RUN}
    ident = dispatcher_id(server)
    attacker = raw_session(server.address, KEY, PROMPT)
    attacker.send(OPENING[request_kind](ident))
    assert_refused_and_closed(attacker, caplog, server)
    # the worker's connection, a new one and the dispatcher itself are all still there
    assert tuple(worker.exchange("w", "b", [], 1, 0.0, ("s", 1, 0), 0)) == ([], RUN)
    assert connect(server.address, KEY, timeout=PROMPT).ping() == {"state": RUN}
    assert dispatcher_id(server) == ident
    assert "Traceback" not in caplog.text


#: messages that are not a request (ident, name, args, kwds) of the right types at all: the
#: envelope's schema rejects them before anything else is decoded, with no reply
NOT_REQUESTS = {
    "a list of two": ["create", DISPATCHER],
    "a name that is not text": (None, 7, (), {}),
    "keyword arguments": (None, "create", (DISPATCHER,), {"x": 1}),
    "an ident that is a map": ({"a": 1}, "create", (DISPATCHER,), {}),
    "a name over 256 characters": (None, "create" + "x" * 300, (), {}),
    "a bare map": {"name": "create"},
}


@pytest.mark.parametrize("when", ["first request", "in a served connection"])
@pytest.mark.parametrize("message_kind", list(NOT_REQUESTS))
def test_a_message_that_is_not_a_request_is_rejected_and_closes_only_its_connection(
        server, caplog, message_kind, when):
    worker = connect(server.address, KEY, timeout=PROMPT)
    attacker = served_session(server) if when == "in a served connection" \
        else raw_session(server.address, KEY, PROMPT)
    peer = "127.0.0.1:%d" % local_port(attacker)
    attacker.send_bytes(msgpack_body(NOT_REQUESTS[message_kind]))
    assert "malformed message" in rejected_with_reason(attacker)
    attacker.close()
    lines = [r.getMessage() for r in caplog.records
             if f"rejected a message from {peer} and closed its connection: malformed message"
             in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and len(lines[0]) < 400, lines
    assert server.rejected_messages == 1 and server.refused_requests == 0
    assert worker.ping() == {"state": RUN}
    assert "Traceback" not in caplog.text


SERVED = {
    "#GETVALUE": lambda ident: (ident, "#GETVALUE", (), {}),
    "__str__": lambda ident: (ident, "__str__", (), {}),
    "__repr__": lambda ident: (ident, "__repr__", (), {}),
    "a service method not in DISPATCHER_METHODS": lambda ident: (ident, "stop", (), {}),
    "a dunder of the service": lambda ident: (ident, "__init__", (), {}),
    "the manager's own id 0": lambda ident: ("0", "ping", (), {}),
    "an unknown id": lambda ident: ("ffff", "ping", (), {}),
    "decref on a served connection": lambda ident: (ident, "decref", (ident,), {}),
    "shutdown on a served connection": lambda ident: (ident, "shutdown", (), {}),
    "debug_info on a served connection": lambda ident: (ident, "debug_info", (), {}),
    "ping with an argument": lambda ident: (ident, "ping", (1,), {}),
}


@pytest.mark.parametrize("call_kind", list(SERVED))
def test_a_refused_call_on_a_served_connection_closes_only_it(server, service, caplog,
                                                               call_kind):
    worker = connect(server.address, KEY, timeout=PROMPT)
    ident = dispatcher_id(server)
    attacker = served_session(server)
    attacker.send((ident, "ping", (), {}))          # a dispatcher method: served
    assert attacker.recv() == ("#RETURN", {"state": RUN})
    attacker.send(SERVED[call_kind](ident))
    assert_refused_and_closed(attacker, caplog, server)
    assert not service.stopped.is_set(), "a peer ended the batch"
    assert worker.ping() == {"state": RUN}
    assert tuple(worker.exchange("w", "b", [], 1, 0.0, ("s", 1, 0), 0)) == ([], RUN)


def test_a_refusal_line_shows_a_hostile_name_on_one_short_line(server, caplog):
    attacker = raw_session(server.address, KEY, PROMPT)
    attacker.send((None, "x\nsummary: forged " + "y" * 200, (), {}))
    line = assert_refused_and_closed(attacker, caplog, server)
    assert "\n" not in line and len(line) < 400, line


def test_a_flood_of_refused_requests_is_counted_but_logged_throttled(server, caplog):
    n = 60
    for _ in range(n):
        attacker = raw_session(server.address, KEY, PROMPT)
        attacker.send((None, "debug_info", (), {}))
        assert attacker.recv()[0] == "#TRACEBACK"
        attacker.close()
    assert server.refused_requests == n
    logged = [r for r in caplog.records if "refused a request from" in r.getMessage()]
    assert 1 <= len(logged) <= 15, len(logged)


def test_an_idle_authenticated_connection_is_closed_after_the_idle_timeout(server, caplog):
    for kind in ("fresh", "served"):
        conn = raw_session(server.address, KEY, PROMPT) if kind == "fresh" \
            else served_session(server)
        peer = "127.0.0.1:%d" % local_port(conn)
        started = time.monotonic()
        assert answered(conn) is None         # EOF; raw_session's PROMPT bounds the wait
        closed_after = time.monotonic() - started
        conn.close()
        assert SHORT_IDLE - 0.1 <= closed_after <= SHORT_IDLE + 1.0, (kind, closed_after)
        assert any(re.search(rf"closed connection from {re.escape(peer)}: no request for "
                             rf"{SHORT_IDLE:g} s", r.getMessage()) for r in caplog.records)
    assert server.idle_closed == 2


def test_many_idle_authenticated_connections_do_not_keep_their_threads(server):
    ensure_fd_limit(2 * IDLE_SESSIONS + 200)
    before = threading.active_count()
    conns = []
    try:
        for _ in range(IDLE_SESSIONS):
            conns.append(raw_session(server.address, KEY, PROMPT))
        # each read ends at EOF (or fails after raw_session's PROMPT: the test fails)
        assert all(answered(conn) is None for conn in conns)
    finally:
        for conn in conns:
            conn.close()
    assert server.idle_closed == IDLE_SESSIONS
    wait_until(lambda: threading.active_count() <= before + 2, PROMPT,
               "the server threads of the idle connections to end")


def test_a_long_poll_and_a_steady_caller_outlive_the_idle_timeout(server):
    worker = connect(server.address, KEY, timeout=PROMPT)
    started = time.monotonic()
    # held by the master for 3 idle timeouts: the server reads nothing while it serves a call
    assert tuple(worker.exchange("w", "b", [], 1, 3 * SHORT_IDLE, ("s", 1, 0), 0)) == ([], RUN)
    assert time.monotonic() - started >= 3 * SHORT_IDLE
    deadline = time.monotonic() + 4 * SHORT_IDLE
    calls = 0
    while time.monotonic() < deadline and calls < 1000:
        time.sleep(SHORT_IDLE / 4)            # a worker's heartbeat, well inside the timeout
        assert worker.ping() == {"state": RUN}
        calls += 1
    assert calls >= 8
    assert server.idle_closed == 0


def test_the_idle_timeout_follows_the_heartbeat_interval():
    assert connections_mod.idle_timeout(0.5) == connections_mod.MIN_IDLE_TIMEOUT
    assert connections_mod.idle_timeout(1000.0) == connections_mod.IDLE_HEARTBEATS * 1000.0
    # generous: many missed heartbeats, and more than a lease timeout (3 heartbeats)
    assert connections_mod.IDLE_HEARTBEATS >= 10


def keepalive_options(sock: socket.socket) -> dict:
    options = {"SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
    for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"):
        if hasattr(socket, name):
            options[name] = sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
    return options


def expected_keepalive() -> dict:
    expected = {"SO_KEEPALIVE": 1}
    for name, value in (("TCP_KEEPIDLE", "KEEPALIVE_IDLE"), ("TCP_KEEPINTVL", "KEEPALIVE_INTERVAL"),
                        ("TCP_KEEPCNT", "KEEPALIVE_COUNT")):
        if hasattr(socket, name):
            expected[name] = getattr(transport, value, f"transport.{value}")
    return expected


def server_side_socket(client_address: tuple) -> socket.socket:
    """The socket this process (the server, on its threads) holds for `client_address`."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(fd))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername() == client_address:
                return sock
        except OSError:
            pass
        sock.detach()
    raise AssertionError(f"no socket of this process is connected to {client_address}")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("kind", ["worker", "unauthenticated"])
def test_every_accepted_connection_has_tcp_keepalive(server, kind):
    if kind == "worker":
        conn = transport.bounded_client(PROMPT)(server.address, authkey=KEY)
        conn.send((None, "accept_connection", ("ka",), {}))
        assert conn.recv() == ("#RETURN", None)
        client = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
    else:
        client = socket.create_connection(server.address, timeout=PROMPT)
        client.recv(4096)        # the challenge: the server has accepted the connection
    try:
        accepted = server_side_socket(client.getsockname())
        try:
            assert keepalive_options(accepted) == expected_keepalive()
        finally:
            accepted.detach()
    finally:
        client.close()


def test_the_workers_connections_have_tcp_keepalive(server):
    conn = transport.bounded_client(PROMPT)(server.address, authkey=KEY)
    sock = socket.socket(fileno=conn.fileno())
    try:
        assert keepalive_options(sock) == expected_keepalive()
    finally:
        sock.detach()
        conn.close()
    assert transport.KEEPALIVE_IDLE + transport.KEEPALIVE_INTERVAL * transport.KEEPALIVE_COUNT \
        <= 120, "a dead peer should be noticed within a couple of minutes"

