"""bench.service's pure parts: the percentile, the client summary parser, the plans, the goal,
and the section that --write splices into docs/benchmarks.md."""

import pytest

from bench import report, service
from bench.procfleet import RunFailed
from bench.serve import SubmitRun, client_summary, events_logged, task_lines
from bench.stats import FAIL, PASS, SKIP, percentile
from bench.suite import FULL as SUITE_FULL, QUICK as SUITE_QUICK, Plan


def test_percentile_is_nearest_rank_a_measured_value():
    values = [float(v) for v in range(1, 201)]          # 1..200
    assert percentile(values, 50) == 100.0
    assert percentile(values, 99) == 198.0
    assert percentile(values, 100) == 200.0
    assert percentile([5.0, 1.0, 3.0], 99) == 5.0        # few samples: the largest
    assert percentile([7.0], 1) == 7.0
    assert percentile([], 99) is None


def test_client_summary_reads_the_submit_line_only():
    text = ("17:39:37 submit: job e5a2 on master 127.0.0.1:1\n"
            '17:39:37 master: summary: {"ok": 5}\n'
            '17:39:38 submit: summary: {"job": "e5a2", "tasks": 1, "ok": 1, "seconds": 0.0}\n'
            "17:39:38 submit: something after\n")
    assert client_summary(text) == {"job": "e5a2", "tasks": 1, "ok": 1, "seconds": 0.0}
    assert client_summary(text, "master") == {"ok": 5}
    assert client_summary("17:39:38 submit: refused 'summary: {' line\n") is None
    assert client_summary('17:39:38 submit: summary: {"cut') is None


def test_events_logged_adds_what_the_masters_throttle_left_out():
    log = ("18:00:01 master: job a (<stdin>): its client was silent for more than 2 s; dropped\n"
           "18:00:02 master: job b opened by 127.0.0.1:4\n"
           "18:00:09 master: 7 more client gone events since the last of these lines, not logged"
           " one by one (28 in all)\n"
           "18:00:09 master: 3 more silent events since the last of these lines, not logged one"
           " by one (3 in all)\n"
           "18:00:12 master: job c (<stdin>): its client was silent for more than 2 s; dropped\n")
    assert events_logged(log, "client was silent for more than", "client gone") == 9
    assert events_logged("", "client was silent", "client gone") == 0


def test_a_submit_run_counts_only_when_every_task_ended_ok():
    ok = SubmitRun(0, 0.1, {"ok": 10, "unfinished": 0}, "", "")
    assert ok.check(10)["ok"] == 10
    for bad in (SubmitRun(1, 0.1, {"ok": 9, "failed": 1, "unfinished": 0}, "", "x"),
                SubmitRun(0, 0.1, {"ok": 9, "unfinished": 0}, "", ""),
                SubmitRun(3, 0.1, {"ok": 10, "unfinished": 2}, "", ""),
                SubmitRun(0, 0.1, None, "", "no summary")):
        with pytest.raises(RunFailed):
            bad.check(10)


def test_task_lines_are_task_file_lines():
    assert task_lines(2, "sleep", [0.05], "w") == [
        '{"id": "w0", "task": "sleep", "args": [0.05]}',
        '{"id": "w1", "task": "sleep", "args": [0.05]}']


def test_plans_follow_the_suites_runs_and_tasks():
    assert service.plan_for(SUITE_FULL) == service.FULL
    quick = service.plan_for(SUITE_QUICK)
    assert (quick.name, quick.runs, quick.map_tasks) == ("quick", 1, SUITE_QUICK.tasks)
    assert quick.big_tasks < service.FULL.big_tasks
    custom = service.plan_for(Plan("full", 2, 5_000, 5_000, (4,), (1, 2)))
    assert (custom.runs, custom.map_tasks, custom.big_tasks) == (2, 5_000, 1_000_000)


def test_results_hold_every_figure_once_with_the_checkpoints_of_the_plan():
    results = service.Results(service.QUICK)
    keys = [s.key for s in results.series]
    assert len(keys) == len(set(keys))
    assert {"map", "cli", "latency-cli", "latency-executor", "small-busy", "big-progress",
            "rss-0", "rss-10", "rss-20", "drop"} <= set(keys)
    assert set(results.groups) == set(service.GROUPS)


