"""The manager server, run in the master's own process on threads.

It speaks the server side of `multiprocessing.managers` for one object, the dispatcher service,
over procfleet's own wire (procfleet.shared.codec: MessagePack, plain data), and serves only
what a worker needs, each request decoded against its schema (schemas.py): no
`incref`/`decref`, `shutdown`, `debug_info`, `#GETVALUE` or other plumbing of the stock
`Server`. A refused request or a malformed message ends that peer's connection only; a peer of
the old pickle wire is told so in one line it understands, and nothing it sent is unpickled.

Bounds: a peer has HANDSHAKE_TIMEOUT seconds to authenticate and at most
MAX_PENDING_HANDSHAKES may be trying at once; at most MAX_CONNECTIONS authenticated
connections are open; one that sends no request for the idle timeout is closed; every
connection has TCP keepalive; messages are at most codec.MAX_MESSAGE bytes, and those over
SMALL_MESSAGE share a budget of DECODE_BUDGET bytes being read and decoded at once; decoding
adds at most DECODE_EXPANSION x one message's size on top. Refusals
are logged with the peer's address and counted, and the log lines are throttled so that a
flood cannot flood the log.

What this assumes of multiprocessing's manager protocol (Lib/multiprocessing/managers.py, the
same in 3.11-3.13), all of it in MasterServer's `_serve_connection` and `_serve_calls`: a
request is (ident, name, args, kwds); a reply is (kind, value) with kind '#RETURN', '#ERROR'
(here: type name, message, traceback text), '#TRACEBACK' or '#UNSERIALIZABLE' (text);
`create` returns (ident, exposed), and after `accept_connection` the connection carries calls
on that ident.
"""

import errno
import logging
import pickle
import resource
import socket
import threading
from multiprocessing import AuthenticationError
from traceback import format_exc

from procfleet.shared import compat
from procfleet.shared.errors import ConfigError
from procfleet.shared.manager import DISPATCHER_METHODS
from procfleet.shared.settings import format_address
from procfleet.shared.transport import set_keepalive, set_recv_timeout
from procfleet.shared.codec import (MAX_MESSAGE, WIRE_VERSION, OldWireFormat, ProtocolViolation,
                                   SafeConnection, decode, error_reply)

from .admission import ByteBudget, PendingHandshakes, ThrottledCounter
from .peers import current_peer, serving
from .schemas import CALLS, ENVELOPE, OPENING, Refused, decode_args

log = logging.getLogger(__name__)

#: connections the kernel completes before the accepter takes them (capped at net.core.somaxconn);
#: a burst beyond it (a whole fleet reconnecting, or a flood) waits out 1 s SYN retransmits
LISTEN_BACKLOG = 1024
#: a peer has this long from being accepted to being authenticated
HANDSHAKE_TIMEOUT = 3.0
#: at most this many connections may be authenticating at once; more are closed at once
MAX_PENDING_HANDSHAKES = 1024
#: how often the guard thread cuts off overdue handshakes and logs the throttled summaries
GUARD_INTERVAL = 0.25
#: an authenticated connection with no request for this many heartbeat intervals is closed: a
#: worker calls in at least once an interval, and the master ends a long poll within one
IDLE_HEARTBEATS = 30
#: ...but never sooner than this many seconds
MIN_IDLE_TIMEOUT = 60.0
#: at most this many authenticated connections at once (a worker keeps one, and opens one or
#: two more for a moment when it connects); more are closed as they authenticate
MAX_CONNECTIONS = 2048
#: messages up to this size are read without the budget (MAX_CONNECTIONS of them fit in memory)
SMALL_MESSAGE = 64 * 1024
#: larger messages being read and decoded at once, in bytes, across every connection (each read
#: into a buffer of exactly its size)...
DECODE_BUDGET = 4 * MAX_MESSAGE
#: ...and how long one waits for its share before its connection is closed
BUDGET_WAIT = 30.0
#: what decoding one large message takes on top of its buffer, per byte of it: msgspec builds a
#: text whole before it checks its length, widening it from a 1-byte draft to 4 bytes a
#: character when one character is beyond the BMP (measured in tests/unit/test_decode_bounds.py).
#: msgspec holds the GIL while it decodes, so only one message is being decoded at any moment.
DECODE_EXPANSION = 5

