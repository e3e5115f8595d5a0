"""One attempt at a task, in this process: whatever a task returns or raises ends as exactly one
outcome that pickle (the child's pipe), the wire and the master's checks all carry: an ok value
as its JSON text, an error as UTF-8 safe text, both within the size limits."""

import json
import pickle

import msgspec
import pytest
from hypothesis import example, given, settings, strategies as st
from strategies import ANY_CHAR

from procfleet.master import schemas
from procfleet.shared import codec, protocol
from procfleet.shared.protocol import ERROR, MAX_DEPTH, MAX_ERROR_CHARS, OK, Outcome, Task
from procfleet.shared.tasks import TaskRegistry
from procfleet.worker import taskproc

#: results here are limited to this many bytes of JSON (patched into records), so that results
#: just under and just over the limit are cheap to make; more than the longest int JSON can carry
#: (4,300 digits)
SMALL_LIMIT = 8192
#: what `expected` says of a value JSON cannot carry
NOT_JSON = object()


def returns(value):
    return value


def raises(exc: BaseException):
    raise exc


REGISTRY = TaskRegistry()
REGISTRY.register(returns)
REGISTRY.register(raises)


def nested(depth: int, leaf) -> list:
    """`leaf` inside `depth` lists (no recursion, so any depth)."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value) -> int:
    """How deeply lists and dicts nest in `value` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1)
                         for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def same(a, b) -> bool:
    """Equal and of the same types all the way down (True is not 1, 0.0 is not -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


def expected(value):
    """`value` as it reads back from JSON, or NOT_JSON if JSON cannot carry it."""
    try:
        back = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return NOT_JSON
    return back if depth_of(back) <= MAX_DEPTH else NOT_JSON


def round_trips(outcome: tuple) -> bool:
    record = Outcome(*outcome)
    return pickle.loads(pickle.dumps(record)) == record \
        and pickle.loads(pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)) == outcome


#: how the master decodes one outcome of an exchange (schemas.CALL_ARGS)
OUTCOME = msgspec.msgpack.Decoder(schemas.Outcome)


def master_accepts(outcome: tuple) -> bool:
    """Whether the outcome, sent as the worker sends it, decodes against the master's schema
    unchanged and passes its check (protocol.check_outcomes raises if not)."""
    sent = tuple(outcome[:4])
    got = codec.decode(codec.encode(sent), OUTCOME)
    protocol.check_outcomes([got], outcome[0] + 1)
    return got == sent


def utf8_safe(text: str) -> str:
    """`text` with each lone surrogate written as its escape (\\ud800), as errors are sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
