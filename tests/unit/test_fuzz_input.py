"""Fuzzing what users type and write: task files, the key settings, addresses and CLI options.

Every input either works or is a ConfigError (exit 2) with a message that names its source;
never a traceback. The generators stay inside the limits listed under "Known gaps" below.
"""

import io
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
from unittest import mock

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from procfleet.master.taskfile import FIELDS, open_source, parse_lines
from procfleet.shared.cli import main
from procfleet.shared.errors import ConfigError, TaskFileError
from procfleet.shared.protocol import Task
from procfleet.shared.settings import (ENV_AUTHKEY, ENV_AUTHKEY_FILE, MIN_AUTHKEY_LENGTH,
                                       load_authkey, parse_address)
from fakes import TEST_KEY
from strategies import ANY_CHAR, BIG_INT, json_trees, json_values

# No example database: it would be a .hypothesis/ folder in the work tree. Edge cases worth
# running every time are spelled out as @example instead.
FUZZ = settings(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Found by these tests and fixed since (see the regressions at the end); the generators still
# stay clear of them to keep each example fast:
#   tracebacks (exit 1)
#   - a JSON integer "timeout" beyond float range ({"task": "x", "timeout": 1<400 zeros>}):
#     OverflowError from math.isfinite;
#   - a JSON integer of more than 4300 digits (ValueError) or arrays nested deeper than the
#     recursion limit (RecursionError): json.loads raises neither as a JSONDecodeError;
#   - lone surrogates in PROCFLEET_AUTHKEY (non-UTF-8 bytes in the real environment):
#     UnicodeEncodeError in load_authkey;
#   accepted but wrong
#   - "nan" for every click.FloatRange option of master and worker (--timeout, --lease-timeout..);
#   - a CR inside the key in PROCFLEET_AUTHKEY_FILE becomes LF (the file is read with universal
#     newlines);
#   - the "at byte N" of a "not UTF-8 text" error counts from the decoder's last read, not from
#     the start of the file: wrong past the first 8 KiB, and for a character cut off at the end.


# --- task files ------------------------------------------------------------------------------


FIELD_VALUES = {
    # a small pool of ids, which also collide with the default ids (line numbers)
    "id": st.one_of(st.sampled_from(["a", "1", "2", "3", "", " "]), st.integers(-2, 6),
                    st.text(ANY_CHAR, max_size=5), json_values),
    "task": st.one_of(st.sampled_from(["square", "sleep", ""]), st.text(ANY_CHAR, max_size=8),
                      json_values),
    "args": st.one_of(st.lists(json_values, max_size=3), json_values),
    "kwargs": st.one_of(st.dictionaries(st.text(ANY_CHAR, max_size=5), json_values,
                                        max_size=3), json_values),
    "timeout": st.one_of(st.floats(), BIG_INT,
                         st.sampled_from([0, -1, 0.0, -0.0, 5e-324, True, False, "5", None]),
                         json_values),
}
task_objects = st.builds(
    lambda fields, extra: {**extra, **fields},
    st.one_of(st.fixed_dictionaries({"task": FIELD_VALUES["task"]},
                                    optional={k: v for k, v in FIELD_VALUES.items()
                                              if k != "task"}),
              st.fixed_dictionaries({}, optional=FIELD_VALUES)),
    st.one_of(st.just({}), st.dictionaries(st.text(ANY_CHAR, max_size=6), json_values,
                                           max_size=2)))


@st.composite
def dumped(draw, values):
    """One JSON text, as json.dumps writes it (NaN/Infinity included) with either escaping."""
    return json.dumps(draw(values), ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))


# Lines that are mostly right: a whole file of them is often accepted, often with duplicates.
plausible_tasks = st.fixed_dictionaries(
    {"task": st.sampled_from(["square", "sleep", "x"])},
    optional={"id": st.one_of(st.sampled_from(["a", "1", "2"]), st.integers(1, 6)),
              "args": st.lists(json_values, max_size=3),
              "kwargs": st.dictionaries(st.text(ANY_CHAR, max_size=5), json_values, max_size=3),
              "timeout": st.one_of(st.floats(), BIG_INT)})
blank_lines = st.sampled_from(["", " ", "\t", "\x0c", "\u3000"])
any_lines = st.one_of(dumped(task_objects), dumped(json_values), st.text(ANY_CHAR, max_size=30),
                      blank_lines, st.sampled_from(["\ufeff", "{", "}", "null"]))