def test_the_executor_goal_is_the_ratio_of_medians():
    results = service.Results(service.FULL)
    results["map"].values += [140_000.0, 150_000.0, 160_000.0]
    results["cli"].values += [200_000.0, 200_000.0, 190_000.0]
    g = service.goal(results)
    assert (g.status, g.measured) == (PASS, "0.75×")
    results["map"].values[:] = [60_000.0]
    assert service.goal(results).status == FAIL
    results["cli"].errors.append("run 1: RunFailed: master exited 1")
    assert service.goal(results).status == FAIL
    assert service.goal(service.Results(service.FULL)).status == SKIP


def test_the_section_shows_figures_goal_and_commands():
    results = service.Results(service.FULL)
    results["map"].values.append(60_000.0)
    results["cli"].values.append(200_000.0)
    results["latency-cli"].values += [float(v) for v in range(100, 300)]
    results["drop"].errors.append("RunFailed: not abandoned job 3 dropped | within 12 s")
    text = report.service_section(results.series, service.goal(results), "Measured here.",
                                  service.method(service.FULL))
    assert text.startswith(report.SERVICE_TITLE + "\n\nMeasured here.\n")
    assert "| procfleet submit, one-task job, idle service (process start included) | 200 | " \
           "200 | 297 | 100 | 299 | ms |  |" in text
    assert "**FAIL** 7. FleetExecutor.map ÷ CLI batch, 200,000 tiny tasks, 4 local workers: " \
           "FleetExecutor.map 60,000 tasks/s ÷ CLI batch 200,000 tasks/s = 0.3× " in text
    assert "dropped \\| within 12 s" in text
    assert "--demo 200000" in text and "--lease-timeout 2" in text


def test_splice_replaces_the_section_and_leaves_the_rest():
    old = "# Benchmarks\n\n## Goals\n\ngoals\n\n" + report.SERVICE_TITLE + "\n\nold\n\n" \
          "## Notes\n\n- a note\n"
    new = report.SERVICE_TITLE + "\n\nnew figures\n"
    assert report.splice_section(old, new) == \
        "# Benchmarks\n\n## Goals\n\ngoals\n\n" + new + "\n## Notes\n\n- a note\n"
    assert report.splice_section(report.splice_section(old, new), new) == \
        report.splice_section(old, new)


def test_splice_puts_a_first_section_before_the_notes_or_the_method_or_at_the_end():
    new = report.SERVICE_TITLE + "\n\nfigures\n"
    with_notes = "# B\n\n## Goals\n\ng\n\n## Notes\n\n- n\n\n## How each number is measured\n"
    assert report.splice_section(with_notes, new) == \
        "# B\n\n## Goals\n\ng\n\n" + new + "\n## Notes\n\n- n\n\n## How each number is measured\n"
    method_only = "# B\n\n## How each number is measured\n\nm\n"
    assert report.splice_section(method_only, new) == \
        "# B\n\n" + new + "\n## How each number is measured\n\nm\n"
    assert report.splice_section("# B\n", new) == "# B\n\n" + new + "\n"
    assert report.splice_section("", new) == new + "\n"


def test_render_puts_the_service_section_before_the_notes():
    text = report.render({"CPU": "x"}, [], [], [], ["a note"], None,
                         service=report.SERVICE_TITLE + "\n\nfigures\n")
    assert text.index(report.SERVICE_TITLE) < text.index("## Notes") < \
        text.index("## How each number is measured")


def test_only_takes_known_groups():
    assert service.parse_args(["--only", "latency, abandoned", "--procfleet", "x"]).only == \
        {"latency", "abandoned"}
    assert service.parse_args(["--quick", "--runs", "2", "--procfleet", "x"]).plan == \
        service.QUICK.__class__(**{**service.QUICK.__dict__, "runs": 2})
    with pytest.raises(SystemExit):
        service.parse_args(["--only", "latncy", "--procfleet", "x"])
