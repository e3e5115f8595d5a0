"""Decoding manager messages without trusting the peer: pickle limited to an allow-list.

Stock multiprocessing unpickles whatever an authenticated peer sends, and a pickle can name any
importable callable (`os.system`) and call it. Everything procfleet sends, in both directions, is
builtin containers and scalars, which the unpickler builds without looking up any global; the
only globals the stock manager protocol needs are exception classes, for '#ERROR' replies
(`Server.serve_client` sends the exception a served method raised). Tokens are built client-side,
'#PROXY' replies are never sent (no typeid has method_to_typeid), so nothing else is allowed.
"""

import builtins
import copyreg
import io
import pickle
import pickletools
from multiprocessing import connection

from .errors import ProcfleetError

#: the largest message either side accepts; a whole exchange batch is far smaller
MAX_MESSAGE = 64 * 1024 * 1024
#: pickle protocol for everything sent; 3.11-3.13 all read it
PICKLE_PROTOCOL = 5

#: ("builtins", name) -> class: the builtin exceptions a '#ERROR' reply may carry. Only Exception
#: subclasses: serve_client catches `Exception`, so a SystemExit or KeyboardInterrupt on the wire
#: can only come from a hostile peer, and raising it would end the caller.
ALLOWED_GLOBALS = {
    ("builtins", name): obj for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception)
}

_EXTENSION_OPCODES = frozenset({"EXT1", "EXT2", "EXT4"})


class ProtocolViolation(ProcfleetError):
    """A peer sent a message this side refuses to decode: a forbidden global, garbage, too big."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ALLOWED_GLOBALS.

    Every way a pickle names a global (GLOBAL, STACK_GLOBAL, INST, OBJ, and EXT1/2/4 codes
    not yet in copyreg's cache) goes through find_class. Persistent ids and out-of-band buffers
    are refused by the base class, as neither a `persistent_load` nor `buffers` is given.
    """

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise ProtocolViolation(
                f"forbidden global {_clip(module)}.{_clip(name)} in a message: only builtin "
                "exceptions may cross the wire"
            ) from None


def decode(data) -> object:
    """Unpickle one message with the allow-list; ProtocolViolation if it breaks the rules."""
    if copyreg._extension_cache:
        # The C unpickler takes an extension code it has seen before from copyreg's cache
        # without asking find_class. procfleet registers none, so this is only ever non-empty
        # if some other code in the process did: then no message may use one.
        _refuse_extension_codes(data)
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except ProtocolViolation:
        raise
    except Exception as exc:
        raise _malformed(exc) from None


def encode(obj) -> bytes:
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


def allowed_exception(exc: BaseException) -> bool:
    """True if the peer will decode `exc`: its class, and whatever it holds, are allowed."""
    try:
        decode(encode(exc))
    except Exception:        # ProtocolViolation, or exc does not even pickle
        return False
    return True


def _refuse_extension_codes(data) -> None:
    try:
        for opcode, arg, _pos in pickletools.genops(bytes(data)):
            if opcode.name in _EXTENSION_OPCODES:
                module, name = copyreg._inverted_registry.get(arg, ("?", "?"))
                raise ProtocolViolation(
                    f"forbidden global {_clip(module)}.{_clip(name)} in a message (copyreg "
                    f"extension code {arg}): extension codes are not used on the wire")
    except ProtocolViolation:
        raise
    except Exception as exc:
        raise _malformed(exc) from None


def _malformed(exc: Exception) -> ProtocolViolation:
    return ProtocolViolation(f"malformed message: {type(exc).__name__}: {_clip(str(exc), 200)}")


def _clip(text: str, limit: int = 100) -> str:
    """Peer-chosen text as it may go into a log line: short, on one line."""
    return text if len(text) <= limit and text.isprintable() else repr(text[:limit])


class SafeConnection(connection.Connection):
    """A manager connection whose recv() decodes with the allow-list, capped at MAX_MESSAGE.

    A message that is refused leaves the stream at an unknown point (an oversized one is not
    even read), so the connection is closed before ProtocolViolation is raised.
    """

    def send(self, obj) -> None:
        self._check_closed()
        self._check_writable()
        self._send_bytes(encode(obj))

    def recv(self):
        self._check_closed()
        self._check_readable()
        buf = self._recv_bytes(MAX_MESSAGE)
        try:
            if buf is None:
                raise ProtocolViolation(
                    f"message larger than the limit of {MAX_MESSAGE} bytes (MAX_MESSAGE)")
            return decode(buf.getvalue())
        except ProtocolViolation:
            self.close()
            raise