mostly_right_lines = st.one_of(dumped(plausible_tasks), dumped(plausible_tasks), blank_lines)


@st.composite
def task_file_bytes(draw):
    """A JSON Lines file of near-miss task lines; lone surrogates make it invalid UTF-8."""
    lines = draw(st.sampled_from([any_lines, mostly_right_lines]))
    parts = draw(st.lists(st.tuples(lines, st.sampled_from(["\n", "\n", "\r\n", "\r"])),
                          max_size=12))
    text = "".join(line + end for line, end in parts)
    if parts and draw(st.booleans()):
        text = text.rstrip("\r\n")                 # no newline after the last line
    return text.encode("utf-8", "surrogatepass")


def file_lines(text: str) -> list[str]:
    """The lines as a text-mode file reads them (universal newlines), a leading UTF-8 BOM
    skipped as the task file reader skips it."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")


def check_outcome(read, name: str, data: bytes) -> None:
    """Run `read()` (a task source); check the tasks it yields, or the error it raises."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    try:
        source = read()
    except TaskFileError as exc:
        event("refused: not UTF-8" if text is None else
              "refused: duplicate ids" if "duplicate id" in str(exc) else "refused: invalid lines")
        check_error(str(exc), name, text)
        assert isinstance(exc, ConfigError) and exc.exit_code == 2
        return
    assert text is not None, "a file that is not UTF-8 was accepted"
    tasks = list(source)
    event("accepted, with tasks" if tasks else "accepted, empty")
    assert len(tasks) == source.total
    assert source.total == sum(1 for line in file_lines(text) if line.strip())
    assert [t.seq for t in tasks] == list(range(len(tasks)))
    for task in tasks:
        assert isinstance(task, Task)
        assert isinstance(task.name, str) and task.name
        # an id keeps its JSON type: a non-empty string, or an integer (not a boolean)
        assert (type(task.id) is str and task.id) or type(task.id) is int
        assert isinstance(task.args, list) and isinstance(task.kwargs, dict)
        assert task.timeout is None or (type(task.timeout) is float
                                        and math.isfinite(task.timeout) and task.timeout > 0)
    assert len({str(t.id) for t in tasks}) == len(tasks), "duplicate ids were accepted"


def check_error(message: str, name: str, text: str | None) -> None:
    assert message.startswith(f"{name}: "), message
    assert "Traceback" not in message
    if text is None:
        assert "not UTF-8 text" in message, message    # "at byte N": a known gap
        return
    assert "invalid line" in message and "nothing was dispatched" in message, message
    lines = file_lines(text)
    numbers = [int(n) for n in re.findall(rf"^  {re.escape(name)}:(\d+): ", message, re.M)]
    assert numbers, f"no line is named in {message!r}"
    for n in numbers + [int(n) for n in re.findall(r"first used on line (\d+)\)", message)]:
        assert 1 <= n <= len(lines) and lines[n - 1].strip(), \
            f"line {n} is not a non-blank line of the file: {message!r}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@settings(FUZZ, max_examples=300)
@given(data=task_file_bytes())
@example(data=b'{"id": 2, "task": "a"}\n{"task": "b"}\n')          # default id 2 is taken
@example(data=b'{"task": "a", "timeout": NaN}\r{"task": 1e999}\r\n{"id": true}')
@example(data=b'\xef\xbb\xbf{"task": "a"}\n')                        # a UTF-8 BOM
def test_task_file_parses_or_names_the_bad_lines(scratch, data):
    path = scratch / "tasks.jsonl"
    path.write_bytes(data)
    check_outcome(lambda: open_source(str(path)), str(path), data)


@settings(FUZZ, max_examples=200)
@given(data=st.binary(max_size=600))
def test_any_bytes_as_a_task_file(scratch, data):
    path = scratch / "bytes.jsonl"
    path.write_bytes(data)
    check_outcome(lambda: open_source(str(path)), str(path), data)


