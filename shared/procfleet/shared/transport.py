"""TCP connections for the manager protocol, bounded in time and without Nagle delays.

multiprocessing's own Client resolves and connects with no time limit, IPv4 only, and leaves
Nagle's algorithm on, which costs ~40 ms per handshake message against delayed ACKs. This client:
resolves within a deadline (IPv4 and IPv6), tries each address in turn within it, authenticates,
sets TCP_NODELAY, and keeps a receive timeout on the connection so a silent master cannot hang a
call forever. Its connections speak procfleet's wire (`codec.SafeConnection`: MessagePack).
Both sides turn TCP keepalive on (`set_keepalive`), so a peer whose host vanished without a
word is noticed on an idle connection within a minute, not the kernel's default two hours.
"""

import socket
import struct
import threading
import time

from .codec import SafeConnection
from .compat import authenticate_as_client

#: the longest one call may wait for the master's reply once connected (long polls are ~1 s)
CALL_TIMEOUT = 30.0
#: TCP keepalive: the first probe after this many seconds of silence on a connection...
KEEPALIVE_IDLE = 30
#: ...then one every this many seconds, and the connection is dropped after this many unanswered
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 3


def set_keepalive(sock: socket.socket) -> None:
    """SO_KEEPALIVE on, with KEEPALIVE_* timing where the platform lets it be set.

    Linux has TCP_KEEPIDLE, macOS calls it TCP_KEEPALIVE; a platform without them keeps the
    kernel's own timing (often two hours of silence before the first probe).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    for option, value in ((idle, KEEPALIVE_IDLE),
                          (getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL),
                          (getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_COUNT)):
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass


def set_recv_timeout(fileno: int, seconds: float) -> None:
    """A kernel receive timeout on a blocking socket: a read past it fails with EAGAIN."""
    sock = socket.socket(fileno=fileno)
    try:
        whole = int(seconds)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", whole, int((seconds - whole) * 1e6)))
    finally:
        sock.detach()


def resolve(host: str, port: int, timeout: float) -> list[tuple[int, tuple]]:
    """getaddrinfo within `timeout` seconds (it has no timeout of its own), IPv4 and IPv6.

    Returns every (family, sockaddr) the resolver gave, in its order of preference.
    """
    box: dict = {}

    def lookup():
        try:
            box["infos"] = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    worker = threading.Thread(target=lookup, name="resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if "error" in box:
        raise box["error"]
    if "infos" not in box:
        raise TimeoutError(f"resolving {host!r} took longer than {timeout:g} s")
    return [(family, sockaddr) for family, _type, _proto, _name, sockaddr in box["infos"]]


def connect_first(addresses: list[tuple[int, tuple]], deadline: float) -> socket.socket:
    """A TCP connection to the first of `addresses` that accepts one before `deadline`.

    Each attempt gets an equal share of the time left for the addresses not yet tried, so one
    address that swallows packets cannot use up the time of the others (a name may resolve to
    ::1 and 127.0.0.1 while the master listens on only one of them). Raises the last error.
    """
    error: OSError | None = None
    for i, (family, sockaddr) in enumerate(addresses):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(remaining / (len(addresses) - i))
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    if error is None:
        error = TimeoutError("no time left to connect" if addresses else "no address to connect to")
    raise error


def bounded_client(timeout: float):
    """A replacement for multiprocessing.connection.Client with a deadline per connection."""

    def client(address, family=None, authkey=None):
        deadline = time.monotonic() + timeout
        host, port = address
        sock = connect_first(resolve(host, port, timeout), deadline)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_keepalive(sock)
            sock.settimeout(None)          # Connection reads the raw fd: it must block
            conn = SafeConnection(sock.detach())
        finally:
            sock.close()
        try:
            set_recv_timeout(conn.fileno(), timeout)
            if authkey is not None:
                authenticate_as_client(conn, authkey)
            set_recv_timeout(conn.fileno(), CALL_TIMEOUT)
        except BaseException:
            conn.close()
            raise
        return conn

    return client