def idle_timeout(heartbeat_interval: float) -> float:
    """How long an authenticated connection may go without a request before it is closed."""
    return max(MIN_IDLE_TIMEOUT, IDLE_HEARTBEATS * heartbeat_interval)


class PeerConnection(SafeConnection):
    """A peer's connection as the server serves it: requests in, replies out."""

    def read_message(self, budget: ByteBudget) -> tuple[memoryview, int]:
        """The next message's bytes, and how much of `budget` they hold (the caller releases
        it). A message over SMALL_MESSAGE waits for its share of the budget before its body is
        read. ProtocolViolation (the connection closed) for one too large or never let in."""
        size = self.read_frame_size()
        if not 0 <= size <= MAX_MESSAGE:
            self.close()
            raise ProtocolViolation(f"a message of {size:,} bytes, over the limit of "
                                    f"{MAX_MESSAGE:,} (MAX_MESSAGE)")
        held = 0
        if size > SMALL_MESSAGE:
            if not budget.acquire(size, BUDGET_WAIT):
                self.close()
                raise ProtocolViolation(f"a message of {size:,} bytes found no room in "
                                        f"{BUDGET_WAIT:g} s: {budget.limit:,} bytes of large "
                                        "messages are being decoded (DECODE_BUDGET)")
            held = size
        try:
            return self.read_exactly(size), held
        except BaseException:
            budget.release(held)
            raise


