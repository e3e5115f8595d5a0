"""One test per assumption procfleet.shared.compat makes of CPython's multiprocessing.

Each checks the behaviour procfleet relies on, on the running interpreter, over real
connections (socket pairs) or real processes. Standard library and pytest only, so that the
file runs on an interpreter procfleet's dependencies do not support yet (docs/compat.md).
"""

import ast
import errno
import gc
import hashlib
import hmac
import os
import pickle
import select
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import multiprocessing
from multiprocessing import AuthenticationError, managers

import pytest

from procfleet.shared import compat

KEY = b"compat-test-key"
#: the longest any step here may wait for the other side
PROMPT = 5.0


def pair() -> tuple[compat.Connection, compat.Connection]:
    a, b = socket.socketpair()
    return compat.Connection(a.detach()), compat.Connection(b.detach())


def raw_pair() -> tuple[compat.Connection, socket.socket]:
    """A Connection and the plain socket at the other end, to see and write the raw bytes."""
    a, b = socket.socketpair()
    b.settimeout(PROMPT)
    return compat.Connection(a.detach()), b


def recv_all(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"peer closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def set_rcvtimeo(conn, seconds: float) -> None:
    sock = socket.socket(fileno=conn.fileno())
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", int(seconds), int(seconds % 1 * 1e6)))
    finally:
        sock.detach()


def in_thread(target, *args) -> dict:
    """Run `target(*args)` on a thread; the returned box gets "result" or "error", and "join"."""
    box: dict = {}

    def run():
        try:
            box["result"] = target(*args)
        except BaseException as exc:       # handed to the test, which checks it
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    box["join"] = lambda: thread.join(PROMPT) or not thread.is_alive()
    return box


# -- the framing ---------------------------------------------------------------------------------

def test_a_message_goes_as_a_4_byte_big_endian_length_then_its_bytes():
    conn, raw = raw_pair()
    payload = os.urandom(100_000)           # over 16 KiB: header and body sent apart
    conn.send_bytes(payload)
    conn.send_bytes(b"abc")                 # small: one write
    assert recv_all(raw, 4) == struct.pack("!i", len(payload))
    assert recv_all(raw, len(payload)) == payload
    assert recv_all(raw, 7) == b"\x00\x00\x00\x03abc"
    conn.close()
    raw.close()


def test_a_length_of_minus_1_is_followed_by_an_8_byte_one():
    conn, raw = raw_pair()
    raw.sendall(struct.pack("!i", -1) + struct.pack("!Q", 5) + b"hello")
    assert conn.read_frame_size() == 5
    assert conn.read_exactly(5) == b"hello"
    raw.sendall(struct.pack("!i", -1) + struct.pack("!Q", 3) + b"abc")
    assert conn.recv_frame(100).getvalue() == b"abc"
    conn.close()
    raw.close()


def test_recv_frame_over_the_limit_is_none_and_leaves_the_body_unread():
    conn, raw = raw_pair()
    raw.sendall(struct.pack("!i", 10) + b"0123456789" + struct.pack("!i", 2) + b"ok")
    assert conn.recv_frame(9) is None
    assert conn.read_exactly(10) == b"0123456789"     # still there
    assert conn.recv_frame(9).getvalue() == b"ok"
    conn.close()
    raw.close()


def test_read_exactly_takes_a_body_sent_in_pieces_into_a_buffer_of_its_size():
    conn, raw = raw_pair()
    payload = os.urandom(300_000)
    sender = threading.Thread(target=lambda: [raw.sendall(payload[i:i + 7_000])
                                              for i in range(0, len(payload), 7_000)])
    sender.start()
    body = conn.read_exactly(len(payload))
    sender.join(PROMPT)
    assert body == payload and body.nbytes == len(payload) and len(body.obj) == len(payload)
    assert conn.read_exactly(0) == b""
    conn.close()
    raw.close()


def test_read_exactly_tells_a_clean_end_from_an_end_in_the_middle_and_a_timeout():
    conn, raw = raw_pair()
    raw.close()
    with pytest.raises(EOFError):
        conn.read_exactly(10)
    conn.close()
    conn, raw = raw_pair()
    raw.sendall(b"0123")
    raw.close()
    with pytest.raises(OSError, match="end of file during message"):
        conn.read_exactly(10)
    conn.close()
    conn, raw = raw_pair()
    set_rcvtimeo(conn, 0.05)
    with pytest.raises(BlockingIOError):
        conn.read_exactly(10)
    conn.close()
    raw.close()


def test_recv_frame_checks_the_connection_is_open():
    conn, raw = raw_pair()
    conn.close()
    with pytest.raises(OSError):
        conn.recv_frame(10)
    raw.close()


def test_a_read_past_the_receive_timeout_raises_blocking_io_error():
    conn, raw = raw_pair()
    set_rcvtimeo(conn, 0.05)
    with pytest.raises((BlockingIOError, TimeoutError)):
        conn.recv_frame(10)
    conn.close()
    raw.close()


def test_end_of_stream_is_eof_between_messages_and_oserror_inside_one():
    conn, raw = raw_pair()
    raw.sendall(struct.pack("!i", 10) + b"01234")
    raw.close()
    with pytest.raises(OSError) as inside:
        conn.recv_frame(100)
    assert not isinstance(inside.value, EOFError)
    conn.close()
    conn, raw = raw_pair()
    raw.close()
    with pytest.raises(EOFError):
        conn.read_frame_size()
    conn.close()


# -- the handshake ------------------------------------------------------------------------------

def test_handshake_with_the_same_key_succeeds_both_ways():
    client, server = pair()
    serving = in_thread(compat.authenticate_as_server, server, KEY)
    compat.authenticate_as_client(client, KEY)
    assert serving["join"]() and "error" not in serving
    client.send_bytes(b"after")             # the connection goes on carrying messages
    assert server.recv_bytes() == b"after"
    client.close()
    server.close()


def test_handshake_with_another_key_fails_on_both_sides():
    client, server = pair()
    serving = in_thread(compat.authenticate_as_server, server, b"the master's key")
    with pytest.raises(AuthenticationError):
        compat.authenticate_as_client(client, KEY)
    assert serving["join"]()
    assert isinstance(serving["error"], AuthenticationError)
    client.close()
    server.close()


def _send(sock, data: bytes) -> None:
    sock.sendall(struct.pack("!i", len(data)) + data)


def _receive(sock) -> bytes:
    size, = struct.unpack("!i", recv_all(sock, 4))
    return recv_all(sock, size)


def test_client_answers_a_3_11_server_challenge_with_hmac_md5():
    """A 3.11 master sends 20 random bytes and takes a bare 16-byte HMAC-MD5 back."""
    conn, raw = raw_pair()
    challenge = os.urandom(20)
    box = in_thread(compat.authenticate_as_client, conn, KEY)
    _send(raw, b"#CHALLENGE#" + challenge)
    assert _receive(raw) == hmac.new(KEY, challenge, "md5").digest()
    _send(raw, b"#WELCOME#")
    theirs = _receive(raw)                  # the client's own challenge, answered 3.11's way
    assert theirs.startswith(b"#CHALLENGE#")
    _send(raw, hmac.new(KEY, theirs[len(b"#CHALLENGE#"):], "md5").digest())
    assert _receive(raw) == b"#WELCOME#"
    assert box["join"]() and "error" not in box
    conn.close()
    raw.close()


def test_server_accepts_a_3_11_client_answering_with_hmac_md5():
    """A 3.11 worker answers any challenge with HMAC-MD5 of all of it, unprefixed."""
    conn, raw = raw_pair()
    box = in_thread(compat.authenticate_as_server, conn, KEY)
    challenge = _receive(raw)
    assert challenge.startswith(b"#CHALLENGE#")
    _send(raw, hmac.new(KEY, challenge[len(b"#CHALLENGE#"):], "md5").digest())
    assert _receive(raw) == b"#WELCOME#"
    mine = os.urandom(20)
    _send(raw, b"#CHALLENGE#" + mine)
    assert _receive(raw) == hmac.new(KEY, mine, "md5").digest()
    _send(raw, b"#WELCOME#")
    assert box["join"]() and "error" not in box
    conn.close()
    raw.close()


def test_garbage_instead_of_the_handshake_is_told_apart_from_a_socket_error():
    conn, raw = raw_pair()
    box = in_thread(compat.authenticate_as_server, conn, KEY)
    _receive(raw)
    raw.sendall(struct.pack("!i", 100_000) + b"GET / HTTP/1.1\r\n")
    assert box["join"]()
    assert compat.not_a_handshake(box["error"]), repr(box["error"])
    assert not compat.not_a_handshake(OSError(errno.ECONNRESET, "Connection reset by peer"))
    assert not compat.not_a_handshake(EOFError())
    conn.close()
    raw.close()


def test_secret_key_is_the_same_bytes_and_refuses_to_be_pickled():
    key = compat.secret_key(KEY)
    assert isinstance(key, bytes) and key == KEY
    assert hmac.new(key, b"m", hashlib.sha256).digest() == hmac.new(KEY, b"m", "sha256").digest()
    with pytest.raises(TypeError):
        pickle.dumps(key)


# -- the manager protocol --------------------------------------------------------------------------

def serve(conn, respond, seen: list) -> None:
    """A manager server's side of one connection: each request, recorded, gets respond()'s
    reply, until the peer closes."""
    for _ in range(100):
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        seen.append(request)
        conn.send(respond(request))


def test_request_sends_ident_none_name_args_kwds_and_returns_the_value():
    client, server = pair()
    seen: list = []
    box = in_thread(serve, server, lambda _r: ("#RETURN", {"answer": 42}), seen)
    assert compat.request(client, "create", ("dispatcher",)) == {"answer": 42}
    assert seen == [(None, "create", ("dispatcher",), {})]
    client.close()
    assert box["join"]()
    server.close()


def test_request_raises_an_error_reply_and_a_traceback_reply():
    client, server = pair()
    replies = iter([("#ERROR", ConnectionRefusedError("refused: run the same release")),
                    ("#TRACEBACK", "refused by the procfleet master: a call on object 'x'")])
    box = in_thread(serve, server, lambda _r: next(replies), [])
    with pytest.raises(ConnectionRefusedError, match="run the same release"):
        compat.request(client, "dummy")
    with pytest.raises(managers.RemoteError, match="a call on object 'x'"):
        compat.request(client, "dummy")
    client.close()
    assert box["join"]()
    server.close()


class ThingProxy(managers.BaseProxy):
    _exposed_ = ("get",)

    def get(self, key):
        return self._callmethod("get", (key,))


class ThingManager(managers.BaseManager):
    pass


ThingManager.register("thing", proxytype=ThingProxy, exposed=("get",), create_method=False)


class FakeServer:
    """A manager server for one object "t1" (exposing `get`), reached through `client`, which
    hands out socket pairs: the address given to the manager is never dialled."""

    def __init__(self):
        self.seen: list = []
        self.opened: list = []
        self.threads: list = []

    def respond(self, request):
        ident, name, args, _kwds = request
        if name == "create":
            return "#RETURN", ("t1", ("get",))
        if ident == "t1" and name == "get":
            if args[0] == "missing":
                return "#ERROR", KeyError(args[0])
            return "#RETURN", args[0] * 2
        return "#RETURN", None

    def client(self, address, authkey=None):
        mine, theirs = pair()
        self.opened.append(mine)
        self.threads.append(in_thread(serve, theirs, self.respond, self.seen))
        return mine

    def close(self):
        for conn in self.opened:
            conn.close()
        assert all(box["join"]() for box in self.threads)

    def names(self):
        return [name for _ident, name, _args, _kwds in self.seen]


@pytest.fixture
def fake_server():
    server = FakeServer()
    yield server
    server.close()


def test_a_manager_connects_and_creates_through_its_own_client(fake_server):
    manager = ThingManager(address=("127.0.0.1", 9), authkey=KEY)   # never dialled
    compat.use_client(manager, fake_server.client)
    compat.connect_manager(manager)
    proxy = compat.unowned_proxy(manager, "thing", ThingProxy)
    assert fake_server.names() == ["dummy", "create"]
    assert fake_server.seen[1] == (None, "create", ("thing",), {})
    assert isinstance(proxy, ThingProxy)


def test_create_needs_connect_manager_first(fake_server):
    manager = ThingManager(address=("127.0.0.1", 9), authkey=KEY)
    compat.use_client(manager, fake_server.client)
    with pytest.raises(AssertionError):
        compat.unowned_proxy(manager, "thing", ThingProxy)


def test_an_unowned_proxy_calls_on_one_connection_and_never_increfs_or_decrefs(fake_server):
    manager = ThingManager(address=("127.0.0.1", 9), authkey=KEY)
    compat.use_client(manager, fake_server.client)
    compat.connect_manager(manager)
    proxy = compat.unowned_proxy(manager, "thing", ThingProxy)
    assert compat.proxy_connection(proxy) is None
    compat.open_proxy_connection(proxy)
    conn = compat.proxy_connection(proxy)
    assert conn is fake_server.opened[-1]
    assert fake_server.seen[-1][1] == "accept_connection"
    assert proxy.get(21) == 42
    assert compat.proxy_connection(proxy) is conn
    assert fake_server.seen[-1] == ("t1", "get", (21,), {})
    with pytest.raises(KeyError, match="missing"):      # '#ERROR': the exception itself
        proxy.get("missing")
    del proxy
    gc.collect()
    assert fake_server.names() == ["dummy", "create", "accept_connection", "get", "get"]


# -- the worker's task processes ---------------------------------------------------------------

def run_script(tmp_path, body: str, pass_fds=()) -> subprocess.CompletedProcess:
    script = tmp_path / "main_script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path, pass_fds=pass_fds)


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(),
                    reason="no forkserver on this platform")
