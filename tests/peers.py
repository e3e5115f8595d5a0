"""Raw and hostile peers for tests against a master: handshakes by hand, payloads, floods."""

import os
import resource
import selectors
import socket
import time
from multiprocessing import connection

from procfleet.shared.transport import set_recv_timeout


class SystemPayload:
    """Unpickled the stock way, creates `marker` (pickles as a call of posix.system)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class OpenPayload:
    """Unpickled the stock way, creates `marker` (pickles as a call of io.open)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def raw_session(address: tuple[str, int], key: bytes, timeout: float) -> connection.Connection:
    """A plain multiprocessing connection that did the client half of the handshake.

    Every read on it fails after `timeout` seconds instead of hanging the test.
    """
    sock = socket.create_connection(address, timeout=timeout)
    sock.settimeout(None)            # Connection reads the raw fd: it must block...
    conn = connection.Connection(sock.detach())
    set_recv_timeout(conn.fileno(), timeout)     # ...but never forever
    connection.answer_challenge(conn, key)
    connection.deliver_challenge(conn, key)
    return conn


def local_port(conn: connection.Connection) -> int:
    sock = socket.socket(fileno=conn.fileno())
    try:
        return sock.getsockname()[1]
    finally:
        sock.detach()


def answered(conn: connection.Connection) -> bytes | None:
    """The next message on `conn`, or None if the other side hung up instead."""
    try:
        return conn.recv_bytes()
    except EOFError:
        return None


def read_until_closed(sock: socket.socket) -> int:
    """Read until EOF (or reset); return the bytes read. The socket's timeout bounds each read."""
    total = 0
    while True:
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            return total
        if not data:
            return total
        total += len(data)


def wait_all_closed(socks, timeout: float) -> dict:
    """Read every socket to EOF (or reset); return socket -> when (monotonic) it came.

    AssertionError if any is still open after `timeout` seconds.
    """
    closed = {}
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while len(closed) < len(socks):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(socks) - len(closed)} connections still open "
                                     f"after {timeout:.1f} s")
            for key, _ in sel.select(timeout=remaining):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed[s] = time.monotonic()
                    sel.unregister(s)
    finally:
        sel.close()
    return closed


def ensure_fd_limit(needed: int) -> None:
    """Raise this process's soft open-file limit to `needed` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise AssertionError(f"this test needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
