"""Wire records: what crosses the manager connection, as plain tuples of JSON values.

Only builtin types travel, so any Python 3.11-3.13 on either side decodes them and the wire
never needs a procfleet class to be importable on the other end. Tasks are addressed on the wire
by `seq`, their position in the batch; the user's `id` travels along for logs and results.
"""

import functools
import json
import re
from json.encoder import encode_basestring
from typing import Any, NamedTuple

import msgspec

#: how one attempt at a task ended, as the worker reports it
OK = "ok"            # returned a JSON value
ERROR = "error"      # raised; the master may retry it (--retries)
TIMEOUT = "timeout"  # ran past its timeout and was killed; final
CRASH = "crash"      # the process running it died; counts as a lost attempt (--max-attempts)
OUTCOME_KINDS = (OK, ERROR, TIMEOUT, CRASH)

# -- sizes: every message fits the wire's cap (codec.MAX_MESSAGE, 64 MiB) whatever tasks hold ----
#: arrays and objects nested deeper than this in task arguments or results are refused
MAX_DEPTH = 100
#: the longest task line a task file may hold (its arguments travel in one lease)
MAX_TASK_BYTES = 16 * 1024 * 1024
#: a lease carries tasks whose lines add up to at most this (but always at least one task)
LEASE_BYTES = 4 * 1024 * 1024
#: a task line up to this long counts as this long when a lease is measured
SMALL_TASK_BYTES = 1024
#: the largest result, as JSON text, a task may return; a larger one fails ResultTooLarge
MAX_RESULT_BYTES = 16 * 1024 * 1024
#: one exchange carries outcomes adding up to at most this (but always at least one)
RESULT_BATCH_BYTES = 16 * 1024 * 1024
#: a failed task's error text is clipped to this many characters
MAX_ERROR_CHARS = 64 * 1024

# -- what one call from a worker may carry: checked whole before the master acts on any of it --
#: outcomes in one exchange, or seqs in one release (a worker holds at most a few thousand)
MAX_OUTCOMES = 65_536
#: a worker id is printable text of 1 to this many characters (it goes into log lines)
MAX_WORKER_ID = 128
#: the longest batch id, session or text value in a worker's `hello` info
MAX_NAME = 256
#: counts on the wire (call numbers, `want`) are below this
MAX_WIRE_INT = 2 ** 63


class Task(NamedTuple):
    """A task as the master leases it."""

    seq: int
    id: str | int      # as the task file gave it: a JSON string or integer
    name: str
    args: list
    kwargs: dict
    timeout: float | None = None   # seconds; None: no limit


class Outcome(NamedTuple):
    """What a worker reports for one attempt at a task: (seq, kind, value, error text).

    On the wire an ok outcome's value is its JSON text (result_text), which the master checks
    (check_result_text) and writes as it is; in the master's own calls it may be the value."""

    seq: int
    kind: str
    value: Any
    error: str | None
    size: int = 0      # the worker's estimate of its bytes on the wire; never sent

    @property
    def ok(self) -> bool:
        return self.kind == OK


def task_from_wire(item) -> Task:
    """A leased task: the six fields of a Task, as the master sends them (checked by length only)."""
    if len(item) != len(Task._fields):
        raise ValueError(f"a task has {len(Task._fields)} fields, got {len(item)}")
    return tuple.__new__(Task, item)


def check_worker_id(worker_id) -> None:
    """ValueError unless `worker_id` is printable text of 1 to MAX_WORKER_ID characters."""
    if type(worker_id) is not str or not 0 < len(worker_id) <= MAX_WORKER_ID \
            or not worker_id.isprintable():
        raise ValueError(f"a worker id is printable text of 1-{MAX_WORKER_ID} characters, "
                         f"not {describe(worker_id)}")


def check_name(what: str, value) -> None:
    """ValueError unless `value` is printable text of at most MAX_NAME characters."""
    if type(value) is not str or len(value) > MAX_NAME or not value.isprintable():
        raise ValueError(f"{what} is printable text of at most {MAX_NAME} characters, "
                         f"not {describe(value)}")


def check_count(what: str, value, limit: int = MAX_WIRE_INT) -> None:
    """ValueError unless `value` is an int (not a bool) in [0, limit)."""
    if type(value) is not int:
        raise TypeError(f"{what} is an int, not {describe(value)}")
    if not 0 <= value < limit:
        raise ValueError(f"{what} is an int from 0 to {limit - 1}, not {describe(value)}")


