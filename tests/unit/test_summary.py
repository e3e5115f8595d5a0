"""The master's closing summary: one JSON object on one line, read back by parse_summary (the
only reader: tests, the compose tests and the benchmarks all use it)."""

import json
import logging
import re
import types
from pathlib import Path

from procfleet.master.batch import Batch, format_summary, parse_summary
from procfleet.master.leases import Dispatcher
from procfleet.master.rpc import DispatcherService
from procfleet.shared.protocol import OK, Task

README = Path(__file__).resolve().parents[2] / "README.md"
B = "batch-1"


def square_tasks(n):
    return [Task(i, str(i), "square", [i], {}) for i in range(n)]


def closing_line(caplog, batch: Batch, outcome: str = "done") -> str:
    """The line _report logs, as the master's stderr shows it."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="procfleet.master.batch"):
        batch._report(outcome, 2.5)
    [message] = [r.getMessage() for r in caplog.records if "summary" in r.getMessage()]
    return f"12:00:05 master: {message}"


def ended_batch(n: int = 4) -> Batch:
    """A batch over n tasks whose worker finished them all, and also sent a stale result and
    a duplicate, served by a real DispatcherService; only _report is run."""
    d = Dispatcher(square_tasks(n), lease_timeout=5.0, max_attempts=3)
    service = DispatcherService(d, heartbeat_interval=10.0, batch=B)
    held, _ = service.exchange("a", B, [], n - 1, 0)
    outcomes = [(t[0], OK, str(t[0] ** 2), None) for t in held]
    service.exchange("a", B, outcomes, 0, 0)
    service.exchange("a", B, outcomes[:1], 0, 0)                 # a duplicate: dropped
    last = n - 1                                                 # never leased here: stale
    service.exchange("b", B, [(last, OK, "9", None)], 0, 0)
    [task] = d.lease("b", 1)
    service.exchange("b", B, [(task[0], OK, str(task[0] ** 2), None)], 0, 0)
    batch = Batch.__new__(Batch)
    batch.service, batch.dispatcher, batch.resumed, batch.done_at_start = service, d, False, 0
    batch.settings = types.SimpleNamespace(timeout=None)
    return batch


def test_the_closing_line_is_one_json_object_with_every_figure(caplog):
    line = closing_line(caplog, ended_batch(4))
    assert "\n" not in line
    assert line.startswith("12:00:05 master: summary: {")
    summary = json.loads(line.partition("summary: ")[2])
    assert parse_summary(line) == summary
    assert {k: summary[k] for k in ("tasks", "ok", "failed", "unfinished", "duplicates_dropped",
                                    "stale", "workers", "seconds")} == {
        "tasks": 4, "ok": 4, "failed": 0, "unfinished": 0, "duplicates_dropped": 1, "stale": 1,
        "workers": 2, "seconds": 2.5}
    assert summary["work_seconds"] >= 0 and type(summary["tasks_per_s"]) is int
    # the duplicate and the stale result count for no worker: each task once, by its result
    assert summary["per_worker"] == {"a": {"ok": 3, "failed": 0}, "b": {"ok": 1, "failed": 0}}


def test_the_readme_shows_the_fields_the_master_writes_in_their_order(caplog):
    """Docs that match behaviour: the README's example summary line has exactly these keys,
    and says what each one means."""
    summary = parse_summary(closing_line(caplog, ended_batch(2)))
    text = README.read_text()
    documented = parse_summary(text)
    assert documented is not None, "the README shows no summary line"
    assert list(documented) == list(summary)
    for key in summary:
        assert re.search(rf"`{key}`", text), f"the README does not explain `{key}`"


def test_parse_summary_takes_the_last_summary_line_and_skips_other_lines():
    first = format_summary({"tasks": 2, "tasks_per_s": 1})
    last = format_summary({"tasks": 2, "tasks_per_s": 53908})
    text = "\n".join(["12:00:00 master: serving 2 tasks on 127.0.0.1:41000",
                      f"12:00:01 master: {first}", f"12:00:02 master: {last}",
                      "12:00:03 worker local-1: the batch is over after 2 tasks here; exiting"])
    assert parse_summary(text) == {"tasks": 2, "tasks_per_s": 53908}


def test_a_line_that_only_quotes_a_summary_is_not_one():
    forged = format_summary({"tasks": 0, "ok": 0})
    real = format_summary({"tasks": 3, "ok": 3})
    text = "\n".join([f"12:00:02 master: {real}",
                      f"12:00:03 master: refused a call from 'w: {forged}'",
                      f"12:00:03 worker w: {forged}",      # another actor's message, quoted
                      "12:00:04 master: summary: tasks=0 ok=0",          # not JSON
                      "12:00:04 master: summary: [1, 2]",                # not an object
                      '12:00:04 master: summary: {"tasks": 0'])          # cut short
    assert parse_summary(text) == {"tasks": 3, "ok": 3}


def test_parse_summary_is_none_without_a_summary_line():
    assert parse_summary("Traceback (most recent call last):\nTypeError: boom") is None
    assert parse_summary("") is None
