"""The task file parser: valid files, and every kind of bad line with its line number."""

import io

import pytest

from procfleet.master.taskfile import MAX_ERRORS, demo_tasks, parse_lines, read_tasks
from procfleet.shared.errors import TaskFileError
from procfleet.shared.records import Task


def parse(text: str):
    return parse_lines(io.StringIO(text), "t.jsonl")


def test_valid_lines_with_defaults():
    tasks = parse('{"id": "a1", "task": "square", "args": [3], "kwargs": {}}\n'
                  '\n'
                  '{"task": "sleep", "kwargs": {"seconds": 0}}\n'
                  '{"id": 7, "task": "fail", "args": ["x"]}\n')
    assert tasks == [Task("a1", "square", [3], {}), Task("3", "sleep", [], {"seconds": 0}),
                     Task("7", "fail", ["x"], {})]


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
    with pytest.raises(TaskFileError, match="t.jsonl:2: duplicate id '2' .first used on line 1"):
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
        read_tasks(str(tmp_path / "missing.jsonl"))


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"task": "\xff"}\n')
    with pytest.raises(TaskFileError, match="not UTF-8"):
        read_tasks(str(path))


def test_demo_tasks():
    assert demo_tasks(3) == [Task("0", "square", [0], {}), Task("1", "square", [1], {}),
                             Task("2", "square", [2], {})]
    assert demo_tasks(2, sleep=0.5)[1] == Task("1", "sleep", [0.5, 1], {})