class MasterServer:
    """Serves `service` (the dispatcher) to authenticated peers, one thread per connection."""

    def __init__(self, service, address: tuple[str, int], authkey: bytes,
                 idle_timeout: float = MIN_IDLE_TIMEOUT):
        self.service = service
        self.dispatcher_id = "%x" % id(service)      # the stock Server's form of an ident
        self.authkey = compat.secret_key(authkey)
        self.idle_timeout = idle_timeout
        self.listener = listen(address, LISTEN_BACKLOG)
        self.address = self.listener.getsockname()[:2]
        self.stop_event = threading.Event()
        self.pending = PendingHandshakes(pending_limit(), HANDSHAKE_TIMEOUT)
        self.failed_auth = ThrottledCounter("authentication failure", "authentication failures")
        self.timed_out = ThrottledCounter("handshake timeout",
                                          "connections not authenticated in time")
        self.shed = ThrottledCounter("connection closed on arrival",
                                     "connections closed on arrival (too many pending)",
                                     burst=1, refill=60.0)
        self.rejected = ThrottledCounter("rejected message", "rejected messages")
        self.refused = ThrottledCounter("refused request", "refused requests")
        self.idle = ThrottledCounter("idle connection closed", "idle connections closed")
        self.old_wire = ThrottledCounter("peer of another wire", "peers of another wire")
        self.crowded = ThrottledCounter("connection over the limit",
                                        "connections closed over the limit (MAX_CONNECTIONS)")
        self.budget = ByteBudget(DECODE_BUDGET)
        self.connections = 0        # authenticated connections open now
        self._connections_lock = threading.Lock()
        self._serving = 0           # calls taken and not yet answered
        self._served = threading.Condition()

    @property
    def auth_failures(self) -> int:
        """Handshakes that failed: a wrong key, or bytes that are not the handshake at all."""
        return self.failed_auth.total

    @property
    def handshake_timeouts(self) -> int:
        return self.timed_out.total

    @property
    def shed_connections(self) -> int:
        """Connections closed on arrival because MAX_PENDING_HANDSHAKES were pending."""
        return self.shed.total

    @property
    def rejected_messages(self) -> int:
        return self.rejected.total

    @property
    def refused_requests(self) -> int:
        """Requests a worker never makes (manager plumbing, other objects, other methods)."""
        return self.refused.total

    @property
    def old_wire_peers(self) -> int:
        """Connections of a peer speaking the old pickle wire (or another wire version)."""
        return self.old_wire.total

    @property
    def idle_closed(self) -> int:
        """Authenticated connections closed after idle_timeout seconds without a request."""
        return self.idle.total

    def start(self) -> None:
        threading.Thread(target=self.accepter, name="accepter", daemon=True).start()
        threading.Thread(target=self.guard, name="handshake-guard", daemon=True).start()

    def close(self) -> None:
        self.stop_event.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes the accepter up
        except OSError:
            pass
        self.listener.close()

    def accepter(self):
        while not self.stop_event.is_set():
            try:
                sock, peer = self.listener.accept()
            except OSError:
                if self.stop_event.is_set():
                    return
                self.stop_event.wait(0.01)  # e.g. EMFILE: do not spin
                continue
            if not self.pending.admit(sock.fileno()):
                sock.close()
                self._log_refusal(self.shed, "closed connection from %s at once: %d connections "
                                  "are already authenticating (the limit)",
                                  format_address(peer), self.pending.limit)
                continue
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_keepalive(sock)
            conn = PeerConnection(sock.detach())
            try:
                threading.Thread(target=self.handle_request, args=(conn, peer),
                                 daemon=True).start()
            except RuntimeError:    # no more threads
                self.pending.finish(conn.fileno())
                conn.close()
                log.warning("closed connection from %s: cannot start a thread to serve it",
                            format_address(peer))

    def guard(self):
        """Cut off handshakes past HANDSHAKE_TIMEOUT and log the throttled summaries.

        Each handshake read also has HANDSHAKE_TIMEOUT as its receive timeout, which ends a
        silent peer on its own thread; this catches a peer that trickles bytes to keep it going.
        """
        while not self.stop_event.wait(GUARD_INTERVAL):
            self.pending.cut_overdue(shutdown_socket)
            self._log_summaries()
        self.pending.cut_overdue(shutdown_socket, everything=True)

    def handle_request(self, conn, peer=None):
        serving(format_address(peer) if isinstance(peer, tuple) else str(peer))
        counted = False
        try:
            if self._authenticate(conn):
                with self._connections_lock:
                    counted = self.connections < MAX_CONNECTIONS
                    if counted:
                        self.connections += 1
                if counted:
                    self._serve_connection(conn)
                else:
                    self._log_refusal(self.crowded, "closed connection from %s: %d "
                                      "authenticated connections are open (the limit)",
                                      current_peer(), MAX_CONNECTIONS)
        finally:
            if counted:
                with self._connections_lock:
                    self.connections -= 1
            conn.close()

    def _authenticate(self, conn) -> bool:
        fd = conn.fileno()
        failure = None
        try:
            set_recv_timeout(fd, HANDSHAKE_TIMEOUT)
            compat.authenticate_as_server(conn, self.authkey)
        except (AuthenticationError, EOFError, OSError) as exc:
            failure = exc
        finally:
            overdue = self.pending.finish(fd)
        if overdue or isinstance(failure, (BlockingIOError, TimeoutError)):
            self._log_refusal(self.timed_out, "closed connection from %s: not authenticated "
                              "within %g s", current_peer(), HANDSHAKE_TIMEOUT)
            return False
        if isinstance(failure, AuthenticationError):
            self._log_refusal(self.failed_auth, "refused connection from %s: wrong key",
                              current_peer())
            return False
        if compat.not_a_handshake(failure):
            self._log_refusal(self.failed_auth, "refused connection from %s: garbage instead "
                              "of the handshake (%s)", current_peer(), failure)
            return False
        if failure is not None:
            log.debug("connection from %s closed during the handshake: %r", current_peer(),
                      failure)
            return False
        # Authenticated: each read may wait this long for the peer's next request (the server
        # reads nothing while a call, a long poll included, is being served).
        set_recv_timeout(fd, self.idle_timeout)
        return True

    def _serve_connection(self, conn):
        """Answer the connection's first request; after accept_connection, serve its calls."""
        request = self._receive(conn, OPENING, "a request a connection may open with")
        if request is None:
            return
        _ident, name, _args = request
        if name == "accept_connection":
            if self._reply(conn, ("#RETURN", None)):
                self._serve_calls(conn)
        elif name == "create":
            self._reply(conn, ("#RETURN", (self.dispatcher_id, DISPATCHER_METHODS)))
        else:                   # dummy: BaseManager.connect checking that the server answers
            self._reply(conn, ("#RETURN", None))

    def _serve_calls(self, conn):
        """The stock serve_client loop, for the dispatcher's own methods only."""
        while not self.stop_event.is_set():
            request = self._receive(conn, CALLS, "a dispatcher method")
            if request is None:
                return
            ident, name, args = request
            if ident != self.dispatcher_id:
                shown = ident if ident is None or len(ident) <= 60 else ident[:60] + "..."
                self._refuse(conn, f"a call on object {shown!r}: only the dispatcher "
                             f"({self.dispatcher_id}) is served")
                return
            with self._served:
                self._serving += 1
            try:
                try:
                    reply = ("#RETURN", getattr(self.service, name)(*args))
                except (TypeError, ValueError) as exc:      # a call the service refused
                    reply = error_reply(exc)
                except Exception as exc:
                    reply = error_reply(exc, format_exc())
                sent = self._reply(conn, reply)
            finally:
                with self._served:
                    self._serving -= 1
                    self._served.notify_all()
            if not sent:
                return

    def wait_answered(self, timeout: float) -> bool:
        """Wait until every call taken so far has had its reply sent (or its connection lost),
        up to `timeout` s: the service marks a worker told STOP before the reply is on its
        way, and a master that exits in between leaves that worker without it."""
        with self._served:
            return self._served.wait_for(lambda: self._serving == 0, timeout)

    def _receive(self, conn, decoders: dict, what: str):
        """The peer's next request as (ident, name, args), or None once the connection is over
        (EOF, idle, a message refused: each logged and counted)."""
        try:
            data, held = conn.read_message(self.budget)
        except EOFError:
            return None
        except (BlockingIOError, TimeoutError):
            self._log_refusal(self.idle, "closed connection from %s: no request for %g s",
                              current_peer(), self.idle_timeout)
            return None
        except ProtocolViolation as exc:
            self.message_rejected(exc)
            return None
        except OSError as exc:
            log.debug("connection from %s lost: %r", current_peer(), exc)
            return None
        try:
            ident, name, raw, _kwds = decode(data, ENVELOPE)
            return ident, name, decode_args(decoders, name, raw, what)
        except OldWireFormat as exc:
            self._other_wire(conn, exc)
        except ProtocolViolation as exc:        # read whole, so the peer can be told why
            self.message_rejected(exc)
            self._reply(conn, ("#TRACEBACK", f"refused by the procfleet master: {exc}"))
        except Refused as exc:
            self._refuse(conn, str(exc))
        finally:
            del data
            self.budget.release(held)
        return None

    def _other_wire(self, conn, exc: OldWireFormat) -> None:
        """Tell a peer of the old pickle wire, in the one form it decodes and shows in one line
        (its connect() takes a ConnectionRefusedError for "master not reachable: <why>"),
        and log it once."""
        self._log_refusal(self.old_wire, "refused connection from %s: %s; run the master and "
                          "its workers from the same procfleet release", current_peer(), exc)
        text = (f"the master speaks procfleet wire {WIRE_VERSION} (msgpack) and this worker "
                "the older pickle wire: run the worker from the master's procfleet release")
        try:
            # fix_imports=False: protocol 2 would name the class exceptions.OSError (Python 2's
            # name), which the old worker's allow-list refuses; it accepts builtins.* only.
            conn.send_bytes(pickle.dumps(("#ERROR", ConnectionRefusedError(text)), protocol=2,
                                         fix_imports=False))
        except OSError:
            pass

    def _reply(self, conn, msg: tuple) -> bool:
        """Send `msg`; False if the connection is gone."""
        try:
            conn.send(msg)
        except (OSError, EOFError):
            return False
        except Exception:       # a value that is not plain data: say so, as the stock does
            return self._reply(conn, ("#UNSERIALIZABLE", format_exc()))
        return True

    def _refuse(self, conn, reason: str) -> None:
        """Log and count a refused request, and give the peer the reason; the caller closes."""
        self._log_refusal(self.refused, "refused a request from %s and closed its connection: %s",
                          current_peer(), reason)
        self._reply(conn, ("#TRACEBACK", f"refused by the procfleet master: {reason}"))

    def message_rejected(self, exc: ProtocolViolation) -> None:
        self._log_refusal(self.rejected, "rejected a message from %s and closed its "
                          "connection: %s", current_peer(), exc)

    def _log_refusal(self, counter: ThrottledCounter, fmt: str, *args) -> None:
        total, loud = counter.record()
        if loud:
            log.warning(f"{fmt} ({counter.one} #%d)", *args, total)

    def _log_summaries(self) -> None:
        for counter in (self.failed_auth, self.timed_out, self.shed, self.rejected,
                        self.refused, self.idle, self.old_wire, self.crowded):
            suppressed, total = counter.summary()
            if suppressed:
                log.warning("%d more %s since the last of these lines, not logged one by one "
                            "(%d in all)", suppressed, counter.many, total)


