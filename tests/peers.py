"""Raw and hostile peers for tests against a master: handshakes by hand, payloads, floods.

A raw session speaks the wire by hand: `send` a request as the new wire's MessagePack
(procfleet.shared.codec.encode), `send_bytes` anything else (a pickle of the old wire,
a hand-made body); `recv` decodes a reply of this wire, `old_wire_reply` one of the old.
"""

import builtins
import io
import os
import pickle
import resource
import selectors
import socket
import time
from multiprocessing import connection

import msgspec

from procfleet.shared.transport import set_recv_timeout
from procfleet.shared.codec import MAGIC, SafeConnection


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


def raw_session(address: tuple[str, int], key: bytes, timeout: float) -> SafeConnection:
    """A connection of this wire that did the client half of the handshake, and nothing else:
    `send` encodes a request as MessagePack, `recv` decodes a reply as a worker does
    ((kind, value); an '#ERROR' value is a RemoteCallError).

    Every read on it fails after `timeout` seconds instead of hanging the test.
    """
    sock = socket.create_connection(address, timeout=timeout)
    sock.settimeout(None)            # Connection reads the raw fd: it must block...
    conn = SafeConnection(sock.detach())
    set_recv_timeout(conn.fileno(), timeout)     # ...but never forever
    connection.answer_challenge(conn, key)
    connection.deliver_challenge(conn, key)
    return conn


def msgpack_body(obj) -> bytes:
    """A message of this wire holding `obj` as plain MessagePack, with no extension applied
    (codec.encode would turn a big int or a lone surrogate into an extension)."""
    return MAGIC + msgspec.msgpack.encode(obj)


def msgpack_ext(code: int, data: bytes) -> msgspec.msgpack.Ext:
    """A MessagePack extension value, for a message that smuggles one where data belongs."""
    return msgspec.msgpack.Ext(code, data)


class _OldReplyUnpickler(pickle.Unpickler):
    """Reads a reply as the old wire's worker did (its wire.RestrictedUnpickler at 0826fc4):
    the only globals are builtin exception classes, named as ("builtins", name), and
    find_class sees a name as the pickle spells it (before fix_imports maps it)."""

    def find_class(self, module: str, name: str):
        obj = getattr(builtins, name, None) if module == "builtins" else None
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in a message: only "
                                     "builtin exceptions may cross the wire")


def old_wire_reply(conn: connection.Connection):
    """The next message on `conn` as a peer of the old pickle wire reads it, or None if the
    other side hung up instead. AssertionError if it is not a pickle (protocol 2 or later)."""
    data = answered(conn)
    if data is None:
        return None
    assert data[:1] == b"\x80", f"not a pickle of the old wire: {data[:40]!r}"
    return _OldReplyUnpickler(io.BytesIO(data)).load()


def local_port(conn: connection.Connection) -> int:
    sock = socket.socket(fileno=conn.fileno())
    try:
        return sock.getsockname()[1]
    finally:
        sock.detach()


def rejected_with_reason(conn) -> str:
    """The '#TRACEBACK' reason the master sent for a message it rejected, once it hung up."""
    kind, text = conn.recv()
    assert kind == "#TRACEBACK" and text.startswith("refused by the procfleet master: "), \
        (kind, text)
    assert "\n" not in text
    assert answered(conn) is None, "the connection stayed open after the rejection"
    return text


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


#: a flood: connections that never authenticate, then connections that send random bytes
FLOOD_IDLE = 500
FLOOD_GARBAGE = 50


def open_flood(address, opened: dict, timeout: float) -> None:
    """Open FLOOD_IDLE connections to `address` that say nothing, then FLOOD_GARBAGE that send
    random bytes (more than any length header under 256 asks for); each goes into `opened`
    (socket -> when it was opened) as it opens, for the caller to close even after an error."""
    for _ in range(FLOOD_IDLE):
        s = socket.create_connection(address, timeout=timeout)
        opened[s] = time.monotonic()
    for i in range(FLOOD_GARBAGE):
        s = socket.create_connection(address, timeout=timeout)
        opened[s] = time.monotonic()
        s.sendall(os.urandom(300 + i))


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
