"""Task content that used to crash or hang a real batch: each task still ends with one line.

Real master and local workers; the tasks come from a user module that returns what JSON or the
wire cannot carry as it is.
"""

import json

import pytest

from procs import read_results, summary

TASKS = """
from procfleet.shared.tasks import task

@task
def give(kind, n=0):
    if kind == "surrogate":
        return ["\\ud800", "ok \\udfff"]
    if kind == "bigint":
        return 10 ** 5000
    if kind == "deep":
        value = 0
        for _ in range(n):
            value = [value]
        return value
    if kind == "big":
        return "x" * n
    if kind == "echo-size":
        return len(n)
    raise ValueError(kind)
"""

MIB = 1024 * 1024


def run(spawn, tmp_path, lines, *extra, workers=2, timeout=120, env=None):
    (tmp_path / "content_tasks.py").write_text(TASKS)
    path = tmp_path / "tasks.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line) + "\n")
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--tasks", str(path), "--local-workers", str(workers),
                   "--bind", "127.0.0.1:0", "--results", str(out), "--timeout", "100", *extra,
                   cwd=tmp_path, env={"PROCFLEET_IMPORTS": "content_tasks", **(env or {})})
    code = master.wait(timeout)
    raw = out.read_bytes()
    raw.decode("utf-8")                               # strict: every line is valid UTF-8
    return code, master, {r["id"]: r for r in read_results(out)}


def test_results_json_cannot_carry_fail_alone_and_the_batch_ends(spawn, tmp_path):
    lines = [{"id": "\ud800", "task": "give", "args": ["surrogate"]},
             {"id": 1, "task": "give", "args": ["bigint"]},
             {"id": "deep-50", "task": "give", "args": ["deep", 50]},
             {"id": "deep-700", "task": "give", "args": ["deep", 700]},
             {"id": "deep-5000", "task": "give", "args": ["deep", 5000]},
             {"id": "after", "task": "square", "args": [3]}]
    code, master, results = run(spawn, tmp_path, lines)
    assert code == 1, master.stderr                 # all ended, some failed
    assert set(results) == {"\ud800", 1, "deep-50", "deep-700", "deep-5000", "after"}
    assert results["\ud800"]["result"] == ["\ud800", "ok \udfff"]
    for failed in (1, "deep-700", "deep-5000"):
        assert results[failed]["status"] == "failed"
        assert results[failed]["error"].startswith("ResultNotJSON"), results[failed]["error"]
    assert results["deep-50"]["status"] == "ok" and results["after"]["result"] == 9
    assert "Traceback" not in master.stderr
    s = summary(master)
    assert (s["ok"], s["failed"], s["unfinished"]) == (3, 3, 0)


def test_a_result_over_the_limit_fails_too_large_and_big_ones_travel_in_several_calls(
        spawn, tmp_path):
    # 20 MiB: over MAX_RESULT_BYTES; 6 x 12 MiB: together far over the 64 MiB message cap.
    lines = [{"id": "huge", "task": "give", "args": ["big", 20 * MIB]}]
    lines += [{"id": f"big{i}", "task": "give", "args": ["big", 12 * MIB]} for i in range(6)]
    code, master, results = run(spawn, tmp_path, lines, workers=1)
    assert code == 1, master.stderr
    assert results["huge"]["status"] == "failed"
    assert results["huge"]["error"].startswith("ResultTooLarge"), results["huge"]["error"][:200]
    assert all(len(results[f"big{i}"]["result"]) == 12 * MIB for i in range(6))
    assert "reconnecting" not in master.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_tasks_with_big_arguments_are_leased_within_the_message_cap(spawn, tmp_path, workers):
    # 30 x 6 MB of arguments: a worker with 16 slots asks for 32 tasks at once, and a lease
    # capped by count alone would be 180 MB, far over the message cap.
    lines = [{"id": i, "task": "give", "args": ["echo-size", "y" * (6 * 1000 * 1000)]}
             for i in range(30)]
    code, master, results = run(spawn, tmp_path, lines, "--timeout", "60", workers=workers,
                                env={"PROCFLEET_CONCURRENCY": "16"})
    assert code == 0, master.stderr
    assert sorted(results) == list(range(30))
    assert all(r["result"] == 6 * 1000 * 1000 for r in results.values())


def test_lone_surrogates_survive_the_journal_and_a_resume(spawn, tmp_path):
    lines = [{"id": "\udc00", "task": "give", "args": ["surrogate"]},
             {"id": "plain", "task": "square", "args": [4]}]
    journal = str(tmp_path / "journal.db")
    code, master, results = run(spawn, tmp_path, lines, "--journal", journal)
    assert code == 0, master.stderr
    assert results["\udc00"]["result"] == ["\ud800", "ok \udfff"]
    first = (tmp_path / "results.jsonl").read_bytes()
    # The same command again: the batch is already done; the results file is rebuilt from the
    # journal (in task order), the same lines byte for byte.
    code, master, results = run(spawn, tmp_path, lines, "--journal", journal)
    assert code == 0, master.stderr
    assert sorted((tmp_path / "results.jsonl").read_bytes().splitlines()) == \
        sorted(first.splitlines())