def check_outcomes(outcomes, seq_limit: int) -> None:
    """ValueError unless `outcomes` is a list of at most MAX_OUTCOMES well-formed outcome
    tuples (seq, kind, value, error): seq an int in [0, seq_limit), kind one of
    OUTCOME_KINDS, error None or text of at most MAX_ERROR_CHARS, value None unless kind is
    ok, and an ok value the JSON text of one value (check_result_text).

    This runs for every result, so the common case is one pass of type checks, the texts are
    checked together (results_text_ok) and the reason is worked out only for a refusal."""
    if type(outcomes) is not list:
        raise TypeError(f"outcomes are a list, not {describe(outcomes)}")
    if len(outcomes) > MAX_OUTCOMES:
        raise ValueError(f"{len(outcomes):,} outcomes in one call; the limit is "
                         f"{MAX_OUTCOMES:,} (MAX_OUTCOMES)")
    if not outcomes or _outcomes_ok(outcomes, seq_limit):
        return
    kinds, limit = _KINDS, MAX_ERROR_CHARS
    for item in outcomes:
        if type(item) is not tuple or len(item) != 4:
            break
        seq, kind, value, error = item
        if (type(seq) is not int or not 0 <= seq < seq_limit or type(kind) is not str
                or kind not in kinds
                or (error is not None and (type(error) is not str or len(error) > limit))):
            break
        if kind == OK:
            if type(value) is not str or check_result_text(value) is not None:
                break
        elif value is not None:
            break
    else:
        raise AssertionError("check_outcomes: the fast check refused what the slow one took")
    index = next(i for i, other in enumerate(outcomes) if other is item)
    raise ValueError(f"outcome #{index}: {_outcome_fault(item, seq_limit)}")


_KINDS = frozenset(OUTCOME_KINDS)
_TUPLE, _INT, _STR_OR_NONE = {tuple}, {int}, {str, type(None)}


def _outcomes_ok(outcomes: list, seq_limit: int) -> bool:
    """check_outcomes' rules for a whole non-empty list at once, in passes that run in C
    (map, zip, set, min/max); False if any outcome breaks one, to be found one by one."""
    if set(map(type, outcomes)) != _TUPLE or set(map(len, outcomes)) != {4}:
        return False
    seqs, kinds, values, errors = zip(*outcomes)
    if (set(map(type, seqs)) != _INT or min(seqs) < 0 or max(seqs) >= seq_limit
            or not _KINDS.issuperset(kinds) or not _STR_OR_NONE.issuperset(map(type, errors))
            or not _STR_OR_NONE.issuperset(map(type, values))):
        return False
    if errors.count(None) != len(errors) and max(
            map(len, filter(None, errors)), default=0) > MAX_ERROR_CHARS:
        return False
    texts = [value for kind, value in zip(kinds, values) if kind == OK]
    return (None not in texts and values.count(None) == len(values) - len(texts)
            and results_text_ok(texts))


def _outcome_fault(item, seq_limit: int) -> str:
    """Why check_outcomes refused `item`."""
    if type(item) is not tuple or len(item) != 4:
        return f"not a (seq, kind, value, error) tuple: {describe(item)}"
    seq, kind, value, error = item
    if type(seq) is not int or not 0 <= seq < seq_limit:
        return f"seq is an int from 0 to {seq_limit - 1}, not {describe(seq)}"
    if type(kind) is not str or kind not in _KINDS:
        return f"kind is one of {', '.join(OUTCOME_KINDS)}, not {describe(kind)}"
    if error is not None and (type(error) is not str or len(error) > MAX_ERROR_CHARS):
        return (f"error is None or text of at most {MAX_ERROR_CHARS:,} characters, not "
                f"{describe(error)}")
    if kind != OK:
        return f"a {kind} outcome has no value, not {describe(value)}"
    if type(value) is not str:
        return f"an ok outcome's value is JSON text, not {describe(value)}"
    return f"its value is not the JSON text of one value: {check_result_text(value)}"


def describe(value) -> str:
    """A peer's value as it may go into a refusal: short, on one line, never its full text."""
    kind = type(value)
    if kind is str:
        return repr(value[:40]) + (f" ({len(value):,} characters)" if len(value) > 40 else "")
    if kind is int and value.bit_length() > 64:
        return f"an int of {value.bit_length():,} bits"
    if kind in (int, float, bool, type(None)):
        return repr(value)
    if kind in (tuple, list, dict, set, frozenset, bytes, bytearray):
        return f"a {kind.__name__} of {len(value):,} items"
    return f"a {kind.__name__}"


#: task names whose part of a result line a ResultLines keeps (a batch has a handful; a task
#: file naming each task differently gets its lines built without the cache past this many)
MAX_CACHED_NAMES = 1024


