"""The benchmark suite's pure parts: series statistics, goals, the report (the summary line's
parser is the master's own: test_summary.py)."""

import pytest

from bench import report
from bench.compose import override_file
from bench.procfleet import Procfleet, RunFailed, check_results
from bench.run import parse_args
from bench.suite import QUICK, Case, Suite, evaluate_goals
from bench.stats import (FAIL, PASS, SKIP, Missing, Series, at_least, below, memory_goal,
                         missing_from, ratio)

def series(key, *values, **kw):
    return Series(key, key, values=list(values), **kw)


# -- series ------------------------------------------------------------------------------------
def test_series_median_min_max():
    s = series("a", 30.0, 10.0, 20.0)
    assert (s.runs, s.median, s.min, s.max) == (3, 20.0, 10.0, 30.0)
    assert series("b", 1.0, 2.0, 3.0, 10.0).median == 2.5


def test_empty_series_has_no_statistics():
    s = series("a")
    assert (s.median, s.min, s.max, s.ok) == (None, None, None, False)


def test_a_series_with_a_failed_run_is_not_usable():
    s = series("a", 5.0)
    s.errors.append("results file: 199999 lines")
    assert not s.ok


def test_ratio_of_medians():
    assert ratio(series("a", 30.0, 60.0, 90.0), series("b", 100.0, 200.0)) == pytest.approx(0.4)


def test_ratio_none_when_a_side_failed_or_was_skipped():
    failed = series("a", 5.0, errors=["lost results"])
    skipped = series("b", skipped="no --journal")
    good = series("c", 5.0)
    assert ratio(failed, good) is None
    assert ratio(good, skipped) is None
    assert ratio(good, None) is None


# -- goals -------------------------------------------------------------------------------------
def test_at_least_pass_at_the_threshold_fail_below_skip_without_value():
    assert at_least("g", 0.6, 0.6).status == PASS
    assert at_least("g", 0.59, 0.6).status == FAIL
    skipped = at_least("g", None, 0.6, missing=Missing(SKIP, "journal not there"))
    assert (skipped.status, skipped.note) == (SKIP, "journal not there")
    assert at_least("g", 1.0, 0.6, want=0.9).target == "≥ 0.6× (want 0.9×)"


def test_below_is_strict():
    assert below("g", 2.9, 3.0, unit=" s").status == PASS
    assert below("g", 3.0, 3.0, unit=" s").status == FAIL
    assert below("g", None, 3.0).status == SKIP


def test_a_goal_whose_case_failed_fails_and_one_left_out_is_skipped():
    failed = series("procfleet-4", errors=["results file: 199999 lines"])
    left_out = series("journal-4", skipped="no --journal")
    assert missing_from(left_out, failed) == Missing(SKIP, "journal-4 skipped: no --journal")
    assert missing_from(series("b", 1.0), failed) == Missing(FAIL, "procfleet-4: a run failed")
    assert at_least("g", None, 0.6, missing=missing_from(failed)).status == FAIL
    assert memory_goal("m", failed, series("l", 70.0), 200, 1.25).status == FAIL


def test_memory_goal_limit_and_growth():
    assert memory_goal("m", series("s", 60.0), series("l", 70.0), 200, 1.25).status == PASS
    assert memory_goal("m", series("s", 60.0), series("l", 90.0), 200, 1.25).status == FAIL
    assert memory_goal("m", series("s", 190.0), series("l", 210.0), 200, 1.25).status == FAIL
    assert memory_goal("m", series("s", 60.0), None, 200, 1.25).status == SKIP