texts = st.text(ANY_CHAR, max_size=20) | st.text(surrogate, min_size=1, max_size=3)
json_scalars = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False) | texts)
awkward_scalars = (
    st.floats()                                               # NaN and infinities too
    | st.builds(lambda d, sign: sign * 10 ** d, st.integers(4200, 4400), st.sampled_from([1, -1]))
    | st.integers(SMALL_LIMIT - 8, SMALL_LIMIT + 8).map(lambda n: "y" * n)   # at the size limit
    | st.integers(SMALL_LIMIT // 3 - 4, SMALL_LIMIT // 3 + 4).map(lambda n: "\ud800" * n)
    | st.binary(max_size=8)
    | st.sets(st.integers(), max_size=3) | st.frozensets(st.integers(), max_size=3)
)
keys = st.text(ANY_CHAR, max_size=8) | st.integers() | st.booleans() | st.none() | st.floats() \
    | st.tuples(st.integers())                                # JSON cannot have this key
values = st.recursive(
    json_scalars | awkward_scalars,
    lambda children: (st.lists(children, max_size=4) | st.lists(children, max_size=4).map(tuple)
                      | st.dictionaries(keys, children, max_size=4)),
    max_leaves=20)
task_results = values | st.builds(nested, st.integers(1, 3000), values)


@settings(max_examples=400, deadline=None)
@given(task_results)
@example("\ud800\udc00")                            # a surrogate pair: JSON reads back "\U00010000"
@example(["\ud800", {"\udfff": "\ud800\udc00"}])
@example(10 ** 5000)
@example(nested(150, 1))
@example(float("nan"))
@example(2 ** 62)
def test_whatever_a_task_returns_ends_as_one_outcome_json_and_pickle_carry(value):
    want = expected(value)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(protocol, "MAX_RESULT_BYTES", SMALL_LIMIT)
        outcome = taskproc._attempt(REGISTRY, 7, "returns", [value], {})
    assert type(outcome) is tuple and len(outcome) == 5 and outcome[0] == 7
    _, kind, got, error, size = outcome
    if kind == OK:
        assert want is not NOT_JSON and error is None and type(got) is str
        back = json.loads(got)
        assert same(back, want) and depth_of(back) <= MAX_DEPTH
        assert size == len(got.encode("utf-8")) and 0 < size <= SMALL_LIMIT
    else:
        assert kind == ERROR and got is None and size == len(error) <= MAX_ERROR_CHARS
        if error.startswith("ResultTooLarge: task 'returns' returned too much: "):
            assert want is not NOT_JSON and len(json.dumps(value)) > SMALL_LIMIT
        else:
            assert error.startswith("ResultNotJSON: task 'returns' returned a value that JSON "
                                    "cannot carry: ")
            assert want is NOT_JSON
    if want is not NOT_JSON and len(json.dumps(value)) <= SMALL_LIMIT:
        assert kind == OK
    assert round_trips(outcome) and master_accepts(outcome)


class StrRaises(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")


messages = texts | st.integers(0, 3 * MAX_ERROR_CHARS).map(lambda n: "m" * n)
exception_types = st.sampled_from([ValueError, RuntimeError, KeyError, RecursionError,
                                   MemoryError, SystemExit, KeyboardInterrupt, StrRaises])


@settings(max_examples=200, deadline=None)
@given(exception_types, messages)
def test_whatever_a_task_raises_ends_as_one_error_within_max_error_chars(exc_type, message):
    exc = exc_type(message)
    outcome = taskproc._attempt(REGISTRY, 3, "raises", [exc], {})
    assert type(outcome) is tuple and len(outcome) == 5 and outcome[:3] == (3, ERROR, None)
    error, size = outcome[3], outcome[4]
    shown = exc_type.__name__ if exc_type.__module__ == "builtins" else \
        f"{exc_type.__module__}.{exc_type.__qualname__}"      # as Python prints it
    assert error.startswith(f"{shown}: ") and size == len(error) <= MAX_ERROR_CHARS
    text = utf8_safe("<exception str() failed>" if exc_type is StrRaises else str(exc))
    assert error.encode("utf-8")
    if len(text) > MAX_ERROR_CHARS // 4:
        assert "clipped: " in error and error.startswith(f"{shown}: {text[:100]}")
    else:
        assert error.startswith(f"{shown}: {text}\n\nTraceback")
    assert round_trips(outcome) and master_accepts(outcome)


def test_a_hundred_megabyte_message_becomes_a_clipped_error():
    outcome = taskproc.run_task(REGISTRY, Task(0, "big", "raises", [ValueError("x" * 10**8)], {}))
    assert outcome.kind == ERROR and len(outcome.error) <= MAX_ERROR_CHARS
    assert outcome.error.startswith("ValueError: xxxx")
    assert "clipped: 100,000,000 characters" in outcome.error     # the message, clipped alone
    assert "Traceback (most recent call last)" in outcome.error
    assert outcome.size == len(outcome.error)


def test_clip_error_keeps_both_ends_and_says_how_long_it_was():
    text = "head" + "-" * 1000 + "tail"
    clipped = taskproc.clip_error(text, 200)
    assert len(clipped) <= 200 and clipped.startswith("head") and clipped.endswith("tail")
    assert "clipped: 1,008 characters" in clipped
    assert taskproc.clip_error(text, len(text)) is text