#: the IPv6 wildcard address: listened on dual-stack, so IPv4 clients reach it too
IPV6_ANY = "::"
#: errors that say this host has no IPv6 at all (the kernel's or Python's build)
NO_IPV6 = (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL)


def listen(address: tuple[str, int], backlog: int) -> socket.socket:
    """A listening TCP socket in the family of `address` (SO_REUSEADDR on, as in Listener).

    `::` listens dual-stack where the host allows it, and on 0.0.0.0 (IPv4) where the host has
    no IPv6. A name is resolved (AI_PASSIVE) and its first address that binds is used, IPv4
    first: a name with both (`localhost` on many hosts) keeps listening on IPv4 as it always
    did; workers try each address of the name anyway.
    """
    host, port = address
    if host == IPV6_ANY:
        try:
            return _listen_on(socket.AF_INET6, (host, port), backlog, dualstack=True)
        except OSError as exc:
            if exc.errno not in NO_IPV6:
                raise
            log.warning("cannot listen on [::]:%d, this host has no IPv6 (%s): listening on "
                        "0.0.0.0:%d, IPv4 only", port, exc.strerror, port)
            return _listen_on(socket.AF_INET, ("0.0.0.0", port), backlog)
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)      # stable: IPv4 first
    error: OSError | None = None
    for family, _type, _proto, _name, sockaddr in infos:
        try:
            return _listen_on(family, sockaddr, backlog)
        except OSError as exc:
            error = exc
    raise error or OSError(f"no address to listen on for {host!r}")