def test_evaluate_goals_uses_the_four_worker_cases():
    suite = Suite()
    for s in [series("procfleet-4", 60_000.0), series("procfleet-1", 1.0),
              series("recipe-batched-4", 100_000.0), series("recipe-percall-4", 1_000.0),
              series("journal-4", skipped="no --journal"), series("compose-4", 20_000.0),
              series("distributed", 48.0), series("memory-10000", 50.0),
              series("memory-100000", 55.0), series("recovery", 2.4)]:
        suite.cases.append(Case(s, lambda: 0.0))
    goals = evaluate_goals(suite, QUICK)
    status = [g.status for g in goals]
    assert status == [PASS, PASS, SKIP, FAIL, PASS, FAIL, PASS]   # 48 of 64: 75% < 90%
    assert goals[0].measured == "0.6×"
    assert goals[1].measured == "60×"
    assert goals[3].measured == "0.75"
    suite.cases[6] = Case(series("distributed", 58.0), lambda: 0.0)
    assert evaluate_goals(suite, QUICK)[3].status == PASS            # 58 of 64: 91%
    assert "no --journal" in goals[2].note


# -- rendering ---------------------------------------------------------------------------------
def test_throughput_table_rows():
    rows = report.throughput_table([
        series("p", 50_000.0, 53_908.4, 40_000.0, tasks=200_000),
        series("j", tasks=200_000, skipped="no --journal | yet"),
    ]).splitlines()
    assert rows[0] == "| case | tasks | runs | median tasks/s | min | max | note |"
    assert rows[2] == "| p | 200,000 | 3 | 50,000 | 40,000 | 53,908 |  |"
    assert rows[3] == "| j | 200,000 | 0 | — | — | — | skipped: no --journal \\| yet |"


def test_other_table_keeps_decimals_for_small_units():
    row = report.other_table([series("r", 2.31, 2.5, 2.2, unit="s")]).splitlines()[2]
    assert row == "| r | 3 | 2.31 | 2.20 | 2.50 | s |  |"


def test_failed_series_shows_its_first_error():
    s = series("p", tasks=10)
    s.errors.append("run 1: RunFailed: master exited 1:\nTypeError")
    assert "1 failed run(s): run 1: RunFailed: master exited 1: TypeError |" in \
        report.throughput_table([s])


def test_render_has_every_section():
    goals = [at_least("1. x", 0.7, 0.6)]
    text = report.render({"CPU": "test cpu, 2 cores"}, [series("p", 1.0, tasks=1)],
                         [series("r", 2.0, unit="s")], goals, ["a note"], "benchmarks.png")
    for needle in ("# Benchmarks", "- CPU: test cpu, 2 cores", "## Throughput", "## Goals",
                   "| 1. x | 0.7× | ≥ 0.6× | **PASS** |  |", "![throughput against workers]"
                   "(benchmarks.png)", "- a note", "make bench-quick"):
        assert needle in text


# -- the results check and options ----------------------------------------------------------------
def test_check_results_refuses_lost_or_duplicated_results(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id":"0"}\n{"id":"1"}\n{"id":"2"}\n')
    check_results(path, 3)
    path.write_text('{"id":"0"}\n{"id":"1"}\n{"id":"1"}\n')
    with pytest.raises(RunFailed, match="2 distinct ids"):
        check_results(path, 3)
    path.write_text('{"id":"0"}\n{"id":"1"}\n')
    with pytest.raises(RunFailed, match="2 lines"):
        check_results(path, 3)


def test_quick_with_fewer_tasks_shrinks_the_per_call_recipe_too():
    plan = parse_args(["--quick", "--tasks", "1000", "--procfleet", "x"]).plan
    assert (plan.name, plan.runs, plan.tasks, plan.percall_tasks) == ("quick", 1, 1000, 1000)
    assert parse_args(["--procfleet", "x"]).plan.runs == 3


def test_journal_detected_from_the_masters_help_only_as_a_whole_option(tmp_path):
    pf = Procfleet("procfleet", tmp_path)
    pf._help = "Options:\n  --journal-fsync  sync often\n  --results PATH  where results go\n"
    assert not pf.has_master_option("--journal")
    pf._help += "  --journal PATH  append each outcome to PATH\n"
    assert pf.has_master_option("--journal")


def test_compose_override_sets_both_images():
    both = override_file(10, ("m:1", "w:1"))
    assert "  master:\n    image: m:1\n" in both and "  worker:\n    image: w:1\n" in both