@settings(FUZZ, max_examples=150)
@given(data=st.one_of(task_file_bytes(), st.binary(max_size=300)))
def test_tasks_from_stdin(data):
    """Stdin is streamed: its tasks come out one by one, and the first bad line ends it with
    an error naming that line (or the whole input is accepted; ids are not checked for
    duplicates, which needs the whole input)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    tasks = []
    with mock.patch.object(sys, "stdin", stdin):
        try:
            for task in open_source("-"):
                tasks.append(task)
        except TaskFileError as exc:
            message = str(exc)
            assert message.startswith("<stdin>") and "Traceback" not in message, message
            assert isinstance(exc, ConfigError) and exc.exit_code == 2
            if text is None and "not UTF-8" in message:
                event("refused: not UTF-8")
                return
            event("refused: a bad line")
            assert text is not None, message
            lines = file_lines(text)
            n = int(re.match(r"<stdin>:(\d+): ", message).group(1))
            assert 1 <= n <= len(lines) and lines[n - 1].strip(), (n, message)
            assert len(tasks) == sum(1 for line in lines[:n - 1] if line.strip())
            return
    assert text is not None, "stdin that is not UTF-8 was accepted"
    event("accepted, with tasks" if tasks else "accepted, empty")
    assert len(tasks) == sum(1 for line in file_lines(text) if line.strip())
    assert [t.seq for t in tasks] == list(range(len(tasks)))


# Valid by construction: the oracle for what a line means.
plain_json = json_trees(st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                                  st.floats(allow_nan=False), st.text(ANY_CHAR, max_size=8)),
                        max_leaves=6)
valid_specs = st.fixed_dictionaries(
    {"task": st.text(ANY_CHAR, min_size=1, max_size=8)},
    optional={"id": st.one_of(st.integers(), st.text(ANY_CHAR, min_size=1, max_size=8)),
              "args": st.lists(plain_json, max_size=3),
              "kwargs": st.dictionaries(st.text(ANY_CHAR, max_size=5), plain_json, max_size=3),
              "timeout": st.one_of(st.floats(min_value=0, exclude_min=True,
                                             allow_infinity=False),
                                   st.integers(min_value=1, max_value=10**20))})


@settings(FUZZ, max_examples=150)
@given(entries=st.lists(st.tuples(st.sampled_from(["", "", "\n", "  \t\n"]), valid_specs,
                                  st.booleans()), max_size=10),
       default_timeout=st.none() | st.floats(min_value=0.001, max_value=1e6))
def test_valid_task_file_round_trips(scratch, entries, default_timeout):
    text, expected, lineno = "", [], 0
    for blank, spec, ascii_only in entries:
        text += blank
        lineno += blank.count("\n") + 1
        line = json.dumps(spec, ensure_ascii=ascii_only)
        if any("\ud800" <= c <= "\udfff" for c in line):
            line = json.dumps(spec)             # lone surrogates only as \u escapes
        text += line + "\n"
        timeout = float(spec["timeout"]) if "timeout" in spec else default_timeout
        expected.append(Task(len(expected), spec.get("id", lineno), spec["task"],
                             spec.get("args", []), spec.get("kwargs", {}), timeout))
    assume(len({str(t.id) for t in expected}) == len(expected))
    path = scratch / "valid.jsonl"
    path.write_text(text, encoding="utf-8", newline="")
    source = open_source(str(path), default_timeout)
    assert source.total == len(expected)
    assert list(source) == expected
    assert list(source) == expected                   # streamed again, the same batch
    assert parse_lines(io.StringIO(text), "<stdin>", default_timeout) == expected


wrong_fields = st.one_of(
    st.tuples(st.just("task"), st.just("") | json_values.filter(lambda v: not isinstance(v, str))),
    st.tuples(st.just("id"), st.one_of(st.just(""), st.booleans(), st.floats(), json_values.filter(
        lambda v: v is None or isinstance(v, (float, list, dict))))),
    st.tuples(st.just("args"), json_values.filter(lambda v: not isinstance(v, list))),
    st.tuples(st.just("kwargs"), json_values.filter(lambda v: not isinstance(v, dict))),
    st.tuples(st.just("timeout"), st.one_of(
        st.booleans(), st.floats(max_value=0), st.sampled_from([math.nan, math.inf]),
        st.integers(min_value=-10**300, max_value=0),
        json_values.filter(lambda v: isinstance(v, bool) or not isinstance(v, (int, float))))),
    st.tuples(st.text(ANY_CHAR, max_size=6).filter(lambda k: k not in FIELDS), json_values))


@settings(FUZZ, max_examples=200)
@given(spec=valid_specs, wrong=wrong_fields, before=st.integers(0, 4), after=st.integers(0, 4))
def test_one_wrong_field_is_refused_by_name(scratch, spec, wrong, before, after):
    """The negative oracle: a valid line with one field made wrong is refused, naming it."""
    key, value = wrong
    good = '{"task": "square"}\n'
    path = scratch / "wrong.jsonl"
    path.write_text(good * before + json.dumps({**spec, key: value}) + "\n" + good * after,
                    encoding="utf-8")
    with pytest.raises(TaskFileError) as err:
        open_source(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: 1 invalid line;"), message
    line_error = message.split(f"\n  {path}:{before + 1}: ", 1)[1]
    assert (f'"{key}"' if key in FIELDS else f"unknown field {key!r}") in line_error, message


# --- settings --------------------------------------------------------------------------------

# What a real environment can hold: no NUL; lone surrogates are a known gap (see the top).
env_chars = st.characters(codec="utf-8", exclude_characters="\x00")
env_text = st.one_of(st.text(env_chars, max_size=40),     # and often just around the minimum:
                     st.text(env_chars, min_size=MIN_AUTHKEY_LENGTH - 1,
                             max_size=MIN_AUTHKEY_LENGTH + 1))
key_file_contents = st.one_of(
    st.binary(max_size=40), env_text.map(str.encode),
    st.builds(lambda k, end: (k + end).encode(), env_text,
              st.sampled_from(["\n", "\r\n", "\n\n", " "]))
).filter(lambda b: b"\r" not in b.rstrip(b"\r\n"))      # a CR inside the key: a known gap
key_files = st.one_of(
    st.tuples(st.just("file"), key_file_contents),
    st.tuples(st.sampled_from(["missing", "dir"]), st.just(b"")),
    st.tuples(st.just("name"), env_text))


@settings(FUZZ, max_examples=300)
@given(key=st.none() | env_text, key_file=st.none() | key_files,
       other=st.dictionaries(st.text(min_size=1, max_size=20), env_text, max_size=3))
@example(key="k" * MIN_AUTHKEY_LENGTH, key_file=None, other={})
@example(key=None, key_file=("file", b"k" * MIN_AUTHKEY_LENGTH + b"\r\n"), other={})
@example(key=None, key_file=("file", b"k" * (MIN_AUTHKEY_LENGTH - 1) + b"\n"), other={})
@example(key="", key_file=("file", b"\xff" * MIN_AUTHKEY_LENGTH), other={})
def test_load_authkey_gives_a_long_key_or_names_the_variable(scratch, key, key_file, other):
    env = dict(other)
    env.pop(ENV_AUTHKEY, None)
    env.pop(ENV_AUTHKEY_FILE, None)
    if key is not None:
        env[ENV_AUTHKEY] = key
    expected = key or None
    if key_file is not None:
        kind, content = key_file
        path, expected = scratch / "key", None
        if kind == "file":
            path.write_bytes(content)
            try:
                expected = content.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                pass
        env[ENV_AUTHKEY_FILE] = {"file": str(path), "missing": str(scratch / "no-such-key"),
                                 "dir": str(scratch),
                                 "name": os.path.join(scratch, f"k{content}")}[kind]
    try:
        result = load_authkey(env)
    except ConfigError as exc:
        message = str(exc)
        assert exc.exit_code == 2 and "Traceback" not in message
        if key and key_file is not None:
            assert "both" in message
        names = ENV_AUTHKEY_FILE if key_file is not None else ENV_AUTHKEY
        assert names in message, message
        assert expected is None or len(expected) < MIN_AUTHKEY_LENGTH or "both" in message
        return
    assert isinstance(result, bytes) and len(result) >= MIN_AUTHKEY_LENGTH
    assert not (key and key_file is not None), "two key sources were accepted"
    if key_file is None or key_file[0] != "name":
        assert result == expected.encode("utf-8")


@settings(FUZZ, max_examples=300)
@given(text=st.one_of(st.text(ANY_CHAR),
                      st.builds("{}:{}".format, st.text(max_size=10),
                                st.one_of(st.integers(), st.text(max_size=6)))))
@example(text="[]:1")
@example(text="host:" + "9" * 5000)
def test_parse_address_gives_a_port_in_range_or_names_the_option(text):
    try:
        host, port = parse_address(text, "--bind")
    except ConfigError as exc:
        assert exc.exit_code == 2 and str(exc).startswith("--bind: "), str(exc)
        return
    assert isinstance(host, str)
    assert type(port) is int and 0 <= port <= 65535


@settings(FUZZ, max_examples=200)
@given(host=st.text(min_size=1, max_size=20).filter(
           lambda h: h == h.strip() and not (h.startswith("[") and h.endswith("]"))),
       port=st.integers(), bracketed=st.booleans())
def test_parse_address_oracle(host, port, bracketed):
    text = f"[{host}]:{port}" if bracketed else f"{host}:{port}"
    if 0 <= port <= 65535:
        assert parse_address(text, "--master") == (host, port)
    else:
        with pytest.raises(ConfigError, match=r"^--master: port .* is outside 0-65535"):
            parse_address(text, "--master")


# --- the command line ------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def restore_process_state():
    """A master run installs signal handlers and replaces the root log handlers: undo both."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    log_handlers, log_level = root.handlers[:], root.level
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    root.handlers[:] = log_handlers
    root.setLevel(log_level)