def test_forkserver_preload_imports_modules_once_and_not_the_main_block_again(tmp_path):
    done = run_script(tmp_path, """
        import multiprocessing, sys
        from procfleet.shared import compat

        def report(conn):
            conn.send(("colorsys" in sys.modules, "__mp_main__" in sys.modules))

        if __name__ == "__main__":
            with open("main-ran", "a") as f:
                f.write("x")
            ctx = multiprocessing.get_context("forkserver")
            compat.set_forkserver_preload(ctx, ["__main__", "colorsys"])
            here, there = ctx.Pipe()
            child = ctx.Process(target=report, args=(there,))
            child.start()
            print(here.recv() if here.poll(30) else "no reply")
            child.join(30)
    """)
    assert done.returncode == 0, done.stderr
    preloaded, main_rerun = ast.literal_eval(done.stdout.strip())
    assert preloaded, "colorsys was not imported in the fork server"
    assert main_rerun                       # the child ran the script as __mp_main__
    assert (tmp_path / "main-ran").read_text() == "x", "the main block ran again"


def test_wait_for_parent_exit_returns_once_the_parent_has_exited(tmp_path):
    """The script's child waits for the script to exit, then writes; the script writes first."""
    reader, writer = os.pipe()
    try:
        done = run_script(tmp_path, f"""
            import multiprocessing, os
            from procfleet.shared import compat

            def child(w):
                compat.wait_for_parent_exit()
                os.write(w, b"parent gone")

            if __name__ == "__main__":
                proc = multiprocessing.get_context("fork").Process(target=child, args=({writer},))
                proc.start()
                proc.join(0.3)
                os.write({writer}, b"alive, " if proc.is_alive() else b"dead, ")
                os._exit(0)             # no join: the child outlives the script
        """, pass_fds=(writer,))
    finally:
        os.close(writer)
    assert done.returncode == 0, done.stderr
    data = b""
    with os.fdopen(reader, "rb", buffering=0) as pipe:
        for _ in range(100):        # EOF once the child has written and exited
            ready, _, _ = select.select([pipe], [], [], PROMPT)
            chunk = pipe.read(100) if ready else b""
            if not chunk:
                break
            data += chunk
    assert data == b"alive, parent gone"


