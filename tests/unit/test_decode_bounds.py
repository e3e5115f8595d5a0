"""What a hostile peer's message can cost the master: decode memory and CPU time against its size.

Every message goes through `master_decode`, which does what MasterServer._receive and the
service do with one request: the envelope, the args against the schema of the name (as an
opening request and as a dispatcher call), and check_outcomes for an exchange. Its peak traced
memory must stay within PEAK_PER_BYTE x the message + PEAK_FIXED, and its CPU time linear in the
message. The old pickle wire failed exactly this: 9 bytes (memo index 2**28) took the master to
4 GiB, 24 MiB of EMPTY_LIST opcodes to 2.1 GiB, 560 KB of colliding dict keys froze it 20 s.

Run with -s for the table of measured peaks per hostile shape (the release note's figures).
"""

import _pickle
import pickle
import struct
import threading
import time
import tracemalloc
from typing import NamedTuple

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from procfleet.master import connections, schemas
from procfleet.master.admission import ByteBudget
from procfleet.shared import codec, protocol
from procfleet.shared.protocol import MAX_OUTCOMES, MAX_WIRE_INT
from procfleet.shared.codec import MAGIC, OldWireFormat, ProtocolViolation

#: peak traced memory <= PEAK_PER_BYTE x message bytes + PEAK_FIXED. Measured worst (Python
#: 3.11, msgspec 0.23): 28.3x for one 1 MiB result '["\U0001F600",[],[],...]' (check_result_text's
#: regexes make one str per "[]" of a text held at 4 bytes a character); 24.3x for
#: '[[[1]],[[1]],...]'; 16.5x for an exchange of 65,536 minimal outcomes [0, "ok", "12", "34"]
#: (an 88-byte tuple and two 51-byte str per 11 bytes); whatever msgspec refuses while decoding
#: stays under 0.02x. The stock pickle decoder: 64x (empty lists), 477 million x (memo index).
PEAK_PER_BYTE = 32
#: tracemalloc's own bookkeeping and an exception or two; measured at most ~2 KiB
PEAK_FIXED = 64 * 1024
#: CPU time (untraced) <= TIME_PER_BYTE x bytes + TIME_PER_OUTCOME x outcomes checked
#: + TIME_FIXED. Measured worst: ~3 ns/byte for what msgspec decodes and refuses; 73 ns/byte
#: for bracket-dense valid results, which check_result_text goes through with regexes
#: (one pass each); ~4 us an outcome for 65,536 small ones. Generous on purpose (the
#: figures move 2x between runs on a shared 2-core machine): this is about a freeze (the old
#: wire's 20 s), not a benchmark.
TIME_PER_BYTE = 300e-9
TIME_PER_OUTCOME = 20e-6
TIME_FIXED = 0.05

# No example database (it would be a .hypothesis/ folder in the work tree).
BOUNDED = settings(deadline=None, database=None, max_examples=40,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.large_base_example])

#: shape name -> (worst peak multiple, its message size, worst CPU ns/byte, largest peak), over
#: messages of TABLE_SIZE bytes or more (below that, PEAK_FIXED is all there is); printed at the end
TABLE: dict[str, tuple[float, int, float, int]] = {}
TABLE_SIZE = 64 * 1024


# --- what the master does with one message, and what that costs ------------------------------


VERDICTS = ("accepted", "checked and refused", "Refused", "ProtocolViolation", "OldWireFormat")


class Verdict(NamedTuple):
    outcome: str        # "accepted", "checked and refused", or the refusal's exception class
    outcomes: int       # how many outcomes check_outcomes went through


def master_decode(data, seq_limit: int = MAX_WIRE_INT) -> Verdict:
    """What the master does with one request's bytes: MasterServer._receive (envelope, then the
    args against the schema of the name, tried as an opening request and as a dispatcher call),
    then for an exchange whose args decoded the service's check_outcomes. Refusals are verdicts;
    anything else raised is a bug."""
    try:
        _ident, name, raw, _kwds = codec.decode(data, schemas.ENVELOPE)
    except ProtocolViolation as exc:            # OldWireFormat is one
        return Verdict(type(exc).__name__, 0)
    verdict = Verdict("Refused", 0)
    for decoders, what in ((schemas.OPENING, "a request a connection may open with"),
                           (schemas.CALLS, "a dispatcher method")):
        try:
            args = schemas.decode_args(decoders, name, raw, what)
        except schemas.Refused:
            continue
        if decoders is schemas.CALLS and name == "exchange":
            outcomes = args[2]
            try:
                protocol.check_outcomes(outcomes, seq_limit)
            except (ValueError, TypeError):
                return Verdict("checked and refused", len(outcomes))
            return Verdict("accepted", len(outcomes))
        verdict = Verdict("accepted", 0)
    return verdict


