"""The message format on the manager connection: MessagePack (msgspec), plain data only.

Stock multiprocessing pickles every message, and unpickling what a peer sent can call code,
build objects with any fields (an exception whose fields crash CPython when printed) and cost
memory out of all proportion to the bytes (a 9-byte memo index, 1-byte empty lists). procfleet
sends MessagePack instead, with msgspec: its decoder builds only None, bool, int, float, str,
list and dict, in time and memory linear in the message, and the master decodes each request
against a typed schema (procfleet.master.schemas), so a call of the wrong shape is refused
while it is being decoded, before any object is built for the rest.

Each message is MAGIC + a MessagePack body. MAGIC is also a complete protocol-0 pickle of a
short text, so a master of the old pickle wire that gets a message of this one decodes that
text, refuses it as "not a request" and logs it, in one line, naming what happened; its
pickled reply is recognised here by its first byte (OldWireFormat), never decoded.

Errors cross as data: a '#ERROR' reply carries (type name, message, traceback text), turned
into a RemoteCallError on the caller's side. Ints beyond 64 bits and text with lone surrogates
(both can come from a JSON task file) travel as two extension types.
"""

import re
from typing import Any

import msgspec

from .compat import Connection
from .errors import ProcfleetError

#: the largest message either side accepts; a whole exchange batch is far smaller
MAX_MESSAGE = 64 * 1024 * 1024
#: this wire's version; it moves with the manager protocol (manager.PROTOCOL_VERSION)
WIRE_VERSION = 4
#: what a master of the old (pickle) wire logs when a message of this one reaches it
OLD_PEER_TEXT = f"a procfleet msgpack wire ({WIRE_VERSION}) message from a newer release"
#: every message starts with this: a protocol-0 pickle of OLD_PEER_TEXT (UNICODE, STOP)
MAGIC = b"V" + OLD_PEER_TEXT.encode("ascii") + b"\n."
_OTHER_WIRE = re.compile(rb"Va procfleet msgpack wire \((\d{1,6})\)")
#: the first byte of every pickle of protocol 2 or later: what the old wire sent
PICKLE_PROTO = 0x80

#: extension types: an int beyond MessagePack's 64 bits (signed big-endian bytes), and text
#: holding lone surrogates (UTF-8 with surrogatepass)
EXT_BIGINT = 1
EXT_TEXT = 2
#: the longest int an extension may carry: 4,300 digits, Python's own limit for int(str)
MAX_BIGINT_BYTES = 1800


class ProtocolViolation(ProcfleetError):
    """A peer sent a message this side refuses to decode: garbage, a wrong shape, too big."""


class OldWireFormat(ProtocolViolation):
    """The peer speaks the pickle wire of procfleet before wire 4, or another msgpack wire."""


class RemoteCallError(ProcfleetError):
    """The master refused a call or failed serving it: (type name, message, traceback)."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message, self.traceback = type_name, message, traceback


def _ext_hook(code: int, data: memoryview):
    if code == EXT_BIGINT and 8 < len(data) <= MAX_BIGINT_BYTES:
        return int.from_bytes(data, "big", signed=True)
    if code == EXT_TEXT:
        return bytes(data).decode("utf-8", "surrogatepass")
    raise ValueError(f"extension type {code} of {len(data)} bytes is not used on this wire")


class _ExtKey:
    """An extension as a dict key (msgspec's Ext is unhashable); _enc_hook sends its Ext."""

    __slots__ = ("ext",)

    def __init__(self, ext: msgspec.msgpack.Ext) -> None:
        self.ext = ext


def _enc_hook(obj):
    if type(obj) is _ExtKey:
        return obj.ext
    raise TypeError(f"Encoding objects of type {type(obj).__name__} is unsupported")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_any_decoder = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def encode(obj) -> bytes:
    """MAGIC + `obj` as MessagePack; tuples go as arrays. TypeError if it is not plain data."""
    try:
        return MAGIC + _encoder.encode(obj)
    except (OverflowError, UnicodeEncodeError):
        return MAGIC + _encoder.encode(_with_extensions(obj))


def _with_extensions(obj, depth: int = 0):
    """`obj` with big ints and surrogate-holding text as extensions (the rare, slow path)."""
    kind = type(obj)
    if kind is int:
        if -2 ** 63 <= obj < 2 ** 64:
            return obj
        size = (obj.bit_length() + 8) // 8
        return msgspec.msgpack.Ext(EXT_BIGINT, obj.to_bytes(size, "big", signed=True))
    if kind is str:
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return msgspec.msgpack.Ext(EXT_TEXT, obj.encode("utf-8", "surrogatepass"))
        return obj
    if depth > 1000:
        raise ValueError("nested too deeply to send")
    if isinstance(obj, (tuple, list)):
        return [_with_extensions(item, depth + 1) for item in obj]
    if kind is dict:
        return {_key(_with_extensions(key, depth + 1)): _with_extensions(value, depth + 1)
                for key, value in obj.items()}
    return obj


def _key(key):
    return _ExtKey(key) if type(key) is msgspec.msgpack.Ext else key


def check_frame(data) -> memoryview:
    """The MessagePack body of a message; ProtocolViolation (OldWireFormat) if there is none."""
    view = memoryview(data)
    if view[:len(MAGIC)] == MAGIC:
        return view[len(MAGIC):]
    if view[:1] == bytes([PICKLE_PROTO]):
        raise OldWireFormat("the peer speaks the pickle wire of procfleet before wire "
                            f"{WIRE_VERSION}; this side speaks msgpack wire {WIRE_VERSION}")
    other = _OTHER_WIRE.match(bytes(view[:64]))
    if other:
        raise OldWireFormat(f"the peer speaks procfleet msgpack wire {int(other[1])}; this side "
                            f"speaks wire {WIRE_VERSION}")
    raise ProtocolViolation(f"not a procfleet message: it starts with {bytes(view[:16])!r}")


def decode(data, decoder: msgspec.msgpack.Decoder = _any_decoder) -> Any:
    """One message, decoded by `decoder` (plain data by default); ProtocolViolation if it is
    not one this side accepts."""
    body = check_frame(data)
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, ValueError, RecursionError, MemoryError) as exc:
        raise malformed(exc) from None


