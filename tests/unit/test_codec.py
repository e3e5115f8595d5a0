"""The wire codec: protocol messages round-trip as plain data; a pickle, any pickle, is refused
(OldWireFormat) without being unpickled; errors cross as data; oversized messages end the
connection."""

import os
import pickle
import socket
import struct
import subprocess

import msgspec
import pytest

from procfleet.shared import codec
from procfleet.shared.errors import EXIT_USAGE, ProcfleetError, UnknownTask
from procfleet.shared.protocol import Outcome, Task
from procfleet.shared.codec import (MAGIC, OldWireFormat, ProtocolViolation, RemoteCallError,
                                   SafeConnection, decode, encode, error_reply)

#: what the worker's proxy and the master's server send each other in a procfleet session
PROTOCOL_MESSAGES = [
    (None, "dummy", (), {}),
    (None, "create", ("dispatcher",), {}),
    (None, "accept_connection", ("MainProcess|worker-3",), {}),
    ("7f3a2b1c", "hello", ("w-3f2a", {"protocol": 5, "python": "3.12.1", "concurrency": 4}), {}),
    ("7f3a2b1c", "exchange",
     ("w-3f2a", "batch-1", [Outcome(3, "ok", '{"a":[1,2.5,null,true]}', None)[:4],
                            Outcome(4, "error", None, "RuntimeError: kaput")[:4]],
      32, 1.0, ("session", 7, 6), 3), {}),
    ("7f3a2b1c", "release", ("w-3f2a", [5, 6]), {}),
    ("7f3a2b1c", "goodbye", ("w-3f2a",), {}),
    ("7f3a2b1c", "ping", (), {}),
    ("#RETURN", None),
    ("#RETURN", ("7f3a2b1c", ("hello", "exchange", "release", "goodbye", "ping"))),
    ("#RETURN", ([tuple(Task(0, "t0", "square", [3], {"x": "é"}, 2.5))], "run")),
    ("#RETURN", {"state": "stop", "total": 10, "done": 10, "workers": 2}),
    ("#TRACEBACK", "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n"),
    ("#UNSERIALIZABLE", "Traceback ...\n"),
]


def as_lists(value):
    """`value` as the wire gives it back: every tuple an array, so a list."""
    if isinstance(value, (tuple, list)):
        return [as_lists(item) for item in value]
    if isinstance(value, dict):
        return {key: as_lists(item) for key, item in value.items()}
    return value


def plain(value) -> bool:
    """Whether `value` holds only None, bool, int, float, str, list and dict."""
    if isinstance(value, list):
        return type(value) is list and all(plain(item) for item in value)
    if isinstance(value, dict):
        return type(value) is dict and all(plain(k) and plain(v) for k, v in value.items())
    return type(value) in (type(None), bool, int, float, str)


# -- pickles: refused by their first bytes, never loaded --------------------------------------

def protocol0_call(module: str, name: str, *args: str) -> bytes:
    """A hand-written pickle that calls module.name(*args) when loaded: an attacker's bytes."""
    return (f"c{module}\n{name}\n(" + "".join(f"V{a}\n" for a in args) + "tR.").encode()