class Cost(NamedTuple):
    verdict: object
    peak: int           # bytes, the traced peak above what was allocated before the call
    cpu: float          # seconds of this process's CPU time, in a second call, untraced


def measure(func, data) -> Cost:
    """`func(data)`'s peak traced memory, and its CPU time in a second call without tracing
    (tracemalloc slows allocation-heavy Python code several times over)."""
    outer = tracemalloc.is_tracing()        # PYTHONTRACEMALLOC: keep the caller's tracing on
    if not outer:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        verdict = func(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not outer:
            tracemalloc.stop()
    start = time.process_time()
    func(data)
    return Cost(verdict, peak - before, time.process_time() - start)


def assert_bounded(shape: str, data: bytes, time_per_byte: float = None) -> Verdict:
    """master_decode(data) within the memory and time bounds; its row goes into TABLE."""
    time_per_byte = time_per_byte or TIME_PER_BYTE
    cost = measure(master_decode, data)
    size = len(data)
    memory_limit = PEAK_PER_BYTE * size + PEAK_FIXED
    time_limit = (time_per_byte * size + TIME_PER_OUTCOME * cost.verdict.outcomes
                  + TIME_FIXED)
    multiple, ns_per_byte = cost.peak / max(size, 1), cost.cpu / max(size, 1) * 1e9
    if size >= TABLE_SIZE:
        worst = TABLE.get(shape, (0.0, 0, 0.0, 0))
        TABLE[shape] = (*max(worst[:2], (multiple, size)), max(worst[2], ns_per_byte),
                        max(worst[3], cost.peak))
    assert cost.peak <= memory_limit, (
        f"{shape}: {size:,} bytes ({cost.verdict}) peaked at {cost.peak:,} bytes traced, "
        f"{multiple:.1f}x; the bound is {PEAK_PER_BYTE}x + {PEAK_FIXED:,}")
    assert cost.cpu <= time_limit, (
        f"{shape}: {size:,} bytes ({cost.verdict}) took {cost.cpu:.3f} s of CPU, "
        f"{ns_per_byte:.0f} ns/byte; the bound is {time_limit:.3f} s")
    return cost.verdict


@pytest.fixture(scope="module", autouse=True)
def warm_up():
    """Decode one small exchange of every hostile text once, untraced, before anything is
    measured: what a process pays once (the regular expressions' caches, a first deep match)
    is not a cost per message. Seen as a 300 KB peak on the first 8 KB exchange of a run."""
    master_decode(exchange_with([[seq, "ok", make(256), None]
                                 for seq, make in enumerate(HOSTILE_JSON.values())]))
    for make in HOSTILE_JSON.values():
        master_decode(exchange_with([[0, "ok", make(4096), None]]))


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    if TABLE:
        print("\n\nmaster decode: worst peak traced memory per hostile shape "
              f"(bound {PEAK_PER_BYTE}x + {PEAK_FIXED // 1024} KiB)")
        print(f"  {'shape (messages of 64 KiB or more)':<50} {'peak/bytes':>10} {'at bytes':>12} "
              f"{'max peak':>12} {'CPU ns/byte':>11}")
        for shape, (multiple, size, ns, peak) in sorted(TABLE.items(),
                                                       key=lambda row: -row[1][0]):
            print(f"  {shape:<50} {multiple:>9.2f}x {size:>12,} {peak:>12,} {ns:>11.1f}")


# --- hand-written MessagePack ------------------------------------------------------------------


def array_header(count: int) -> bytes:
    return b"\xdd" + struct.pack(">I", count)


def map_header(count: int) -> bytes:
    return b"\xdf" + struct.pack(">I", count)


def str_header(size: int) -> bytes:
    return b"\xdb" + struct.pack(">I", size)


def ext_header(code: int, size: int) -> bytes:
    return b"\xc9" + struct.pack(">Ib", size, code)


#: ints hashing alike (hash(k * (2**61 - 1)) == 0): every one that fits in MessagePack's uint64
COLLIDING_INTS = [k * (2 ** 61 - 1) for k in range(1, 9)]

#: hostile MessagePack values: name -> function of a size (items, bytes or levels) -> bytes
SHAPES = {
    "array claiming 2**32-1 items": lambda n: b"\xdd\xff\xff\xff\xff" + b"\xc0" * 8,
    "map claiming 2**32-1 pairs": lambda n: b"\xdf\xff\xff\xff\xff" + b"\xa0\xc0" * 4,
    "str claiming 2**32-1 bytes": lambda n: b"\xdb\xff\xff\xff\xff" + b"x" * 8,
    "bin claiming 2**32-1 bytes": lambda n: b"\xc6\xff\xff\xff\xff" + b"x" * 8,
    "ext claiming 2**32-1 bytes": lambda n: ext_header(codec.EXT_TEXT, 2 ** 32 - 1) + b"x" * 8,
    "ext bigint, n bytes": lambda n: ext_header(codec.EXT_BIGINT, n) + b"\x7f" * n,
    "ext text, n bytes": lambda n: ext_header(codec.EXT_TEXT, n) + b"\xed\xa0\x80" * (n // 3),
    "ext of an unused code": lambda n: ext_header(7, n) + b"\x00" * n,
    "arrays nested n deep": lambda n: b"\x91" * n + b"\xc0",
    "maps nested n deep": lambda n: b"\x81\xa0" * n + b"\xc0",
    "n empty arrays": lambda n: array_header(n) + b"\x90" * n,
    "n empty maps": lambda n: array_header(n) + b"\x80" * n,
    "n 1-char strings": lambda n: array_header(n) + b"\xa1x" * n,
    "map of n equal keys": lambda n: map_header(n) + b"\xa0\xc0" * n,
    "map of n colliding int keys": lambda n: map_header(n) + b"".join(
        b"\xcf" + struct.pack(">Q", COLLIDING_INTS[i % 8]) + b"\xc0" for i in range(n)),
    "str of n bytes": lambda n: str_header(n) + b"x" * n,
    "str of n astral bytes": lambda n: str_header(n // 4 * 4) + "\U0001F600".encode() * (n // 4),
    "str of invalid UTF-8": lambda n: str_header(n) + b"\xff" * n,
    "ints at the 64-bit edges": lambda n: b"\x95\xd3\x80" + b"\x00" * 7 + b"\xcf" + b"\xff" * 8
    + b"\xd3" + b"\x7f" + b"\xff" * 7 + b"\xff\xcf\x80" + b"\x00" * 7,
    "float nan, inf": lambda n: b"\x92\xcb" + struct.pack(">d", float("nan")) + b"\xcb"
    + struct.pack(">d", float("inf")),
    "truncated array": lambda n: b"\x93\xc0",
}

#: a valid request of each kind the master takes, as the worker's BaseProxy sends it
TEMPLATES = {
    "dummy": [None, "dummy", [], {}],
    "create": [None, "create", ["dispatcher"], {}],
    "accept_connection": [None, "accept_connection", ["MainProcess|worker-3"], {}],
    "hello": ["7f3a2b1c", "hello",
              ["w-3f2a", {"protocol": 5, "python": "3.12.1", "concurrency": 4,
                          "load": 0.5, "draining": False, "session": None}], {}],
    "exchange": ["7f3a2b1c", "exchange",
                 ["w-3f2a", "batch-1",
                  [[0, "ok", '{"a":[1,2.5,null,true]}', None],
                   [1, "error", None, "RuntimeError: kaput"]], 32, 1.0, ["s-1", 3, 2], 7], {}],
    "release": ["7f3a2b1c", "release", ["w-3f2a", [1, 2, 3]], {}],
    "goodbye": ["7f3a2b1c", "goodbye", ["w-3f2a"], {}],
    "ping": ["7f3a2b1c", "ping", [], {}],
    "status": ["7f3a2b1c", "status", [], {}],
}


def paths(node, prefix=()):
    """Every position in a request: the whole message, each field, each nested value."""
    yield prefix
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from paths(item, prefix + (index,))
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from paths(item, prefix + (key,))


POSITIONS = [(name, path) for name, template in TEMPLATES.items() for path in paths(template)]


def request_with(name: str, path: tuple, value: bytes) -> bytes:
    """The request `name` with the MessagePack `value` at `path`, on the wire."""
    if not path:
        return MAGIC + value
    message = msgspec.msgpack.decode(msgspec.msgpack.encode(TEMPLATES[name]))   # a deep copy
    node = message
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = msgspec.Raw(value)
    return MAGIC + msgspec.msgpack.encode(message)


def exchange_with(outcomes: list) -> bytes:
    return MAGIC + msgspec.msgpack.encode(
        ["7f3a2b1c", "exchange", ["w-3f2a", "batch-1", outcomes, 32, 1.0, ["s-1", 3, 2], 7], {}])


# --- the measurement itself ----------------------------------------------------------------------


def test_tracemalloc_sees_what_msgspec_builds():
    """The positive control: a big valid list decoded by msgspec shows up in full."""
    items = 10 ** 6
    data = msgspec.msgpack.encode(list(range(1000, 1000 + items)))
    cost = measure(msgspec.msgpack.decode, data)
    assert cost.peak >= items * (8 + 28)        # a pointer and an int object per item
    assert len(cost.verdict) == items


def test_the_bound_catches_a_decoder_without_schemas():
    """The same bound fails an untyped decoder fed the cheapest hostile shape, and the stock
    pickle decoder fed its own (so a regression to either would fail these tests)."""
    data = SHAPES["n empty arrays"](2 ** 18)
    untyped = measure(msgspec.msgpack.decode, data)
    assert untyped.peak > PEAK_PER_BYTE * len(data) + PEAK_FIXED
    bomb = empty_lists_pickle(2 ** 18)
    unpickled = measure(pickle.loads, bomb)
    assert unpickled.peak > PEAK_PER_BYTE * len(bomb) + PEAK_FIXED


def test_every_template_is_accepted():
    """Each template is a valid request, so a refusal below is the hostile value's doing."""
    for name, template in TEMPLATES.items():
        assert master_decode(MAGIC + msgspec.msgpack.encode(template)) == \
            Verdict("accepted", 2 if name == "exchange" else 0), name


# --- (a) arbitrary bytes -------------------------------------------------------------------------


def mutated(template: str, start: int, junk: bytes) -> bytes:
    body = msgspec.msgpack.encode(TEMPLATES[template])
    start %= len(body) + 1
    return MAGIC + body[:start] + junk + body[start + len(junk):]


@BOUNDED
@given(st.one_of(
    st.binary(max_size=4096),
    st.binary(max_size=4096).map(lambda data: MAGIC + data),
    st.builds(mutated, st.sampled_from(sorted(TEMPLATES)), st.integers(0, 300),
              st.binary(min_size=1, max_size=16))))
@example(b"")
@example(MAGIC)
@example(b"\x80")
@example(b"Va procfleet msgpack wire (3) message from an older release\n.")
def test_arbitrary_bytes_are_refused_or_accepted_within_bounds(data):
    assert assert_bounded("arbitrary bytes", data).outcome in VERDICTS


# --- (b) adversarial but valid MessagePack -------------------------------------------------------

#: sizes for the systematic sweep: items and bytes, and levels of nesting
SWEEP_SIZE = 2 ** 17
SWEEP_DEPTH = 100_000


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_hostile_shape_in_every_position_of_every_request(shape):
    """Every shape, in place of every field and nested value of every request, and as the whole
    message: refused or accepted, within the bounds."""
    value = SHAPES[shape](SWEEP_DEPTH if "deep" in shape else SWEEP_SIZE)
    for name, path in POSITIONS:
        verdict = assert_bounded(shape, request_with(name, path, value))
        assert verdict.outcome in VERDICTS, (name, path)


@BOUNDED
@given(shape=st.sampled_from(sorted(SHAPES)), position=st.sampled_from(POSITIONS),
       size=st.integers(0, 2 ** 20), depth=st.integers(1000, 100_000))
def test_hostile_shapes_of_any_size_anywhere(shape, position, size, depth):
    value = SHAPES[shape](depth if "deep" in shape else size)
    assert_bounded(shape, request_with(*position, value))


#: the outcome with the most object per byte: [seq 0..127, "ok", 2-char text, 2-char text]
MINIMAL_OUTCOME = [0, "ok", "12", "34"]


@pytest.mark.parametrize("outcome", [MINIMAL_OUTCOME, [0, "ok", "1", None],
                                     [300, "ok", "12", "34"], [0, "error", None, "ab"],
                                     [0, "ok", "", None], [0, "crash", None, None]],
                         ids=["ok 2 texts", "ok 1 char", "seq 300", "error", "empty text",
                              "crash"])
def test_an_exchange_of_the_most_outcomes_allowed(outcome):
    """65,536 of the cheapest outcomes: the densest objects-per-byte a valid call can hold."""
    verdict = assert_bounded(f"exchange: {MAX_OUTCOMES:,} x {outcome}",
                             exchange_with([outcome] * MAX_OUTCOMES))
    assert verdict.outcomes == MAX_OUTCOMES


#: hostile JSON result texts: name -> function of a size in characters -> text
HOSTILE_JSON = {
    "[ x n": lambda n: "[" * n,
    "{ x n": lambda n: '{"":' * (n // 4),
    "[ x n/2 ] x n/2": lambda n: "[" * (n // 2) + "]" * (n // 2),
    "100 deep, repeated": lambda n: "[" + ",".join(["[" * 99 + "]" * 99] * max(1, n // 199)) + "]",
    "[[[1]]], repeated": lambda n: "[" + "[[1]]," * (n // 6) + "1]",
    "digits": lambda n: "1" * max(1, n),
    "number with long exponent": lambda n: "-0." + "9" * (n // 2) + "e" + "9" * (n // 2),
    "\\n escapes": lambda n: '"' + "\\n" * (n // 2) + '"',
    "\\ud800 escapes": lambda n: '"' + "\\ud800" * (n // 6) + '"',
    "\\ud800 escapes, unclosed": lambda n: '"' + "\\ud800" * (n // 6),
    "astral text": lambda n: '"' + "\U0001F600" * (n // 4) + '"',
    "astral then [": lambda n: "\U0001F600" + "[" * n,
    "astral, brackets": lambda n: '["\U0001F600",' + "[]," * (n // 3) + "1]",
    "quotes and backslashes": lambda n: '"\\' * (n // 2),
    "strings in brackets": lambda n: "[" * (n // 4) + '"]"' * (n // 4),
}
@settings(BOUNDED, max_examples=20)
@given(texts=st.lists(st.sampled_from(sorted(HOSTILE_JSON)), min_size=1, max_size=4),
       count=st.sampled_from([1, 2, 4096, MAX_OUTCOMES]), total=st.integers(1024, 2 ** 20),
       error=st.booleans())
@example(texts=["100 deep, repeated", "\\n escapes"], count=2, total=15300, error=False)
def test_exchange_with_hostile_result_texts(texts, count, total, error):
    """Up to 65,536 ok outcomes whose results are hostile JSON texts (also as error texts)."""
    made = [HOSTILE_JSON[text](max(1, total // count)) for text in texts]
    outcomes = [[seq, "ok", made[seq % len(made)], made[0][:protocol.MAX_ERROR_CHARS] if error
                 else None] for seq in range(count)]
    shape = texts[0] if len(set(texts)) == 1 else "mixed"
    assert_bounded(f"{count:,} results: {shape}", exchange_with(outcomes), TIME_PER_BYTE)


@pytest.mark.parametrize("text", sorted(HOSTILE_JSON))
def test_one_big_hostile_result_text(text):
    """One result text of 1 MiB of each hostile kind."""
    data = exchange_with([[0, "ok", HOSTILE_JSON[text](2 ** 20), None]])
    assert_bounded(f"1 MiB result: {text}", data, TIME_PER_BYTE)


def test_nesting_is_checked_in_one_pass():
    """A result text too deep costs about what a shallow one of the same size costs (a ratio,
    so that the speed of the machine does not matter). It was 20x with up to MAX_DEPTH
    str.replace passes over the text (5-18 s of CPU, GIL held, for 16-64 MiB); one regex
    match now."""
    size = 2 * 2 ** 20
    deep = measure(master_decode, exchange_with([[0, "ok", "[" * size, None]])).cpu
    shallow = measure(master_decode, exchange_with([[0, "ok", "[]" * (size // 2), None]])).cpu
    assert deep <= 5 * shallow + TIME_FIXED, f"{deep:.2f} s deep, {shallow:.2f} s shallow"


# --- (c) the old pickle bombs -----------------------------------------------------------------


def memo_pickle(index: int) -> bytes:
    """9 bytes: PROTO 5, NONE, LONG_BINPUT index, STOP. The unpickler grows its memo to
    2 x index slots: 4 GiB for 2**28."""
    return b"\x80\x05Nr" + struct.pack("<I", index) + b"."


def empty_lists_pickle(count: int) -> bytes:
    """PROTO 5, `count` x EMPTY_LIST, STOP: ~64 bytes of stack and list per byte."""
    return b"\x80\x05" + b"]" * count + b"."


def colliding_dict_pickle(count: int, colliding: bool = True) -> bytes:
    """PROTO 5, EMPTY_DICT, MARK, `count` x (LONG1 k*(2**61-1), NONE), SETITEMS, STOP: every
    key hashes to 0, so building the dict is quadratic (with keys k, it is not)."""
    step = 2 ** 61 - 1 if colliding else 1
    items = b"".join(b"\x8a\x0b" + (k * step).to_bytes(11, "little", signed=True) + b"N"
                     for k in range(1, count + 1))
    return b"\x80\x05}(" + items + b"u."


def test_the_pickle_bombs_are_live_with_stock_pickle():
    """The control, at sizes this test can afford: stock pickle.loads pays for each bomb."""
    assert measure(pickle.loads, memo_pickle(2 ** 20)).peak >= 2 ** 20 * 8       # 16 MiB
    bomb = empty_lists_pickle(2 ** 16)
    assert measure(pickle.loads, bomb).peak > PEAK_PER_BYTE * len(bomb) + PEAK_FIXED
    colliding = measure(pickle.loads, colliding_dict_pickle(4000))
    distinct = measure(pickle.loads, colliding_dict_pickle(4000, colliding=False))
    assert len(colliding.verdict) == len(distinct.verdict) == 4000
    assert colliding.cpu > 10 * distinct.cpu          # quadratic: measured ~60x at 4,000 keys


OLD_BOMBS = {
    "pickle: memo index 2**28 (4 GiB)": memo_pickle(2 ** 28),
    "pickle: 4 MiB of EMPTY_LIST (256 MiB)": empty_lists_pickle(4 * 2 ** 20),
    "pickle: 45,000 colliding int keys (16 s)": colliding_dict_pickle(45_000),
}


@pytest.mark.parametrize("name", OLD_BOMBS)
def test_the_old_pickle_bombs_are_refused_unread(name, monkeypatch):
    """Each bomb is refused as the old wire from its first byte, never unpickled."""
    def never(*args, **kwargs):
        raise AssertionError("a message was unpickled")
    for module in (pickle, _pickle):
        for attr in ("loads", "load", "Unpickler"):
            monkeypatch.setattr(module, attr, never)
    bomb = OLD_BOMBS[name]
    assert assert_bounded(name, bomb) == Verdict("OldWireFormat", 0)
    with pytest.raises(OldWireFormat, match="pickle wire"):
        codec.decode(bomb, schemas.ENVELOPE)


# --- what decoding one large message takes on top of its buffer -------------------------------

LONG_TEXTS = {
    "ascii": "x" * 2 ** 20,
    "latin-1, 2 bytes a character": "\u00e9" * 2 ** 19,
    "cjk, 3 bytes a character": "\u4e2d" * (2 ** 20 // 3),
    "one character beyond the BMP, then ascii": "\U0001F600" + "x" * 2 ** 20,
}


def decode_under_the_budget(data) -> tuple:
    """What MasterServer._receive does with a message while it holds the decode budget."""
    _ident, name, raw, _kwds = codec.decode(data, schemas.ENVELOPE)
    decoders = schemas.OPENING if name in schemas.OPENING else schemas.CALLS
    try:
        return schemas.decode_args(decoders, name, raw, "a request")
    except schemas.Refused:
        return ()


@pytest.mark.parametrize("kind", sorted(LONG_TEXTS))
@pytest.mark.parametrize("request_", ["accept_connection: refused, over 256 characters",
                                      "job_put: accepted, a task line of up to 16 MiB"])
def test_decoding_a_long_text_takes_at_most_DECODE_EXPANSION_times_its_message(kind, request_):
    """msgspec builds a text whole before it checks its length, at 4 bytes a character once one
    character is beyond the BMP (from a 1-byte draft): the master's budget counts a large
    message at its size, plus DECODE_EXPANSION x one message's size being decoded on top."""
    text = LONG_TEXTS[kind]
    if request_.startswith("accept_connection"):
        data = codec.encode((None, "accept_connection", (text,), {}))
    else:
        data = codec.encode((None, "job_put", ("1-abc", [text], False, 0.0), {}))
    cost = measure(decode_under_the_budget, data)
    assert cost.peak <= connections.DECODE_EXPANSION * len(data) + PEAK_FIXED, (
        f"{kind}: {cost.peak / len(data):.2f}x its message")
    if kind.startswith("one character beyond"):      # the factor is needed, not a guess
        assert cost.peak >= (connections.DECODE_EXPANSION - 1) * len(data)


# --- the byte budget for large messages ------------------------------------------------------


class SignallingCondition(threading.Condition):
    """A Condition that tells which threads have started waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited: set[int] = set()
        self._seen = threading.Condition()

    def wait(self, timeout=None):
        with self._seen:
            self.waited.add(threading.get_ident())
            self._seen.notify_all()
        return super().wait(timeout)

    def until_waiting(self, count: int) -> bool:
        with self._seen:
            return self._seen.wait_for(lambda: len(self.waited) >= count, 10)


def test_a_message_larger_than_the_budget_is_refused_at_once():
    budget = ByteBudget(100)
    start = time.monotonic()
    assert budget.acquire(101, timeout=5) is False
    assert time.monotonic() - start < 1 and budget.used == 0
    assert budget.acquire(100, timeout=0) is True and budget.used == 100


def test_a_waiter_times_out_and_a_later_one_is_admitted_after_a_release():
    budget = ByteBudget(100)
    assert budget.acquire(70, timeout=0)
    assert budget.acquire(40, timeout=0.05) is False        # times out: 70 + 40 > 100
    assert budget.used == 70
    budget._cond = SignallingCondition()
    admitted = []
    waiter = threading.Thread(target=lambda: admitted.append(budget.acquire(40, timeout=60)))
    waiter.start()
    assert budget._cond.until_waiting(1)         # it is waiting, not yet admitted
    assert admitted == [] and budget.used == 70
    budget.release(70)
    waiter.join(10)
    assert admitted == [True] and budget.used == 40 and budget.peak == 70


def test_concurrent_acquires_never_exceed_the_limit():
    """8 threads take 30 of 100 bytes each and hold them: 3 get in, 5 wait; once the holders
    let go, all 8 get their turn, never more than 100 bytes held at once."""
    budget, threads, size = ByteBudget(100), 8, 30
    budget._cond = SignallingCondition()
    state = threading.Condition()
    held, most, inside, admitted = [0], [0], [0], []
    gate = threading.Event()

    def holder():
        ok = budget.acquire(size, timeout=30)
        with state:
            held[0] += size
            most[0] = max(most[0], held[0])
            inside[0] += 1
            state.notify_all()
        gate.wait(30)
        with state:
            held[0] -= size
        budget.release(size)
        admitted.append(ok)

    pool = [threading.Thread(target=holder) for _ in range(threads)]
    for thread in pool:
        thread.start()
    with state:
        assert state.wait_for(lambda: inside[0] >= 3, 10)
    assert budget._cond.until_waiting(threads - 3)
    assert inside[0] == 3 and held[0] == budget.used == 90
    gate.set()
    for thread in pool:
        thread.join(30)
    assert admitted == [True] * threads
    assert most[0] <= 100 and budget.peak == 90 and budget.used == 0