def malformed(exc: Exception) -> ProtocolViolation:
    if isinstance(exc, RecursionError):
        return ProtocolViolation("malformed message: nested too deeply")
    return ProtocolViolation(f"malformed message: {clip(str(exc), 200)}")


def clip(text: str, limit: int = 100) -> str:
    """Peer-chosen text as it may go into a log line: short, on one line."""
    return text if len(text) <= limit and text.isprintable() else repr(text[:limit])


def error_reply(exc: BaseException, traceback: str = "") -> tuple:
    """The '#ERROR' reply for `exc`: its type's name, its message, a traceback text or ''."""
    return "#ERROR", (type(exc).__name__, clip_text(str(exc)), clip_text(traceback))


def clip_text(text: str, limit: int = 64 * 1024) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def reply_from_wire(msg):
    """A reply as BaseProxy and managers.dispatch expect it: '#ERROR' holds an exception.

    Only the kinds a procfleet master sends pass: BaseProxy._callmethod would take a '#PROXY'
    reply for a token of its manager's registry, and dispatch asserts that a traceback is text.
    """
    if type(msg) is not list or len(msg) != 2 or type(msg[0]) is not str:
        raise ProtocolViolation(f"malformed reply: not (kind, value) but "
                                f"{type(msg).__name__}")
    kind, value = msg
    if kind == "#ERROR":
        if (type(value) is not list or not 2 <= len(value) <= 3
                or not all(type(part) is str for part in value)):
            raise ProtocolViolation("malformed reply: an error is (type, message, traceback)")
        return kind, RemoteCallError(*value)
    if kind in ("#TRACEBACK", "#UNSERIALIZABLE"):
        if type(value) is not str:
            raise ProtocolViolation(f"malformed reply: {kind} carries text, not "
                                    f"{type(value).__name__}")
    elif kind != "#RETURN":
        raise ProtocolViolation(f"malformed reply: {clip(kind, 40)} is not a kind of reply")
    return kind, value


class SafeConnection(Connection):
    """A manager connection that sends and receives this wire's messages, each at most
    MAX_MESSAGE bytes.

    `recv()` returns a peer's reply (the client's side); a refused message leaves the stream
    at an unknown point (an oversized one is not even read), so the connection is closed
    before ProtocolViolation is raised.
    """

    def send(self, obj) -> None:
        self.send_bytes(encode(obj))

    def recv_message(self, decoder: msgspec.msgpack.Decoder = _any_decoder):
        """The next message, decoded by `decoder`."""
        buf = self.recv_frame(MAX_MESSAGE)
        try:
            if buf is None:
                raise ProtocolViolation(
                    f"message larger than the limit of {MAX_MESSAGE} bytes (MAX_MESSAGE)")
            return decode(buf.getbuffer(), decoder)
        except ProtocolViolation:
            self.close()
            raise

    def recv(self):
        return reply_from_wire(self.recv_message())
