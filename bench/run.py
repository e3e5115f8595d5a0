"""`python -m bench`: run every case in one process tree, print the table, and write
docs/benchmarks.md with the plot next to it. Exit 0 once the report is written and every case
that ran measured something (goals may FAIL: that is a result); 1 if a run failed."""

import argparse
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from . import compose, plot, report, service
from .machine import REPO, load_average, machine_info
from .procfleet import Procfleet, default_bin
from .procs import kill_all
from .suite import (FULL, QUICK, Plan, build_suite, evaluate_goals, run_cases, say,
                    service_skip)

#: a 1-minute load average above this × cores at start is noted as a busy machine
BUSY_LOAD = 0.5


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const=QUICK, dest="plan",
                      help="every case once with fewer tasks (3-4 minutes)")
    mode.add_argument("--full", action="store_const", const=FULL, dest="plan",
                      help="every case 3 times at the goals' sizes (the default)")
    p.add_argument("--runs", type=int, help="runs per case (default: 3 full, 1 quick)")
    p.add_argument("--tasks", type=int, help="tiny tasks per throughput run")
    p.add_argument("--procfleet", metavar="PATH",
                   default=os.environ.get("PROCFLEET_BIN") or default_bin(),
                   help="the procfleet executable to measure (env PROCFLEET_BIN; default: the "
                        "one next to this python)")
    p.add_argument("--no-compose", action="store_true", help="leave out the compose case")
    p.add_argument("--build-images", action="store_true",
                   help="run scripts/images.sh first when Docker is usable (make bench does)")
    p.add_argument("--compose-images", nargs=2, metavar=("MASTER", "WORKER"),
                   help="run the compose case on these images instead of procfleet-*:latest")
    p.add_argument("--only", metavar="KEYS",
                   help="comma-separated case keys or prefixes to run (the others are listed as "
                        "skipped); keys: procfleet-N, recipe-batched-N, recipe-percall-N, "
                        "journal-4, pool-1, pool-1000, compose-4, distributed, memory-N, recovery, "
                        "service-executor, service-latency, service-fairness, service-abandoned "
                        "(`service` for the four)")
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="a line for the report's notes, e.g. which build of procfleet this is")
    p.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md",
                   help="the Markdown report; the PNG goes next to it (default docs/benchmarks.md)")
    args = p.parse_args(argv)
    plan = args.plan or FULL
    if args.runs or args.tasks:
        plan = Plan(plan.name, args.runs or plan.runs, args.tasks or plan.tasks,
                    min(plan.percall_tasks, args.tasks or plan.percall_tasks),
                    plan.worker_counts, plan.memory_sizes)
    if plan.runs < 1 or plan.tasks < 1:
        p.error("--runs and --tasks must be at least 1")
    args.plan = plan
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # Ctrl-C and SIGTERM unwind through the finally below, which kills children and compose.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with tempfile.TemporaryDirectory(prefix="procfleet-bench-") as tmp:
            return _run(args, argv, Path(tmp))
    except KeyboardInterrupt:
        print("bench: interrupted; children and containers removed", file=sys.stderr)
        return 130
    finally:
        kill_all()
        compose.down_all()


def _run(args, argv: list[str], workdir: Path) -> int:
    started = time.monotonic()
    plan: Plan = args.plan
    pf = Procfleet(args.procfleet, workdir)
    notes: list[str] = list(args.note)
    if plan.name == "quick":
        notes.append("Quick run: fewer tasks and one run per case, so the ratios are indicative; "
                     "`make bench` measures at the goals' sizes.")
    machine = machine_info(plan, argv, pf.executable)
    cores = len(os.sched_getaffinity(0))
    busy = os.getloadavg()[0]
    if busy > BUSY_LOAD * cores:
        notes.append(f"Other work was running when the suite started (load average {busy:.1f} on "
                     f"{cores} cores): the numbers are noisier than usual.")
    say(f"procfleet: {pf.executable}; {plan.name} plan: {plan.runs} run(s) per case")

    suite = build_suite(args, plan, pf, notes)
    run_cases(suite.cases, plan.runs)
    if suite.recovery_seen:
        seen = Counter(suite.recovery_seen)
        notes.append("Recovery seen through: " + ", ".join(
            f"{how} ({n} of {len(suite.recovery_seen)} runs)" for how, n in seen.items()) + ".")
    goals = evaluate_goals(suite, plan)
    service_plan = service.plan_for(plan)
    served = service.run(pf, service_plan, service_skip(args, pf))
    executor_goal = service.goal(served)
    goals.append(executor_goal)

    png = args.output.with_suffix(".png")
    why_not = plot.plot_scaling(suite.scaling, png, f"tasks/s against workers ({plan.name} run, "
                                f"{plan.tasks:,} square tasks; per-call recipe "
                                f"{plan.percall_tasks:,})")
    if why_not:
        notes.append(f"No plot: {why_not}.")
    machine["load average at end"] = load_average()
    machine["suite wall time"] = f"{time.monotonic() - started:.0f} s"
    failed = [s for s in suite.throughput + suite.other + served.series if s.errors]
    told = set()            # a service group's error is on each of its figures: once here
    for s in failed:
        for err in s.errors:
            if err not in told:
                told.add(err)
                notes.append(f"{s.label}: {' '.join(err.split())[:600]}")
    alone = "python -m bench.service" + (" --quick" if service_plan.name == "quick" else "")
    provenance = (f"Measured in this run at {service_plan.name} sizes ({served.seconds:.0f} s of "
                  f"it); `{alone}` measures them alone.")
    section = report.service_section(served.series, executor_goal, provenance,
                                     service.method(service_plan))
    text = report.render(machine, suite.throughput, suite.other, goals, notes,
                         None if why_not else png.name, FULL.runs, service=section)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(report.console(suite.throughput, suite.other, goals))
    print()
    print(report.service_console(served.series, executor_goal))
    say(f"wrote {args.output}" + ("" if why_not else f" and {png}"))
    if failed:
        say(f"{len(failed)} case(s) failed: " + ", ".join(s.key for s in failed))
        return 1
    return 0