def invoke(args):
    env = {name: None for name in os.environ if name.startswith("PROCFLEET_")}
    env[ENV_AUTHKEY] = TEST_KEY
    result = CliRunner().invoke(main, args, env=env)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    return result


@settings(FUZZ, max_examples=50)
@given(data=st.one_of(task_file_bytes(), st.binary(max_size=200)))
@example(data=b"")
@example(data=b'{"task": "square", "args": [1]}\n')
def test_master_with_a_fuzzed_task_file(scratch, data):
    """Bad files are exit 2 before serving; good ones are served (no workers: --timeout, 3)."""
    path = scratch / "cli.jsonl"
    path.write_bytes(data)
    try:
        expected = 3 if open_source(str(path)).total else 0
    except TaskFileError:
        expected = 2
    event(f"exit {expected}")
    result = invoke(["master", "--tasks", str(path), "--bind", "127.0.0.1:0",
                     "--timeout", "0.01", "--results", str(scratch / "results.jsonl")])
    assert result.exit_code == expected, result.output
    if expected == 2:
        assert f"procfleet: error: {path}: " in result.output
        assert "serving" not in result.output


# option: (int or float, minimum, minimum excluded, maximum)
NUMBER_OPTIONS = {
    ("master", "--demo"): (int, 0, False, None),
    ("master", "--max-attempts"): (int, 1, False, None),
    ("master", "--retries"): (int, 0, False, 100),
    ("master", "--local-workers"): (int, 0, False, None),
    ("master", "--restart-on-crash"): (int, 0, False, 1000),
    ("master", "--timeout"): (float, 0, True, None),
    ("master", "--lease-timeout"): (float, 0, True, None),
    ("master", "--task-timeout"): (float, 0, True, None),
    ("master", "--demo-sleep"): (float, 0, False, None),
    ("master", "--retry-backoff"): (float, 0, False, None),
    ("worker", "--concurrency"): (int, 1, False, 1024),
    ("worker", "--connect-timeout"): (float, 0, False, None),
    ("worker", "--drain-timeout"): (float, 0, False, None),
}


