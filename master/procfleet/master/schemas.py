"""The shapes of the requests the master accepts, as msgspec schemas it decodes them with.

A request is (ident, name, args, kwds). Its args are decoded against the schema of `name`
only once the envelope has been decoded, so a request of the wrong shape is refused while
it is decoded: nothing is built for a field that has no place in it, every list has its length
checked from its header before it is read, and no nested value is decoded at all (a task's
result arrives as JSON text, checked by protocol.check_outcomes). A text is built whole before
its length is checked; the master counts what that takes (connections.DECODE_EXPANSION). What the schemas
cannot say (a printable worker id, a seq below the batch's size) the service checks.
"""

from typing import Annotated, Any, Literal

import msgspec

from procfleet.shared.manager import DISPATCHER
from procfleet.shared.protocol import (MAX_ERROR_CHARS, MAX_NAME, MAX_OUTCOMES,
                                      MAX_RESULT_BYTES, MAX_TASK_BYTES, MAX_WIRE_INT,
                                      MAX_WORKER_ID, OUTCOME_KINDS)

#: the longest `wait` an exchange may ask for (the service caps it at MAX_LONG_POLL anyway)
MAX_WAIT = 3600.0
#: at most this many entries in a worker's `hello` info
MAX_INFO_ITEMS = 32

WorkerId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_WORKER_ID)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_WIRE_INT - 1)]
Kind = Literal[OUTCOME_KINDS]        # type: ignore[valid-type]
ResultText = Annotated[str, msgspec.Meta(max_length=MAX_RESULT_BYTES)]
ErrorText = Annotated[str, msgspec.Meta(max_length=MAX_ERROR_CHARS)]
Outcome = tuple[Count, Kind, ResultText | None, ErrorText | None]
Info = Annotated[dict[Name, Name | int | float | bool | None],
                 msgspec.Meta(max_length=MAX_INFO_ITEMS)]
Cursor = tuple[Name, Count, Count]
Wait = Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT)]
Seqs = Annotated[list[Count], msgspec.Meta(max_length=MAX_OUTCOMES)]
#: a job's options (service.JobService.job_open checks names and ranges)
JobOptions = Annotated[dict[Name, Name | int | float | None], msgspec.Meta(max_length=16)]
#: task lines of one job_put (service.MAX_PUT, checked there too)
TaskLines = Annotated[list[Annotated[str, msgspec.Meta(max_length=MAX_TASK_BYTES)]],
                      msgspec.Meta(max_length=10_000)]
NoKeywords = Annotated[dict[str, Any], msgspec.Meta(max_length=0)]

#: (ident, name, args, kwds); args stay encoded until `name` says what they should be
Envelope = tuple[Name | None, Name, msgspec.Raw, NoKeywords]

#: the arguments of each request a connection may open with
OPENING_ARGS = {
    "dummy": tuple[()],
    "create": tuple[Literal[DISPATCHER]],     # type: ignore[valid-type]
    "accept_connection": tuple[Name],
}
#: the arguments of each dispatcher method (DISPATCHER_METHODS)
CALL_ARGS = {
    "hello": tuple[WorkerId, Info],
    "exchange": tuple[WorkerId, Name, Annotated[list[Outcome],
                                                msgspec.Meta(max_length=MAX_OUTCOMES)],
                      Count, Wait, Cursor, Count],
    "release": tuple[WorkerId, Seqs],
    "goodbye": tuple[WorkerId],
    "ping": tuple[()],
    "status": tuple[()],
    # a client's job (procfleet.master.service)
    "job_open": tuple[JobOptions],
    "job_put": tuple[Name, TaskLines, bool, Wait],
    "job_results": tuple[Name, Count, Wait],
    "job_cancel": tuple[Name, Annotated[list[Count], msgspec.Meta(max_length=100_000)]],
    "job_close": tuple[Name],
}

ENVELOPE = msgspec.msgpack.Decoder(Envelope)
OPENING = {name: msgspec.msgpack.Decoder(args) for name, args in OPENING_ARGS.items()}
CALLS = {name: msgspec.msgpack.Decoder(args) for name, args in CALL_ARGS.items()}


class Refused(ValueError):
    """A request this master does not take: the reason is for the log and the peer."""


def decode_args(decoders: dict, name: str, raw: msgspec.Raw, what: str) -> tuple:
    """The arguments of request `name`, decoded with its schema; Refused if there is none or
    they do not fit it."""
    decoder = decoders.get(name)
    if decoder is None:
        raise Refused(f"{_shown(name)} is not {what} ({', '.join(decoders)})")
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise Refused(f"{name}() arguments: {exc}") from None
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise Refused(f"{name}() arguments are malformed: {str(exc)[:200]}") from None


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:60] + "...")