def _listen_on(family: int, sockaddr: tuple, backlog: int, dualstack: bool = False):
    if family == socket.AF_INET6 and not socket.has_ipv6:
        raise OSError(errno.EAFNOSUPPORT, "Python was built without IPv6")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dualstack:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except (OSError, AttributeError) as exc:
                log.warning("cannot listen on IPv4 and IPv6 at once here (%s): IPv6 only; "
                            "bind 0.0.0.0 for IPv4 clients", exc)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def shutdown_socket(fd: int) -> None:
    """Shut down the socket behind `fd` without closing it: its blocked reader sees EOF."""
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            log.debug("cannot shut down socket %d: %s", fd, exc)
    finally:
        sock.detach()


def pending_limit() -> int:
    """MAX_PENDING_HANDSHAKES, or half the open-file limit if that is lower."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_PENDING_HANDSHAKES
    return max(1, min(MAX_PENDING_HANDSHAKES, soft // 2))


def raise_fd_limit() -> None:
    """Raise this process's soft limit on open files to the hard limit: a master holds a socket
    per worker and per connection still authenticating."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)


def start_server(service, address: tuple[str, int], authkey: bytes) -> MasterServer:
    """Bind, serve `service` as the dispatcher and start accepting; ConfigError if the port is
    taken.

    Connections idle for idle_timeout(service.heartbeat_interval) are closed. Raises the
    process's soft open-file limit to its hard limit first.
    """
    raise_fd_limit()
    try:
        server = MasterServer(service, address, authkey,
                              idle_timeout(service.heartbeat_interval))
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {format_address(address)}: {exc.strerror or exc}; "
            "choose another address with --bind or PROCFLEET_BIND"
        ) from None
    server.start()
    return server