def in_range(kind, value: str, minimum, min_open, maximum) -> bool:
    try:
        number = kind(value)
    except ValueError:
        return False
    if kind is float and not math.isfinite(number):
        return False               # seconds must be finite: nan and inf are refused
    if number < minimum or (min_open and number == minimum):
        return False
    return maximum is None or number <= maximum


def is_nan(value: str) -> bool:
    try:
        return math.isnan(float(value))
    except ValueError:
        return False


option_values = st.one_of(
    st.text(ANY_CHAR, max_size=12), st.integers().map(str), st.floats().map(repr),
    st.sampled_from(["", " 1 ", "0", "-0", "1e3", "0x10", "1_000", "\u0663", "+1", "inf",
                     "-inf", "1" * 400, "1" * 5000, "0.0", "1e-400", "nan", "NaN"]),
)


@settings(FUZZ, max_examples=300)
@given(option=st.sampled_from(sorted(NUMBER_OPTIONS)), value=option_values)
def test_number_options_refuse_bad_values_by_name(option, value):
    """Each value is refused by click naming the option, or accepted (then --bind/--master fails:
    nothing is ever served here)."""
    command, name = option
    kind, minimum, min_open, maximum = NUMBER_OPTIONS[option]
    if command == "master":
        args = ["master", f"{name}={value}", "--bind", "nohost"]
        if name != "--demo":
            args += ["--demo", "1"]
    else:
        args = ["worker", f"{name}={value}", "--master", "nohost"]
    result = invoke(args)
    assert result.exit_code == 2, result.output
    if not in_range(kind, value, minimum, min_open, maximum):
        assert f"Invalid value for '{name}'" in result.output, result.output
    else:   # accepted: the bad address is what is refused, as click checks each value first
        assert f"Invalid value for '{name}'" not in result.output
        address = "--bind" if command == "master" else "--master"
        assert f"procfleet: error: Invalid value for '{address}': 'nohost' is not HOST:PORT" \
            in result.output, result.output