class ResultLines:
    """The one builder of result lines: a JSON Lines record per task id, built without a dict.

    Field order: id, task, status, result, error, attempts, worker. This runs once per task in
    the master, so it is a template around the parts that vary; each task name's part is built
    once and kept (up to MAX_CACHED_NAMES names). `tail(attempts, worker)` is the line's end,
    which the master builds once for all the results of one call from a worker.
    """

    __slots__ = ("_names",)

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def _name(self, name: str) -> str:
        part = self._names.get(name)
        if part is None:
            part = f',"task":{encode_basestring(name)},'
            if len(self._names) < MAX_CACHED_NAMES:
                self._names[name] = part
        return part

    @staticmethod
    def tail(attempts: int, worker: str | None) -> str:
        return f',"attempts":{attempts:d},"worker":{_str(worker)}}}'

    def ok_lines(self, tasks: list, texts: list[str], tail: str) -> list[str]:
        """The lines of ok results: `texts[i]` is checked JSON text (check_result_text) of the
        value `tasks[i]` returned. One call for a whole exchange: the per-task work is inline."""
        names, name_of = self._names, self._name
        lines = []
        for task, text in zip(tasks, texts):
            name = names.get(task[2]) or name_of(task[2])
            task_id = task[1]
            task_id = encode_basestring(task_id) if type(task_id) is str else _int_repr(task_id)
            line = f'{{"id":{task_id}{name}"status":"ok","result":{text},"error":null{tail}'
            lines.append(line if line.isascii() else utf8_safe(line))
        return lines

    def failed_line(self, task: Task, error: str | None, tail: str) -> str:
        return utf8_safe(f'{{"id":{encode_id(task[1])}{self._name(task[2])}"status":"failed",'
                         f'"result":null,"error":{_str(error)}{tail}')

    def line(self, task: Task, outcome: tuple | None, *, attempts: int, worker: str | None,
             error: str | None = None, encoded: bool = False) -> tuple[bool, str]:
        """(ok?, the line) for one attempt's `outcome`: an Outcome or a (seq, kind, value,
        error) tuple; None for a task that failed without one (then `error` says why).
        `encoded`: an ok value is checked JSON text, written as it is. A value JSON cannot
        carry makes the line a failed one, ResultNotJSON."""
        tail = self.tail(attempts, worker)
        if outcome is not None and outcome[1] == OK:
            try:
                text = outcome[2] if encoded else encode_value(outcome[2])
            except (TypeError, ValueError, RecursionError) as exc:  # what JSON cannot carry
                return False, self.failed_line(task, f"ResultNotJSON: {_reason(exc)}", tail)
            return True, self.ok_lines([task], [text], tail)[0]
        return False, self.failed_line(task, outcome[3] if outcome is not None else error, tail)


_LINES = ResultLines()


def result_line(task: Task, outcome: tuple | None, *, attempts: int, worker: str | None,
                error: str | None = None, encoded: bool = False) -> tuple[bool, str]:
    """ResultLines.line, for a caller that keeps no builder of its own."""
    return _LINES.line(task, outcome, attempts=attempts, worker=worker, error=error,
                       encoded=encoded)


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_value(value) -> str:
    """`value` as compact JSON (ints and strings by a shortcut); TypeError/ValueError if it
    is not a JSON value."""
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is str:
        return encode_basestring(value)
    return _encode(value)


def encode_id(task_id: str | int) -> str:
    """A task id as JSON, keeping its type: 1 stays 1, "1" stays "1"."""
    return encode_basestring(task_id) if type(task_id) is str else int.__repr__(task_id)


_int_repr = int.__repr__


def utf8_safe(line: str) -> str:
    """`line` with any lone surrogate written as its JSON escape (\\ud800), so that the line
    encodes as UTF-8. Surrogates can only sit inside JSON strings, where that escape means the
    same character; an ASCII line (the O(1) common case) is returned as it is."""
    if line.isascii():
        return line
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply for JSON"
    return str(exc)


#: a JSON string; possessive, so a string of many escapes keeps no backtracking state (the
#: greedy form held ~150 bytes per escape: 40x a message of \n escapes)
_STRINGS = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"')
#: what is left of JSON text once its strings are gone, as brackets only: ( and )
_BRACKETS = str.maketrans({**dict.fromkeys(map(chr, range(128))),
                           "[": "(", "{": "(", "]": ")", "}": ")"})


@functools.lru_cache(maxsize=8)
def _balanced_within(limit: int) -> re.Pattern:
    """A pattern that matches exactly the balanced bracket strings at most `limit` deep.

    Balanced brackets of bounded depth are a regular language: depth 0 is the empty string,
    depth k is (a bracket around depth k-1) repeated. Possessive repeats never backtrack, so
    a match runs once over the string: about 10 ns a character."""
    pattern = ""
    for _ in range(limit):
        pattern = r"(?:\(" + pattern + r"\))*+"
    return re.compile(pattern)


_balanced_within(MAX_DEPTH)             # compiled now, not on the first peer's result
_balanced_within(MAX_DEPTH + 1)         # (results_text_ok: the texts inside one more array)