# -- untested Pythons -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [(3, 11), (3, 12), (3, 13)])
def test_no_warning_on_a_tested_python(version):
    assert compat.untested_python_warning(version) is None


@pytest.mark.parametrize("version, says", [((3, 14), "was checked"), ((3, 15), "was checked"),
                                           ((3, 16), "may have changed"),
                                           ((3, 10), "may have changed")])
def test_one_line_warning_on_an_untested_python(version, says):
    text = compat.untested_python_warning(version)
    assert text.startswith(f"Python {version[0]}.{version[1]} is not one procfleet was tested on")
    assert says in text and "docs/compat.md" in text and "\n" not in text


def test_the_running_python_is_judged_by_its_own_version(monkeypatch):
    assert (compat.untested_python_warning() is None) == (
        tuple(sys.version_info[:2]) in compat.TESTED_PYTHONS)
    monkeypatch.setattr(compat, "TESTED_PYTHONS", ())
    assert f"Python {sys.version_info[0]}.{sys.version_info[1]} " in \
        compat.untested_python_warning()


@pytest.mark.parametrize("reply", [["#PROXY", [["get"], ["thing", ["127.0.0.1", 9], "t1"]]],
                                   ["#TRACEBACK", ["not", "text"]], ["#UNSERIALIZABLE", 5],
                                   ["#NEW", None]], ids=repr)
