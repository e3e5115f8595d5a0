"""The task file parser: valid files, and every kind of bad line with its line number."""

import array
import hashlib
import io
import itertools
import os
import sys
from unittest import mock

import pytest

from procfleet.master.taskfile import (MAX_ERRORS, DemoSource, FileSource, demo_tasks,
                                      open_source, parse_lines)
from procfleet.shared.errors import TaskFileError
from procfleet.shared.protocol import MAX_DEPTH, MAX_TASK_BYTES, SMALL_TASK_BYTES, Task


def parse(text: str):
    return parse_lines(io.StringIO(text), "t.jsonl")


def test_valid_lines_with_defaults():
    tasks = parse('{"id": "a1", "task": "square", "args": [3], "kwargs": {}}\n'
                  '\n'
                  '{"task": "sleep", "kwargs": {"seconds": 0}}\n'
                  '{"id": 7, "task": "fail", "args": ["x"]}\n')
    assert tasks == [Task(0, "a1", "square", [3], {}), Task(1, 3, "sleep", [], {"seconds": 0}),
                     Task(2, 7, "fail", ["x"], {})]
    assert [type(t.id) for t in tasks] == [str, int, int]    # ids keep their JSON type


def test_empty_file_is_an_empty_batch():
    assert parse("") == []


@pytest.mark.parametrize("line,message", [
    ('{"task": "square", "args": [3]', "t.jsonl:1: invalid JSON"),
    ('[1, 2]', "t.jsonl:1: expected a JSON object"),
    ('{"args": [1]}', 't.jsonl:1: missing "task"'),
    ('{"task": ""}', '"task" must be a non-empty string'),
    ('{"task": 3}', '"task" must be a non-empty string, got a number'),
    ('{"task": "square", "args": 3}', '"args" must be an array'),
    ('{"task": "square", "kwargs": []}', '"kwargs" must be an object'),
    ('{"task": "square", "id": null}', '"id" must be a non-empty string or an integer'),
    ('{"task": "square", "retry": 1}', "unknown field 'retry'"),
    ('{"task": "square", "timeout": 0}', '"timeout" must be a positive number of seconds'),
    ('{"task": "square", "timeout": "5"}', '"timeout" must be a positive number'),
    ('{"task": "square", "timeout": true}', '"timeout" must be a positive number'),
])
def test_bad_line_is_reported_with_its_line_number(line, message):
    with pytest.raises(TaskFileError) as err:
        parse(line + "\n")
    assert message in str(err.value)
    assert "nothing was dispatched" in str(err.value)


def test_duplicate_ids_name_both_lines():
    with pytest.raises(TaskFileError) as err:
        parse('{"id": "a", "task": "square"}\n{"task": "square"}\n{"id": "a", "task": "x"}\n')
    assert "t.jsonl:3: duplicate id 'a' (first used on line 1)" in str(err.value)


def test_default_id_colliding_with_explicit_id_is_a_duplicate():
    with pytest.raises(TaskFileError, match="t.jsonl:2: duplicate id 2 .first used on line 1"):
        parse('{"id": "2", "task": "square"}\n{"task": "square"}\n')


def test_all_bad_lines_are_listed_up_to_a_limit():
    with pytest.raises(TaskFileError) as err:
        parse("nope\n" * (MAX_ERRORS + 5))
    text = str(err.value)
    assert f"t.jsonl:{MAX_ERRORS}: invalid JSON" in text
    assert f"t.jsonl:{MAX_ERRORS + 1}:" not in text
    assert "stopped after" in text


def test_unreadable_file(tmp_path):
    with pytest.raises(TaskFileError, match="cannot read tasks file .*No such file"):
        open_source(str(tmp_path / "missing.jsonl"))


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"task": "\xff"}\n')
    with pytest.raises(TaskFileError, match="not UTF-8"):
        open_source(str(path))


def test_demo_tasks():
    assert demo_tasks(3) == [Task(0, "0", "square", [0], {}), Task(1, "1", "square", [1], {}),
                             Task(2, "2", "square", [2], {})]
    assert demo_tasks(2, sleep=0.5)[1] == Task(1, "1", "sleep", [0.5, 1], {})
    assert DemoSource(2, timeout=3.0).fingerprint != DemoSource(3).fingerprint


