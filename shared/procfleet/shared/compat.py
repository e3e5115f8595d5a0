"""Every use procfleet makes of undocumented parts of CPython's multiprocessing, in one place.

The rest of procfleet calls these functions and classes, never the private names behind them.
Each says what CPython behaviour it relies on; tests/unit/test_compat.py checks every one of
those behaviours on the running interpreter, and docs/compat.md records how CPython 3.11 to
3.15 compare. Standard library only: the checks run on any interpreter, procfleet installed or not.
"""

import io
import os
import struct
import sys
from multiprocessing import connection as _connection
from multiprocessing import managers as _managers
from multiprocessing import parent_process as _parent_process
from multiprocessing import process as _process

#: the Python versions procfleet's tests run on (tests/e2e/test_cross_version.py: across them)
TESTED_PYTHONS = ((3, 11), (3, 12), (3, 13))
#: versions whose multiprocessing sources were read against every assumption here and whose
#: interpreters passed tests/unit/test_compat.py, but not the whole suite (docs/compat.md)
CHECKED_PYTHONS = ((3, 14), (3, 15))


def untested_python_warning(version: tuple | None = None) -> str | None:
    """One line to log at start-up when this Python (or `version`) is not one procfleet was
    tested on; None when it is."""
    major, minor = (version or sys.version_info)[:2]
    if (major, minor) in TESTED_PYTHONS:
        return None
    tested = ", ".join(f"{a}.{b}" for a, b in TESTED_PYTHONS)
    how = ("its multiprocessing was checked against what procfleet relies on, but the test "
           "suite has not run on it" if (major, minor) in CHECKED_PYTHONS else
           "procfleet relies on undocumented parts of its multiprocessing that may have changed")
    return (f"Python {major}.{minor} is not one procfleet was tested on ({tested}): {how}; "
            "see docs/compat.md, and run a tested Python if workers fail to connect or call")


# -- connection.py: the message framing -----------------------------------------------------------

class Connection(_connection.Connection):
    """multiprocessing's socket Connection, with the framing primitives procfleet's wire uses.

    Relies on (3.11-3.15, Lib/multiprocessing/connection.py, unchanged): `Connection(fd)` owns
    a connected stream socket's fd and reads it with os.read, so a kernel receive timeout
    (SO_RCVTIMEO) ends a read with BlockingIOError; `_recv(n)` reads exactly n bytes into a
    BytesIO (EOFError at a clean end, OSError in the middle of a message); a message is a
    4-byte big-endian signed length, or -1 and an 8-byte unsigned one, then the bytes
    (`_send_bytes`/`_recv_bytes`); `_recv_bytes(maxsize)` returns None without reading the body
    of a message over maxsize; `_check_closed`/`_check_readable` raise OSError.
    3.14 reads a large body in 64 KiB os.read calls (BUFSIZE) instead of one: same bytes.
    """

    def recv_frame(self, maxsize: int) -> io.BytesIO | None:
        """The next message's bytes, or None (its body left unread) if it is over maxsize."""
        self._check_closed()
        self._check_readable()
        return self._recv_bytes(maxsize)

    def read_frame_size(self) -> int:
        """Read the next message's length header only; the caller then reads its body."""
        size, = struct.unpack("!i", self._recv(4).getvalue())
        if size == -1:
            size, = struct.unpack("!Q", self._recv(8).getvalue())
        return size

    def read_exactly(self, size: int) -> memoryview:
        """Exactly `size` bytes (a message body after read_frame_size), read into a buffer of
        exactly that size: `_recv` grows a BytesIO, which may take more while it grows, and the
        master's decode budget counts a message at its size. EOFError at a clean end, OSError
        in the middle, BlockingIOError at the receive timeout, as `_recv`."""
        self._check_closed()
        self._check_readable()
        body = memoryview(bytearray(size))
        got, fd = 0, self.fileno()
        while got < size:
            count = os.readv(fd, [body[got:]])
            if count == 0:
                if got == 0:
                    raise EOFError
                raise OSError("got end of file during message")
            got += count
        return body


# -- connection.py: the HMAC handshake -------------------------------------------------------------

def secret_key(authkey: bytes) -> bytes:
    """`authkey` as multiprocessing keeps one: bytes that refuse to be pickled.

    Relies on process.AuthenticationString (3.11-3.15: a bytes subclass whose __reduce__
    raises TypeError outside of spawning a process).
    """
    return _process.AuthenticationString(authkey)


def authenticate_as_client(conn: _connection.Connection, authkey: bytes) -> None:
    """The client's side of the handshake: answer the server's challenge, then challenge it.

    Relies on connection.answer_challenge/deliver_challenge (undocumented; what
    connection.Client and Listener call). 3.12 moved from HMAC-MD5 to a "{digest}" prefix and
    HMAC-SHA256, still answering and accepting the 3.11 form, so every pair of 3.11-3.15 sides
    agrees. A wrong key raises AuthenticationError on both sides.
    """
    _connection.answer_challenge(conn, authkey)
    _connection.deliver_challenge(conn, authkey)