def test_only_reply_kinds_callmethod_handles_as_data_reach_it(reply):
    """_callmethod builds a proxy from a '#PROXY' reply's token, and dispatch asserts a
    traceback is text: procfleet's wire refuses both before they get there."""
    codec = pytest.importorskip("procfleet.shared.codec")   # needs msgspec
    with pytest.raises(codec.ProtocolViolation, match="malformed reply"):
        codec.reply_from_wire(reply)
    assert codec.reply_from_wire(["#TRACEBACK", "text"]) == ("#TRACEBACK", "text")


def cli_run(args: list[str]):
    """The procfleet command line, in this process (needs click and procfleet's master and
    worker, which this file otherwise does without)."""
    testing = pytest.importorskip("click.testing")
    cli = pytest.importorskip("procfleet.shared.cli")
    return testing.CliRunner().invoke(cli.main, args, catch_exceptions=False)


def test_the_master_warns_at_start_on_an_untested_python(monkeypatch, authkey_env):
    monkeypatch.setattr(compat, "TESTED_PYTHONS", ())
    with socket.socket() as taken:              # the batch begins, then cannot listen
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli_run(["master", "--demo", "1", "--bind", f"127.0.0.1:{port}"])
    assert result.exit_code == 2, result.output
    assert "is not one procfleet was tested on" in result.output


def test_the_worker_warns_at_start_on_an_untested_python(monkeypatch, authkey_env):
    monkeypatch.setattr(compat, "TESTED_PYTHONS", ())
    with socket.socket() as closed:             # a loopback port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        result = cli_run(["worker", "--master", f"127.0.0.1:{port}", "--connect-timeout", "0",
                          "--concurrency", "1"])
    assert result.exit_code == 3, result.output
    assert "is not one procfleet was tested on" in result.output


def test_no_start_up_warning_on_a_tested_python(monkeypatch, authkey_env):
    monkeypatch.setattr(compat, "TESTED_PYTHONS", (tuple(sys.version_info[:2]),))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        result = cli_run(["worker", "--master", f"127.0.0.1:{port}", "--connect-timeout", "0",
                          "--concurrency", "1"])
    assert result.exit_code == 3, result.output
    assert "tested on" not in result.output