def deeper_than(text: str, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` deep in the JSON text `text` (or its
    brackets do not balance). Linear for valid JSON: check that first for a peer's text.

    In time linear in the text (a peer's text is checked with it), all of it in C: strings go,
    then everything but brackets, then one match of _balanced_within(limit).
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _STRINGS.sub("", text).translate(_BRACKETS)
    return _balanced_within(limit).fullmatch(brackets) is None


#: a \\u escape of a surrogate: JSON allows a lone one, msgspec's checker does not
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_check_json = msgspec.json.Decoder(msgspec.Raw).decode


def check_result_text(text: str) -> str | None:
    """Why `text` cannot be a result as it stands in a result line, or None if it can: the
    JSON text of one value, on one line, nested at most MAX_DEPTH deep.

    Linear in the text and builds nothing from it: a peer's results are checked this way,
    never decoded."""
    if "\n" in text or "\r" in text:
        return "it holds a line break"
    # A lone surrogate (only an in-process caller's text can hold one: the wire's is UTF-8) is
    # checked as the escape the result line will hold.
    body = text if text.isascii() else utf8_safe(text)
    try:        # first: the regular expressions below are linear only over valid JSON
        _check_json(_SURROGATE_ESCAPE.sub(r"\\u0000", body) if "\\u" in body else body)
    except RecursionError:
        return f"it is nested more than {MAX_DEPTH} deep"
    except msgspec.DecodeError as exc:
        return f"not JSON ({exc})"
    if deeper_than(text, MAX_DEPTH):
        return f"it is nested more than {MAX_DEPTH} deep"
    if len(text) > MAX_DIGITS and _LONG_NUMBER.search(_STRINGS.sub("", text)):
        return (f"it holds a number of more than {MAX_DIGITS:,} digits, which Python's json "
                "cannot read back")
    return None


def results_text_ok(texts: list[str]) -> bool:
    """Whether every text in `texts` passes check_result_text, checked together: in one pass
    of msgspec over "[t1,t2,...]" when they are plain ASCII (nearly always), each alone if not.

    The joined array must split into exactly the texts: as many elements as texts, each as long
    as its text. Only then is every separator a single comma, so each text is one JSON value."""
    if not texts:
        return True
    joined = "[" + ",".join(texts) + "]"
    if joined.isascii() and "\n" not in joined and "\r" not in joined and "\\u" not in joined:
        try:
            parts = _split_json(joined)
        except (msgspec.DecodeError, RecursionError):
            return False
        if (list(map(len, parts)) == list(map(len, texts))
                and not deeper_than(joined, MAX_DEPTH + 1)
                and (len(joined) <= MAX_DIGITS or not _LONG_NUMBER.search(joined))):
            return True
    return all(check_result_text(text) is None for text in texts)


_split_json = msgspec.json.Decoder(list[msgspec.Raw]).decode
#: Python's limit on the digits of an int read from text (sys.get_int_max_str_digits)
MAX_DIGITS = 4300
_LONG_NUMBER = re.compile(f"[0-9]{{{MAX_DIGITS + 1}}}")


class ResultTooLarge(ValueError):
    """A result whose JSON is larger than MAX_RESULT_BYTES."""


def result_text(value) -> str:
    """The JSON text of a task's return value, as its result line will hold it: compact, and
    UTF-8 safe (a lone surrogate written as its \\u escape). This is what a worker sends.

    ValueError says why it cannot be a result: not JSON (a set, NaN), an integer too long to
    print (over 4300 digits), nesting deeper than MAX_DEPTH; ResultTooLarge (a ValueError)
    for JSON larger than MAX_RESULT_BYTES.
    """
    kind = type(value)
    if kind is int:
        text = int.__repr__(value)                      # ValueError past 4300 digits
    elif kind is str:
        text = encode_basestring(value)
    elif value is None or kind is bool:
        return "null" if value is None else "true" if value else "false"
    elif kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a JSON number")
        text = float.__repr__(value)
    else:
        try:
            text = _encode(value)
        except RecursionError:
            raise ValueError(f"nested more than {MAX_DEPTH} deep") from None
        if deeper_than(text, MAX_DEPTH):
            raise ValueError(f"nested more than {MAX_DEPTH} deep")
    if text.isascii():
        size = len(text)
    else:
        text = utf8_safe(text)
        size = len(text.encode("utf-8"))
    if size > MAX_RESULT_BYTES:
        raise ResultTooLarge(f"the result is {size:,} bytes as JSON; the limit is "
                             f"{MAX_RESULT_BYTES:,} (MAX_RESULT_BYTES): write big outputs to "
                             "storage and return where they are")
    return text


def _str(text: str | None) -> str:
    return "null" if text is None else encode_basestring(text)