class Reduces:
    """Pickles (with the current protocol) as a call of `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker) -> dict[str, bytes]:
    """name -> a pickle that would create `marker` when loaded (all of protocol 2 or later, as
    the old pickle wire sent them)."""
    touch = f"touch {marker}"
    return {
        "posix.system": pickle.dumps(Reduces(os.system, touch), protocol=4),
        "builtins.eval": pickle.dumps(Reduces(eval, f"open({str(marker)!r}, 'w').close()"),
                                      protocol=5),
        "subprocess.Popen": pickle.dumps(Reduces(subprocess.Popen, ["touch", str(marker)]),
                                         protocol=2),
        "in a request": pickle.dumps(("7f3a2b1c", "exchange",
                                      ("w-1", [Reduces(os.system, touch)], 1, 0.0), {}),
                                     protocol=5),
    }


PAYLOADS = ["posix.system", "builtins.eval", "subprocess.Popen", "in a request"]


def run_payload(data: bytes) -> None:
    result = pickle.loads(data)
    if isinstance(result, subprocess.Popen):
        result.wait(10)


@pytest.mark.parametrize("name", PAYLOADS)
def test_the_payloads_are_live_with_stock_pickle(tmp_path, name):
    """The control: unpickled the stock way, each payload does create the marker file."""
    marker = tmp_path / "pwned"
    run_payload(payloads(marker)[name])
    assert marker.exists()


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickling in this process fails the test."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


@pytest.mark.parametrize("name", PAYLOADS)
def test_a_pickle_is_refused_as_the_old_wire_and_never_loaded(tmp_path, name, no_unpickling):
    marker = tmp_path / "pwned"
    data = payloads(marker)[name]
    with pytest.raises(OldWireFormat, match="pickle wire"):
        decode(data)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_any_pickle_the_old_wire_sent_is_the_old_wire(protocol, no_unpickling):
    data = pickle.dumps(("#RETURN", None), protocol=protocol)
    with pytest.raises(OldWireFormat):
        decode(data)


@pytest.mark.parametrize("data", [
    protocol0_call("os", "system", "touch {marker}"),
    b"(cos\nsystem\nVtouch {marker}\no.",                     # INST/OBJ, protocol 1 style
], ids=["protocol-0 GLOBAL", "protocol-1 OBJ"])
def test_an_older_pickle_is_not_a_message_and_is_never_loaded(tmp_path, data, no_unpickling):
    marker = tmp_path / "pwned"
    with pytest.raises(ProtocolViolation, match="not a procfleet message"):
        decode(data.replace(b"{marker}", str(marker).encode()))
    assert not marker.exists()


def test_a_pickle_after_the_magic_is_read_as_msgpack_not_unpickled(tmp_path, no_unpickling):
    marker = tmp_path / "pwned"
    with pytest.raises(ProtocolViolation):
        decode(MAGIC + payloads(marker)["posix.system"])
    assert not marker.exists()


def test_every_message_opens_with_a_pickle_of_text_an_old_master_can_name():
    """An old (pickle wire) master unpickles the MAGIC to a short text and refuses it as not a
    request, naming what it got: nothing else of the message is read."""
    data = encode(("7f3a2b1c", "ping", (), {}))
    assert data.startswith(MAGIC)
    assert pickle.loads(data) == codec.OLD_PEER_TEXT                     # stops at MAGIC's STOP
    assert f"({codec.WIRE_VERSION})" in codec.OLD_PEER_TEXT


def test_a_message_of_another_msgpack_wire_names_its_version():
    other = MAGIC.replace(f"({codec.WIRE_VERSION})".encode(), b"(5)")
    with pytest.raises(OldWireFormat, match=r"msgpack wire 5\b"):
        decode(other + msgspec.msgpack.encode(("#RETURN", None)))


# -- plain data round-trips ---------------------------------------------------------------

@pytest.mark.parametrize("message", PROTOCOL_MESSAGES, ids=lambda m: str(m[1])[:20])
def test_protocol_messages_round_trip(message):
    got = decode(encode(message))
    assert got == as_lists(message) and plain(got)


@pytest.mark.parametrize("value", [
    2 ** 64, -2 ** 63 - 1, 10 ** 300, -(10 ** 300), 2 ** 63, 2 ** 64 - 1, -2 ** 63,
    10 ** 4299,
], ids=lambda v: str(v) if abs(v) < 10 ** 20 else f"{len(str(abs(v)))} digits")
def test_ints_beyond_64_bits_round_trip(value):
    got = decode(encode(("#RETURN", [value, {"k": value}])))
    assert got == ["#RETURN", [value, {"k": value}]] and type(got[1][0]) is int


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\ud800\udc00", "é\ud83d"])
def test_text_with_lone_surrogates_round_trips(text):
    assert decode(encode(("#RETURN", [text, {"k": [text]}]))) == ["#RETURN", [text, {"k": [text]}]]


@pytest.mark.parametrize("key", ["\ud800", "x\udfff"])
def test_a_lone_surrogate_in_a_key_round_trips(key):
    """A task file's {"\\ud800": 1} in a task's arguments: its lease must still be sent."""
    leased = ("#RETURN", ([tuple(Task(0, "t", "echo", [{key: 1}], {key: key}, None))],
                          "run"))
    assert decode(encode(leased)) == as_lists(leased)


@pytest.mark.parametrize("code, data", [
    (codec.EXT_BIGINT, b"\x01" * (codec.MAX_BIGINT_BYTES + 1)),    # past 4300 digits
    (codec.EXT_BIGINT, b"\x01" * 8),                               # one msgpack carries itself
    (7, b"x"),                                                    # a type this wire has not
], ids=["huge int", "short int", "unknown type"])
def test_extensions_this_wire_does_not_send_are_malformed(code, data):
    with pytest.raises(ProtocolViolation, match="malformed message"):
        decode(MAGIC + msgspec.msgpack.encode(msgspec.msgpack.Ext(code, data)))


@pytest.mark.parametrize("value", [ValueError("x"), object(), Task, Reduces(os.system, "true")],
                         ids=lambda v: type(v).__name__)
def test_only_plain_data_is_sent(value):
    with pytest.raises(TypeError):
        encode(("#RETURN", value))


# -- errors cross as data -----------------------------------------------------------------

class LocalError(Exception):
    pass


@pytest.mark.parametrize("exc", [
    ValueError("malformed outcome"), KeyError("w-1"), FileNotFoundError(2, "gone", "/x"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ExceptionGroup("two", [ValueError(1), TypeError(2)]), UnknownTask("nope"), LocalError("x"),
    SystemExit(0), KeyboardInterrupt(),
], ids=lambda e: type(e).__name__)
def test_any_exception_crosses_as_its_name_and_text_never_as_an_object(exc):
    kind, error = codec.reply_from_wire(decode(encode(error_reply(exc, "Traceback ...\n"))))
    assert kind == "#ERROR" and type(error) is RemoteCallError
    assert (error.type_name, error.message, error.traceback) == \
        (type(exc).__name__, str(exc), "Traceback ...\n")
    assert str(error) == f"{type(exc).__name__}: {exc}"


def test_an_error_reply_clips_long_texts():
    kind, (name, message, traceback) = error_reply(ValueError("x" * 10 ** 6), "t" * 10 ** 6)
    assert kind == "#ERROR" and name == "ValueError"
    assert 64 * 1024 <= len(message) < 65 * 1024 and 64 * 1024 <= len(traceback) < 65 * 1024


@pytest.mark.parametrize("reply", [
    ["#ERROR", "just text"], ["#ERROR", ["ValueError"]], ["#ERROR", ["ValueError", 5]],
    ["#ERROR", ["a", "b", "c", "d"]], ["#RETURN"], ("#RETURN", None, None), [5, None], "x",
], ids=repr)
def test_a_malformed_reply_is_a_violation(reply):
    with pytest.raises(ProtocolViolation, match="malformed reply"):
        codec.reply_from_wire(reply)


def test_a_violation_is_a_procfleet_error_exiting_2():
    assert issubclass(ProtocolViolation, ProcfleetError)
    assert issubclass(OldWireFormat, ProtocolViolation)
    assert ProtocolViolation.exit_code == EXIT_USAGE == 2


@pytest.mark.parametrize("data", [
    MAGIC, MAGIC + b"\x93\x01", MAGIC + b"\xc1", MAGIC + b"\x92\x01\x02\x03",
    MAGIC + b"\xdd\xff\xff\xff\xff",
], ids=["empty body", "truncated", "reserved byte", "trailing data", "huge array header"])
def test_malformed_messages_are_violations_not_eof(data):
    with pytest.raises(ProtocolViolation, match="malformed message"):
        decode(data)


@pytest.mark.parametrize("data", [b"", b"garbage\x00\xff", b"Vnot the magic\n."])
def test_what_is_not_a_message_is_a_violation(data):
    with pytest.raises(ProtocolViolation, match="not a procfleet message"):
        decode(data)


def test_peer_text_in_a_violation_is_clipped_to_one_line():
    with pytest.raises(ProtocolViolation) as info:
        decode(protocol0_call("os\u2028" + "x" * 5000, "system", "true"))
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)
    assert "\u2028" not in str(info.value)
    with pytest.raises(ProtocolViolation) as info:
        decode(MAGIC + msgspec.msgpack.encode(msgspec.msgpack.Ext(7, b"\n" * 10 ** 6)))
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)


# -- connections --------------------------------------------------------------------------

@pytest.fixture
def pair():
    a, b = socket.socketpair()
    left, right = SafeConnection(a.detach()), SafeConnection(b.detach())
    yield left, right
    left.close()
    right.close()


def test_connections_carry_messages_both_ways(pair):
    left, right = pair
    for message in PROTOCOL_MESSAGES:
        left.send(message)
        assert right.recv_message() == as_lists(message)
        right.send(message)
        assert left.recv_message() == as_lists(message)


def test_recv_gives_replies_and_an_error_reply_as_remote_call_error(pair):
    left, right = pair
    left.send(("#RETURN", {"state": "run"}))
    assert right.recv() == ("#RETURN", {"state": "run"})
    left.send(error_reply(UnknownTask("nope"), "Traceback ...\n"))
    kind, error = right.recv()
    assert kind == "#ERROR" and isinstance(error, RemoteCallError)
    assert (error.type_name, error.message, error.traceback) == \
        ("UnknownTask", "nope", "Traceback ...\n")
    left.send(("7f3a2b1c", "ping", (), {}))              # a request is not a reply
    with pytest.raises(ProtocolViolation, match="malformed reply"):
        right.recv()


def test_oversized_message_is_refused_without_reading_it(pair, monkeypatch):
    left, right = pair
    monkeypatch.setattr(codec, "MAX_MESSAGE", 1024)
    left.send(("#RETURN", "x" * 900))
    assert right.recv() == ("#RETURN", "x" * 900)
    left.send(("#RETURN", "x" * 2000))
    with pytest.raises(ProtocolViolation, match="larger than"):
        right.recv()
    assert right.closed         # the stream is out of step: the connection is over


def test_a_refused_message_closes_the_connection(pair, tmp_path, no_unpickling):
    left, right = pair
    left.send_bytes(pickle.dumps(Reduces(os.system, f"touch {tmp_path / 'pwned'}"), protocol=4))
    with pytest.raises(OldWireFormat):
        right.recv()
    assert right.closed
    assert not (tmp_path / "pwned").exists()


def test_a_negative_length_header_is_a_violation(pair):
    left, right = pair
    os.write(left.fileno(), struct.pack("!i", -16) + b"junk")
    with pytest.raises(ProtocolViolation):
        right.recv()
    assert right.closed