def test_timeout_from_the_line_overrides_the_batch_default(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"task": "sleep", "args": [1]}\n'
                    '{"task": "sleep", "args": [1], "timeout": 0.5}\n')
    assert [t.timeout for t in FileSource(str(path), timeout=9.0)] == [9.0, 0.5]
    assert [t.timeout for t in FileSource(str(path))] == [None, 0.5]


def test_file_source_is_checked_first_and_streamed_again(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(f'{{"id": "t{i}", "task": "square", "args": [{i}]}}\n'
                            for i in range(1000)))
    source = FileSource(str(path))
    assert source.total == 1000
    first = list(source)
    assert first == list(source)
    assert [t.seq for t in first] == list(range(1000)) and first[7].id == "t7"
    same = FileSource(str(path))
    assert same.fingerprint == source.fingerprint
    path.write_text('{"task": "square", "args": [1]}\n')
    assert FileSource(str(path)).fingerprint != source.fingerprint


def test_duplicate_ids_are_found_in_a_streamed_file(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [f'{{"id": "t{i}", "task": "square"}}' for i in range(500)]
    lines.append('{"id": "t42", "task": "x"}')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskFileError,
                       match=r"t.jsonl:501: duplicate id 't42' \(first used on line 43\)"):
        FileSource(str(path))


# -- the check's extras: a BOM, sizes, limits; a file that changes after its check ------------

def lines_of(*lengths: int) -> str:
    """Task lines whose UTF-8 lengths (without the newline) are exactly `lengths`."""
    out = []
    for i, length in enumerate(lengths):
        head = f'{{"id": {i}, "task": "sleep", "args": ["'
        out.append(head + "x" * (length - len(head) - 3) + '"]}')
    return "".join(line + "\n" for line in out)


def test_a_utf8_bom_is_skipped_and_line_numbers_and_digest_stay_right(tmp_path):
    path = tmp_path / "t.jsonl"
    body = b'{"id": "a", "task": "square", "args": [2]}\n{"task": "square", "args": [3]}\n'
    path.write_bytes(b"\xef\xbb\xbf" + body)
    source = FileSource(str(path))
    assert [(t.id, t.args) for t in source] == [("a", [2]), (2, [3])]
    assert source.fingerprint == "file:" + hashlib.sha256(b"\xef\xbb\xbf" + body).hexdigest()
    path.write_bytes(b"\xef\xbb\xbf" + body + b"{nope\n")
    with pytest.raises(TaskFileError, match=r"t.jsonl:3: invalid JSON"):
        FileSource(str(path))


def test_a_utf8_bom_on_stdin_is_skipped(monkeypatch):
    data = b'\xef\xbb\xbf{"task": "square", "args": [2]}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    assert list(open_source("-")) == [Task(0, 1, "square", [2], {})]


def test_sizes_are_none_while_every_line_is_small(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(lines_of(40, SMALL_TASK_BYTES, 100))
    assert FileSource(str(path)).sizes is None
    assert DemoSource(3).sizes is None


def test_sizes_hold_each_tasks_line_length_once_one_line_is_large(tmp_path):
    path = tmp_path / "t.jsonl"
    lengths = (40, SMALL_TASK_BYTES + 1, 100)
    path.write_text(lines_of(*lengths).replace("\n", "\n\n", 1))   # a blank line: no task
    sizes = FileSource(str(path)).sizes
    assert isinstance(sizes, array.array) and sizes.typecode == "I"
    assert list(sizes) == list(lengths)
    assert [size for _task, size in stdin_records(lines_of(*lengths))] == list(lengths)


def test_sizes_count_utf8_bytes(tmp_path):
    path = tmp_path / "t.jsonl"
    line = '{"task": "sleep", "args": ["' + "é" * 600 + '"]}'       # 600 chars, 1200 bytes
    path.write_text(line + "\n", encoding="utf-8")
    assert list(FileSource(str(path)).sizes) == [len(line.encode("utf-8"))]


def test_a_line_longer_than_max_task_bytes_is_refused_with_its_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"task": "square", "args": [1]}\n'
                    '{"task": "sleep", "args": ["' + "x" * MAX_TASK_BYTES + '"]}\n')
    with pytest.raises(TaskFileError, match=r"t.jsonl:2: .*longer than .*16,777,216"):
        FileSource(str(path))