# -- regressions: inputs the fuzzing above found, fixed, and kept as examples ----------------


@pytest.mark.parametrize("line", [
    b'{"task": "x", "timeout": 1' + b"0" * 400 + b"}",          # OverflowError in math.isfinite
    b'{"task": "x", "args": [' + b"1" * 4301 + b"]}",             # ValueError from json.loads
    b'{"task": "x", "args": ' + b"[" * 100000 + b"]" * 100000 + b"}",   # RecursionError
])
def test_task_line_is_refused_not_a_traceback(tmp_path, line):
    path = tmp_path / "t.jsonl"
    path.write_bytes(line + b"\n")
    with pytest.raises(TaskFileError, match=rf"^{path}: 1 invalid line;.*\n  {path}:1: "):
        open_source(str(path))


def test_master_cli_with_huge_int_timeout_is_exit_2(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"task": "x", "timeout": 1' + b"0" * 400 + b"}\n")
    result = CliRunner().invoke(main, ["master", "--tasks", str(path), "--bind", "127.0.0.1:0"],
                                env={"PROCFLEET_AUTHKEY": TEST_KEY})
    assert result.exit_code == 2 and "procfleet: error:" in result.output, repr(result.exception)


@pytest.mark.parametrize("data,offset", [
    (b'{"task": "x"}\n' * 1000 + b"\xff\n", 14000),     # says "at byte 5808"
    (b"\x00\xc2", 1),                                   # says "at byte 0"
])
def test_not_utf8_names_the_byte_offset_in_the_file(tmp_path, data, offset):
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    with pytest.raises(TaskFileError, match=rf"at byte {offset}\)"):
        open_source(str(path))


def test_key_that_is_not_utf8_in_the_environment_is_used_as_its_bytes():
    # what os.environ holds for PROCFLEET_AUTHKEY=$'\xff...' (16 non-UTF-8 bytes)
    assert load_authkey({"PROCFLEET_AUTHKEY": "\udcff" * 16}) == b"\xff" * 16
    with pytest.raises(ConfigError, match="PROCFLEET_AUTHKEY is not valid text"):
        load_authkey({"PROCFLEET_AUTHKEY": "\ud800" * 16})   # cannot come from a real env


def test_key_with_non_utf8_bytes_in_the_real_environment_is_exit_2():
    env = {k: v for k, v in os.environb.items() if not k.startswith(b"PROCFLEET_")}
    env[b"PROCFLEET_AUTHKEY"] = bytes(range(0xF0, 0x100))
    proc = subprocess.run([sys.executable, "-m", "procfleet.shared", "master", "--demo", "1",
                           "--bind", "127.0.0.1:0", "--timeout", "0.01"],
                          env=env, capture_output=True, timeout=30)
    assert proc.returncode in (2, 3) and b"Traceback" not in proc.stderr, proc.stderr[-300:]


def test_key_file_keeps_a_cr_inside_the_key(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"k" * 8 + b"\r" + b"k" * 8 + b"\n")
    assert load_authkey({"PROCFLEET_AUTHKEY_FILE": str(path)}) == b"k" * 8 + b"\r" + b"k" * 8


@pytest.mark.parametrize("option", ["--timeout", "--lease-timeout", "--task-timeout",
                                    "--demo-sleep", "--retry-backoff"])
def test_nan_is_an_invalid_number_of_seconds(option):
    result = CliRunner().invoke(main, ["master", "--demo", "1", f"{option}=nan",
                                       "--bind", "nohost"], env={"PROCFLEET_AUTHKEY": TEST_KEY})
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, \
        result.output


@pytest.mark.parametrize("option", ["--connect-timeout", "--drain-timeout"])
def test_worker_nan_is_an_invalid_number_of_seconds(option):
    result = CliRunner().invoke(main, ["worker", f"{option}=nan", "--master", "nohost"],
                                env={"PROCFLEET_AUTHKEY": TEST_KEY})
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, \
        result.output
