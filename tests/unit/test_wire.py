"""The wire decoder: protocol messages round-trip; code-running pickles are refused, not run."""

import copyreg
import io
import os
import pickle
import socket
import subprocess
import sys

import pytest

from procfleet.shared import wire
from procfleet.shared.errors import EXIT_USAGE, ProcfleetError, UnknownTask
from procfleet.shared.records import Outcome, Task, outcome_to_wire, task_to_wire
from procfleet.shared.wire import ProtocolViolation, SafeConnection, decode, encode

#: what manager.Server and BaseProxy send each other in a procfleet session (3.11-3.13)
PROTOCOL_MESSAGES = [
    (None, "dummy", (), {}),
    (None, "create", ("dispatcher",), {}),
    (None, "accept_connection", ("MainProcess|worker-3",), {}),
    (None, "decref", ("7f3a2b1c",), {}),
    ("7f3a2b1c", "hello", ("w-3f2a", {"protocol": 1, "python": "3.12.1", "concurrency": 4}), {}),
    ("7f3a2b1c", "exchange",
     ("w-3f2a", [outcome_to_wire(Outcome(3, "ok", {"a": [1, 2.5, None, True]}, None)),
                 outcome_to_wire(Outcome(4, "error", None, "RuntimeError: kaput"))], 32, 1.0),
     {}),
    ("7f3a2b1c", "goodbye", ("w-3f2a",), {}),
    ("7f3a2b1c", "ping", (), {}),
    ("#RETURN", None),
    ("#RETURN", ("7f3a2b1c", ("hello", "exchange", "goodbye", "ping"))),
    ("#RETURN", ([task_to_wire(Task(0, "t0", "square", [3], {"x": "é"}, 2.5))], "run")),
    ("#RETURN", {"state": "stop", "total": 10, "done": 10, "workers": 2}),
    ("#TRACEBACK", "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n"),
    ("#UNSERIALIZABLE", "Traceback ...\n"),
]


def protocol0_call(module: str, name: str, *args: str) -> bytes:
    """A hand-written pickle that calls module.name(*args) when loaded: an attacker's bytes."""
    return (f"c{module}\n{name}\n(" + "".join(f"V{a}\n" for a in args) + "tR.").encode()


