"""The task file parser: valid files, and every kind of bad line with its line number."""

import io

import pytest

from procfleet.master.taskfile import (MAX_ERRORS, DemoSource, FileSource, demo_tasks,
                                      open_source, parse_lines)
from procfleet.shared.errors import TaskFileError
from procfleet.shared.records import Task


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
    path.write_text('{"task": "sleep", "args": [1]}\n{"task": "sleep", "args": [1], "timeout": 0.5}\n')
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
    lines = [f'{{"id": "t{i}", "task": "square"}}' for i in range(500)] + ['{"id": "t42", "task": "x"}']
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskFileError, match=r"t.jsonl:501: duplicate id 't42' \(first used on line 43\)"):
        FileSource(str(path))