def authenticate_as_server(conn: _connection.Connection, authkey: bytes) -> None:
    """The server's side of the handshake: challenge the client, then answer its challenge
    (see authenticate_as_client)."""
    _connection.deliver_challenge(conn, authkey)
    _connection.answer_challenge(conn, authkey)


def not_a_handshake(exc: BaseException) -> bool:
    """Whether a failed handshake read bytes that were not a handshake message at all.

    Relies on recv_bytes(256) inside the handshake raising OSError("bad message length"),
    with no errno, for a length over 256 (3.11-3.15), where a socket error has an errno.
    """
    return isinstance(exc, OSError) and exc.errno is None


# -- managers.py: the client's side of the manager protocol ----------------------------------------

def request(conn: _connection.Connection, name: str, args: tuple = ()):
    """Send one request for the manager itself (ident None) on `conn`; return its reply's value.

    Relies on managers.dispatch (3.11-3.15, unchanged): sends (None, name, args, {}) with
    conn.send, reads (kind, value) with conn.recv, returns value for '#RETURN', raises value
    for '#ERROR' and RemoteError(text) for '#TRACEBACK' and '#UNSERIALIZABLE'.
    """
    return _managers.dispatch(conn, None, name, args)


def use_client(obj, client) -> None:
    """Make a BaseManager or BaseProxy open its connections with `client(address, authkey=)`.

    Relies on both opening every connection through their `_Client` attribute (3.11-3.15):
    BaseManager._create and BaseProxy._connect (and _decref, _incref, which procfleet's
    proxies never run).
    """
    obj._Client = client


def connect_manager(manager: _managers.BaseManager) -> None:
    """BaseManager.connect, through the manager's own client (the stock one calls
    connection.Client, which has no timeout, whatever `_Client` is).

    Relies on BaseManager keeping `_address`, `_authkey` and `_state` (a State whose value
    State.STARTED lets `_create` run), the same in 3.11-3.15.
    """
    conn = manager._Client(manager._address, authkey=manager._authkey)
    try:
        request(conn, "dummy")
    finally:
        conn.close()
    manager._state.value = _managers.State.STARTED


def unowned_proxy(manager: _managers.BaseManager, typeid: str, proxytype: type):
    """A proxy of `proxytype` for a new object of `typeid` on the manager's server, that never
    increfs or decrefs it (the server owns it), opening connections with the manager's client.

    Relies on BaseManager._create(typeid) returning (Token, exposed) from a 'create' request,
    on BaseProxy(token, serializer, manager=, authkey=, exposed=, incref=False) making no
    incref round trip and registering no decref finalizer, and on the manager's `_serializer`
    and `_authkey` (3.11-3.15; 3.14 renamed the proxy's private `_idset`, not used here).
    """
    token, exposed = manager._create(typeid)
    proxy = proxytype(token, manager._serializer, manager=manager, authkey=manager._authkey,
                      exposed=exposed, incref=False)
    use_client(proxy, manager._Client)
    return proxy


def open_proxy_connection(proxy: _managers.BaseProxy) -> None:
    """Open this thread's connection of `proxy` now rather than at its first call.

    Relies on BaseProxy._connect (3.11-3.15): opens a connection with `_Client`, sends
    'accept_connection' through dispatch and keeps it in the thread-local `_tls.connection`,
    which `_callmethod` then uses: each call sends (ident, name, args, kwds) and raises an
    '#ERROR' reply's value, the exception itself.
    """
    proxy._connect()


def proxy_connection(proxy: _managers.BaseProxy) -> _connection.Connection | None:
    """This thread's open connection of `proxy`, or None before the first call.

    Relies on BaseProxy keeping it as `_tls.connection` (3.11-3.15).
    """
    return getattr(proxy._tls, "connection", None)


# -- the worker's task processes ----------------------------------------------------------------

def set_forkserver_preload(ctx, modules: list[str]) -> None:
    """Have the fork server of `ctx` import `modules` before it forks any child.

    set_forkserver_preload is documented; what "__main__" in the list does is not: 3.11-3.13
    skip it (CPython gh-126631: the main script's path never reaches the server), 3.14 and
    3.15 run the main script there as `__mp_main__`, so its `if __name__ == "__main__":` block
    does not run again. Either way the children still run the script themselves.
    """
    ctx.set_forkserver_preload(list(modules))


def wait_for_parent_exit() -> None:
    """In a multiprocessing child: return once the process that started it has exited.

    Relies on parent_process() returning a _ParentProcess whose join() waits on a sentinel fd
    the parent holds (3.8-3.15; join on another process is otherwise refused).
    """
    _parent_process().join()