def test_arguments_nested_deeper_than_max_depth_are_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    inner = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)     # inside args' array and object
    path.write_text(f'{{"task": "square", "args": {ok}}}\n'
                    f'{{"task": "square", "args": ["[[[[", {{"k": {inner}}}]}}\n'
                    f'{{"task": "square", "kwargs": {{"k": {deep[1:-1]}}}}}\n'
                    f'{{"task": "square", "args": {deep}}}\n')
    with pytest.raises(TaskFileError) as err:
        FileSource(str(path))
    assert "t.jsonl:2:" not in str(err.value)
    assert "t.jsonl:3: " in str(err.value) and "t.jsonl:4: " in str(err.value)
    assert f"nest more than {MAX_DEPTH} deep" in str(err.value)
    path.write_text(f'{{"task": "square", "args": {ok}}}\n')
    assert FileSource(str(path)).total == 1


def batch_file(path, n=5):
    path.write_text("".join(f'{{"id": "t{i}", "task": "square", "args": [{i}]}}\n'
                            for i in range(n)))
    return FileSource(str(path))


def test_an_unchanged_file_reports_no_change(tmp_path):
    source = batch_file(tmp_path / "t.jsonl")
    assert len(list(source)) == 5
    assert source.check_unchanged() is None and source.changed is None


def test_a_line_made_invalid_during_the_batch_ends_the_stream_without_raising(tmp_path):
    path = tmp_path / "t.jsonl"
    source = batch_file(path)
    text = path.read_text()
    with open(path, "r+") as fh:                       # edited in place, same inode
        fh.write(text.replace('{"id": "t2"', '{"id": ,t2"'))
    tasks = list(source)                                # never raises into a lease
    assert [t.id for t in tasks] == ["t0", "t1"]
    assert "t.jsonl:3:" in source.changed and "invalid JSON" in source.changed


def test_a_line_changed_during_the_batch_is_caught_before_the_last_task(tmp_path):
    path = tmp_path / "t.jsonl"
    source = batch_file(path)
    with open(path, "r+") as fh:
        fh.write(path.read_text().replace('"t3"', '"t1"'))   # same size: a duplicate id
    stream = iter(source)
    ids = [t.id for t in itertools.islice(stream, 4)]        # all the dispatcher asks for
    assert ids == ["t0", "t1", "t2", "t1"]
    assert list(stream) == [] and "changed" in source.changed
    assert source.check_unchanged() == source.changed


def test_a_replaced_or_deleted_file_is_noticed_and_the_checked_one_is_still_read(tmp_path):
    path = tmp_path / "t.jsonl"
    source = batch_file(path)
    other = tmp_path / "new.jsonl"
    other.write_text('{"task": "square", "args": [99]}\n')
    os.replace(other, path)
    assert "t.jsonl" in source.check_unchanged()
    assert [t.args for t in source] == [[i] for i in range(5)]   # the file it checked
    source = batch_file(tmp_path / "u.jsonl")
    os.unlink(tmp_path / "u.jsonl")
    assert "deleted" in source.check_unchanged()


def test_a_file_grown_during_the_batch_is_a_change(tmp_path):
    path = tmp_path / "t.jsonl"
    source = batch_file(path)
    with open(path, "a") as fh:
        fh.write('{"id": "extra", "task": "square"}\n')
    assert [t.id for t in source] == ["t0", "t1", "t2", "t3"]
    assert source.changed and source.check_unchanged()


def stdin_records(text: str) -> list:
    """(task, line bytes) of what `--tasks -` reads from `text` on stdin."""
    stdin = io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8")
    with mock.patch.object(sys, "stdin", stdin):
        return list(open_source("-").records())