class Reduces:
    """Pickles (with the current protocol) as a call of `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker) -> dict[str, tuple[bytes, str]]:
    """name -> (pickle that would create `marker`, the global it names)."""
    touch = f"touch {marker}"
    return {
        "os.system": (protocol0_call("os", "system", touch), "os.system"),
        "posix.system": (pickle.dumps(Reduces(os.system, touch), protocol=4), "posix.system"),
        "builtins.eval": (pickle.dumps(Reduces(eval, f"open({str(marker)!r}, 'w').close()"),
                                       protocol=5), "builtins.eval"),
        "subprocess.Popen": (pickle.dumps(Reduces(subprocess.Popen, ["touch", str(marker)]),
                                          protocol=4), "subprocess.Popen"),
        "in a request": (pickle.dumps(("7f3a2b1c", "exchange",
                                       ("w-1", [Reduces(os.system, touch)], 1, 0.0), {}),
                                      protocol=5), "posix.system"),
    }


def run_payload(data: bytes) -> None:
    result = pickle.loads(data)
    if isinstance(result, subprocess.Popen):
        result.wait(10)


@pytest.mark.parametrize("name", ["os.system", "posix.system", "builtins.eval", "subprocess.Popen",
                                  "in a request"])
def test_the_payloads_are_live_with_stock_pickle(tmp_path, name):
    """The control: unpickled the stock way, each payload does create the marker file."""
    marker = tmp_path / "pwned"
    run_payload(payloads(marker)[name][0])
    assert marker.exists()


@pytest.mark.parametrize("name", ["os.system", "posix.system", "builtins.eval", "subprocess.Popen",
                                  "in a request"])
def test_code_running_pickles_are_refused_naming_the_global(tmp_path, name):
    marker = tmp_path / "pwned"
    data, global_name = payloads(marker)[name]
    with pytest.raises(ProtocolViolation, match=rf"forbidden global {global_name}\b"):
        decode(data)
    assert not marker.exists()


@pytest.fixture
def extension_code():
    """copyreg extension code 240 registered for os.system, and removed again afterwards."""
    code = 240
    copyreg.add_extension("os", "system", code)
    yield code
    copyreg.remove_extension("os", "system", code)
    copyreg.clear_extension_cache()


def ext1_call(code: int, arg: str) -> bytes:
    """EXT1 code, then the call: names os.system without spelling it out."""
    return b"\x80\x02\x82" + bytes([code]) + b"X" + len(arg).to_bytes(4, "little") \
        + arg.encode() + b"\x85R."


def test_an_extension_code_is_refused(tmp_path, extension_code):
    marker = tmp_path / "pwned"
    with pytest.raises(ProtocolViolation, match=r"forbidden global os\.system\b"):
        decode(ext1_call(extension_code, f"touch {marker}"))
    assert not marker.exists()


def test_an_extension_code_already_in_copyregs_cache_is_refused(tmp_path, extension_code):
    """The C unpickler takes a cached code without asking find_class: decode must not let it."""
    assert pickle.loads(b"\x80\x02\x82" + bytes([extension_code]) + b".") is os.system
    assert copyreg._extension_cache            # the cache now holds os.system
    marker = tmp_path / "pwned"
    with pytest.raises(ProtocolViolation, match=r"forbidden global os\.system\b"):
        decode(ext1_call(extension_code, f"touch {marker}"))
    assert not marker.exists()
    run_payload(ext1_call(extension_code, f"touch {marker}"))      # the control
    assert marker.exists()


@pytest.mark.parametrize("message", PROTOCOL_MESSAGES, ids=lambda m: str(m[1])[:20])
def test_protocol_messages_round_trip(message):
    assert decode(encode(message)) == message


def test_plain_messages_never_look_up_a_global(monkeypatch):
    def no_globals(self, module, name):
        raise AssertionError(f"find_class({module!r}, {name!r})")

    monkeypatch.setattr(wire.RestrictedUnpickler, "find_class", no_globals)
    for message in PROTOCOL_MESSAGES:
        assert decode(encode(message)) == message
        assert decode(pickle.dumps(message, protocol=4)) == message   # what 3.11-3.13 send


@pytest.mark.parametrize("exc", [
    ValueError("malformed outcome"), KeyError("w-1"), FileNotFoundError(2, "gone", "/x"),
    ZeroDivisionError(), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ExceptionGroup("two", [ValueError(1), TypeError(2)]),
], ids=lambda e: type(e).__name__)
def test_builtin_exceptions_round_trip_in_error_replies(exc):
    kind, decoded = decode(encode(("#ERROR", exc)))
    assert kind == "#ERROR" and type(decoded) is type(exc)
    assert repr(decoded.args) == repr(exc.args) and str(decoded) == str(exc)


def test_an_exception_note_comes_along():
    exc = ValueError("x")
    exc.add_note("while leasing")
    assert decode(encode(exc)).__notes__ == ["while leasing"]


class LocalError(Exception):
    pass


@pytest.mark.parametrize("exc, name", [
    (UnknownTask("nope"), "procfleet.shared.errors.UnknownTask"),
    (LocalError("x"), f"{__name__}.LocalError"),
    (SystemExit(0), "builtins.SystemExit"),            # raising it would end the caller
    (KeyboardInterrupt(), "builtins.KeyboardInterrupt"),
    (ValueError(LocalError("inside")), f"{__name__}.LocalError"),
], ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_other_exceptions_are_refused(exc, name):
    with pytest.raises(ProtocolViolation, match=rf"forbidden global {name}\b"):
        decode(encode(("#ERROR", exc)))
    assert wire.allowed_exception(exc) is False


def test_allow_list_is_builtin_exception_classes_only():
    assert wire.allowed_exception(ValueError()) and wire.allowed_exception(OSError())
    assert all(module == "builtins" and isinstance(obj, type) and issubclass(obj, Exception)
               for (module, _name), obj in wire.ALLOWED_GLOBALS.items())
    for module, name in [("builtins", "eval"), ("builtins", "getattr"), ("builtins", "object"),
                         ("builtins", "BaseException"), ("copyreg", "_reconstructor"),
                         ("builtins", "ValueError.__init__")]:
        with pytest.raises(ProtocolViolation):
            wire.RestrictedUnpickler(io.BytesIO()).find_class(module, name)


def test_a_violation_is_a_procfleet_error_exiting_2():
    assert issubclass(ProtocolViolation, ProcfleetError)
    assert ProtocolViolation.exit_code == EXIT_USAGE == 2


@pytest.mark.parametrize("data", [b"", b"\x80\x05", b"garbage\x00\xff", b"\x80\x05]\x94(K\x01",
                                  b"\x80\x05P0\n.", b"\x80\x05\x97."],
                         ids=["empty", "truncated", "garbage", "unterminated", "persistent-id",
                              "out-of-band-buffer"])
def test_malformed_messages_are_violations_not_eof(data):
    with pytest.raises(ProtocolViolation, match="malformed message"):
        decode(data)


def test_peer_text_in_a_violation_is_clipped_to_one_line():
    with pytest.raises(ProtocolViolation) as info:
        decode(protocol0_call("os\u2028" + "x" * 5000, "system", "true"))
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)
    assert "\u2028" not in str(info.value)


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
        assert right.recv() == message
        right.send(message)
        assert left.recv() == message


def test_oversized_message_is_refused_without_reading_it(pair, monkeypatch):
    left, right = pair
    monkeypatch.setattr(wire, "MAX_MESSAGE", 1024)
    left.send(("#RETURN", "x" * 900))
    assert right.recv() == ("#RETURN", "x" * 900)
    left.send(("#RETURN", "x" * 2000))
    with pytest.raises(ProtocolViolation, match="larger than"):
        right.recv()
    assert right.closed         # the stream is out of step: the connection is over


def test_a_refused_message_closes_the_connection(pair, tmp_path):
    left, right = pair
    left.send_bytes(protocol0_call("os", "system", f"touch {tmp_path / 'pwned'}"))
    with pytest.raises(ProtocolViolation, match="forbidden global os.system"):
        right.recv()
    assert right.closed
    assert not (tmp_path / "pwned").exists()


def test_a_negative_length_header_is_a_violation(pair):
    left, right = pair
    os.write(left.fileno(), b"\xff\xff\xff\xf0" + b"junk")
    with pytest.raises(ProtocolViolation, match="malformed message"):
        right.recv()


def test_sending_uses_a_protocol_every_supported_python_reads():
    assert wire.PICKLE_PROTOCOL <= 5 and sys.version_info >= (3, 11)
    assert encode(None)[:2] == b"\x80" + bytes([wire.PICKLE_PROTOCOL])
