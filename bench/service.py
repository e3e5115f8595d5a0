"""Service mode and FleetExecutor, measured: FleetExecutor.map against the CLI batch, one-task
round trips on an idle service, a small job's time while a big one runs, and the master's memory
over abandoned jobs.

    python -m bench.service [--quick] [--only executor,latency,fairness,abandoned] [--write]

`python -m bench` runs the same groups (keys service-executor, service-latency, ...) and reports
them in docs/benchmarks.md; `--write` puts this run's section into that file instead, in place of
the one there, leaving the rest of the report as it was.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from procfleet.shared.errors import ProcfleetError

from . import report
from .machine import REPO, git_describe, load_average
from .fleet_client import WARMUP as EXECUTOR_WARMUP
from .procfleet import Procfleet, RunFailed, batch_timeout, default_bin
from .procs import Child, ChildTimeout, kill_all
from .serve import Service, client_summary, task_lines, write_lines
from .stats import Goal, Series, at_least, missing_from, ratio

GROUPS = ("executor", "latency", "fairness", "abandoned")
#: local workers of every service and executor here, as in the batch goals
WORKERS = 4
#: FleetExecutor.map's tasks/s at least this share of the CLI batch's
EXECUTOR_GOAL = 0.7
#: one-task jobs on the idle service before the latency clock starts
LATENCY_WARMUP = 3
#: the small job of the fairness case, and how far the big one must be before it is submitted
SMALL_TASKS, SMALL_SLEEP = 10, 0.05
BIG_STARTED = 0.01
#: abandoned jobs: their tasks, the service's lease timeout, tasks done before the client is
#: SIGKILLed, and the bound on the master's drop beyond the lease timeout
ABANDON_SLEEP, ABANDON_LEASE, ABANDON_AFTER, DROP_MARGIN = 0.01, 2.0, 50, 10.0
#: how long the master's log may take to tally the event lines its throttle left out
THROTTLE_TALLY = 5.0
#: bound on one short client run (a one-task or ten-task job, a client starting its job)
SHORT_RUN = 60.0

ERRORS = (RunFailed, ChildTimeout, ProcfleetError, OSError, subprocess.SubprocessError,
          EOFError, ValueError, KeyError)


@dataclass(frozen=True)
class ServicePlan:
    name: str
    runs: int               # FleetExecutor.map and the CLI batch, each
    map_tasks: int
    latency_samples: int    # one-task jobs, and executor round trips
    big_tasks: int
    small_repeats: int
    abandoned_jobs: int     # RSS read after half and after all of them
    abandoned_tasks: int


FULL = ServicePlan("full", 3, 200_000, 200, 1_000_000, 5, 100, 5_000)
QUICK = ServicePlan("quick", 1, 20_000, 50, 200_000, 3, 20, 5_000)


METHOD = """\
How each figure is measured (`python -m bench.service --only GROUP` measures one group again at
these sizes, `--quick` at smaller ones; `--write` puts its section here):

- **executor** (`--only executor`), {runs} run(s), in this order: the CLI batch `procfleet master
  --demo {map_tasks} --local-workers 4 --wait-workers 4 --bind 127.0.0.1:0 --results FILE` (its
  summary's tasks_per_s, first lease to last result); `python -m bench.fleet_client map --tasks
  {map_tasks}`, which times `list(ex.map(square, range({map_tasks})))` in `with
  FleetExecutor(local_workers=4, wait_workers=4)` (workers joined before the clock starts, every
  result checked); and `procfleet submit FILE --results /dev/null` of a {map_tasks}-line `square`
  file to a fresh `procfleet master --serve --bind 127.0.0.1:0 --local-workers 4` (its summary's
  tasks_per_s, from the job's opening to its last result). The goal is the ratio of the medians.
- **latency** (`--only latency`): a `--serve` master with 4 local workers, idle. {samples}
  `procfleet submit ONE.jsonl --master HOST:PORT` of a one-task job (`square(3)`), one after
  another, each timed from the process's start to its exit ({warmup} more first, not counted);
  then `python -m bench.fleet_client latency --master HOST:PORT --samples {samples}`: one
  `FleetExecutor(master=...)` (one job), {samples} `submit(square, 3).result()` one at a time
  ({executor_warmup} more first). p99 is the nearest-rank percentile: a measured value.
- **fairness** (`--only fairness`): a `--serve` master with 4 local workers; {repeats} times: the
  small job, `procfleet submit` of {small_tasks} × `sleep({small_sleep})`, on the idle service;
  then `procfleet submit BIG --results /dev/null` of a {big_tasks}-task `square` file and, once
  {big_started} of its tasks are done (`ping()["done"]`), the same small job. The big job must
  still be running when the small one ends, else the repeat fails. Wall time includes the
  `procfleet submit` process's start; "the job's own seconds" is its summary's `seconds`, from the
  job's opening to its last result. Progress is the big job's done tasks when the small job ended.
- **abandoned** (`--only abandoned`): a `--serve --lease-timeout {lease}` master with 4 local
  workers; one complete warm-up job of {abandoned_tasks} × `sleep(0)`; then {jobs} times: a
  `procfleet submit -` fed {abandoned_tasks} × `sleep({abandon_sleep})` through a pipe,
  SIGKILLed once {abandon_after} of its tasks are done, then a wait (bounded) for `ping()["jobs"]`
  to read 0. RSS is the master's VmRSS from /proc (its local workers not counted) after the
  warm-up, after {half} and after {jobs} drops; the run fails unless the master logged {jobs}
  "client was silent" drops and kept its 4 workers.
"""


def method(plan: ServicePlan) -> str:
    """How each figure of `plan` is measured, with the commands (Markdown)."""
    return METHOD.format(
        runs=plan.runs, map_tasks=plan.map_tasks, samples=plan.latency_samples,
        warmup=LATENCY_WARMUP, executor_warmup=EXECUTOR_WARMUP, repeats=plan.small_repeats,
        small_tasks=SMALL_TASKS, small_sleep=f"{SMALL_SLEEP:g}", big_tasks=plan.big_tasks,
        big_started=f"{big_started(plan):,}", lease=f"{ABANDON_LEASE:g}",
        abandoned_tasks=plan.abandoned_tasks, abandon_sleep=f"{ABANDON_SLEEP:g}",
        abandon_after=ABANDON_AFTER, jobs=plan.abandoned_jobs, half=plan.abandoned_jobs // 2)


def big_started(plan: ServicePlan) -> int:
    """Tasks of the big job done before the small one is submitted."""
    return max(1, int(plan.big_tasks * BIG_STARTED))


def plan_for(suite_plan) -> ServicePlan:
    """The sizes for a `python -m bench` plan: its runs and tiny-task count for the map case."""
    base = QUICK if suite_plan.name == "quick" else FULL
    return replace(base, runs=suite_plan.runs, map_tasks=suite_plan.tasks)


class Results:
    """Every figure of one run as a Series (one value per run or per sample), by key, grouped."""

    def __init__(self, plan: ServicePlan) -> None:
        self.plan = plan
        self.groups: dict[str, list[Series]] = {g: [] for g in GROUPS}
        self.seconds = 0.0
        T, B, J = plan.map_tasks, plan.big_tasks, plan.abandoned_jobs
        small = f"{SMALL_TASKS} × sleep({SMALL_SLEEP:g}) job"
        for group, key, label, unit in [
            ("executor", "map", f"FleetExecutor(local_workers={WORKERS}).map(square, "
             f"{T:,} items)", "tasks/s"),
            ("executor", "cli", f"CLI batch: master --demo {T:,} --local-workers {WORKERS}",
             "tasks/s"),
            ("executor", "file", f"procfleet submit of a {T:,}-task file, --serve master, "
             f"{WORKERS} local workers", "tasks/s"),
            ("latency", "latency-cli", "procfleet submit, one-task job, idle service "
             "(process start included)", "ms"),
            ("latency", "latency-executor", "FleetExecutor(master=…).submit(square, 3).result()"
             " (one job, one task at a time)", "ms"),
            ("fairness", "small-busy", f"{small} while a {B:,}-task job runs: submit wall time",
             "s"),
            ("fairness", "small-busy-job", "… the same, the job's own seconds (submit summary)",
             "s"),
            ("fairness", "small-idle", f"{small} on the idle service: submit wall time", "s"),
            ("fairness", "small-idle-job", "… the same, the job's own seconds (submit summary)",
             "s"),
            ("fairness", "big-progress", f"the {B:,}-task job's progress when the small job "
             "ended", "%"),
            ("abandoned", "rss-0", "master RSS after one warm-up job", "MB"),
            ("abandoned", f"rss-{J // 2}", f"master RSS after {J // 2} abandoned jobs", "MB"),
            ("abandoned", f"rss-{J}", f"master RSS after {J} abandoned jobs", "MB"),
            ("abandoned", "drop", f"client SIGKILLed → job dropped (lease timeout "
             f"{ABANDON_LEASE:g} s)", "s"),
        ]:
            self.groups[group].append(Series(key, label, unit=unit))

    def __getitem__(self, key: str) -> Series:
        return next(s for group in self.groups.values() for s in group if s.key == key)

    @property
    def series(self) -> list[Series]:
        return [s for group in self.groups.values() for s in group]

    @property
    def failed(self) -> list[Series]:
        return [s for s in self.series if s.errors]


def goal(results: Results) -> Goal:
    """FleetExecutor.map ÷ the CLI batch, medians of the same run."""
    fleet, cli = results["map"], results["cli"]
    return at_least(f"7. FleetExecutor.map ÷ CLI batch, {results.plan.map_tasks:,} tiny tasks, "
                    f"{WORKERS} local workers", ratio(fleet, cli), EXECUTOR_GOAL,
                    missing=missing_from(fleet, cli))


# -- the groups ----------------------------------------------------------------------------------
def measure_executor(pf: Procfleet, plan: ServicePlan, r: Results) -> None:
    T = plan.map_tasks
    tasks = pf.task_file(T)
    for run in range(plan.runs):
        r["cli"].values.append(pf.demo(T, WORKERS).summary["tasks_per_s"])
        out = fleet_client(pf, ["map", "--tasks", str(T), "--local-workers", str(WORKERS)],
                           batch_timeout(T))
        r["map"].values.append(out["tasks_per_s"])
        with Service(pf, WORKERS) as svc:
            submitted = svc.submit(tasks, os.devnull, batch_timeout(T)).check(T)
        r["file"].values.append(submitted["tasks_per_s"])
        say(f"executor run {run + 1}/{plan.runs}: map {out['tasks_per_s']:,.0f}, CLI batch "
            f"{r['cli'].values[-1]:,.0f}, submit {submitted['tasks_per_s']:,.0f} tasks/s")


def measure_latency(pf: Procfleet, plan: ServicePlan, r: Results) -> None:
    one = write_lines(pf.path("one-task"), ['{"id": 1, "task": "square", "args": [3]}'])
    n = plan.latency_samples
    with Service(pf, WORKERS) as svc:
        for i in range(LATENCY_WARMUP + n):
            run = svc.submit(one, timeout=SHORT_RUN)
            run.check(1)
            if json.loads(run.stdout)["result"] != 9:
                raise RunFailed(f"square(3) came back as {run.stdout.strip()}")
            if i >= LATENCY_WARMUP:
                r["latency-cli"].values.append(run.wall * 1000)
        out = fleet_client(pf, ["latency", "--master", svc.address, "--samples", str(n)],
                           SHORT_RUN + n * 2.0)
        r["latency-executor"].values.extend(out["ms"])


def measure_fairness(pf: Procfleet, plan: ServicePlan, r: Results) -> None:
    B = plan.big_tasks
    small = write_lines(pf.path("small-job"), task_lines(SMALL_TASKS, "sleep", [SMALL_SLEEP]))
    big_file = pf.task_file(B)
    started = big_started(plan)
    with Service(pf, WORKERS) as svc:
        for rep in range(plan.small_repeats):
            svc.wait_until(lambda p: p["jobs"] == 0, SHORT_RUN, "idle")
            idle = svc.submit(small, timeout=SHORT_RUN)
            idle_summary = idle.check(SMALL_TASKS)
            big = svc.start_submit(big_file, os.devnull)
            try:
                svc.wait_until(lambda p: p["done"] >= started, batch_timeout(B),
                               f"the {B:,}-task job running ({started:,} tasks done)", big)
                busy = svc.submit(small, timeout=batch_timeout(B))
                after = svc.ping()
                big_running = big.popen.poll() is None
                busy_summary = busy.check(SMALL_TASKS)
                if not big_running or after["done"] >= B:
                    raise RunFailed(
                        f"the {B:,}-task job ended before the {SMALL_TASKS}-task job submitted "
                        f"while it ran ({busy.wall:.2f} s wall, {busy_summary['seconds']} s "
                        f"its own; {SMALL_TASKS} tasks took {idle.wall:.2f} s on the idle "
                        f"service): no measure of a small job's wait behind a big one")
                code = big.wait(batch_timeout(B))
                big_summary = client_summary(big.stderr)
                if code != 0 or not big_summary or big_summary.get("ok") != B:
                    raise RunFailed(f"the {B:,}-task job exited {code}, summary {big_summary};"
                                    f" its last lines:\n{big.tail()}")
            finally:
                big.kill()
            r["small-idle"].values.append(idle.wall)
            r["small-idle-job"].values.append(idle_summary["seconds"])
            r["small-busy"].values.append(busy.wall)
            r["small-busy-job"].values.append(busy_summary["seconds"])
            r["big-progress"].values.append(after["done"] / B * 100)
            say(f"fairness {rep + 1}/{plan.small_repeats}: small job {busy.wall:.2f} s "
                f"({busy_summary['seconds']} s its own) while the big one ran "
                f"({after['done'] / B:.0%} done then), {idle.wall:.2f} s "
                f"({idle_summary['seconds']} s) idle")


def measure_abandoned(pf: Procfleet, plan: ServicePlan, r: Results) -> None:
    A, J = plan.abandoned_tasks, plan.abandoned_jobs
    warmup = write_lines(pf.path("warmup"), task_lines(A, "sleep", [0], "w"))
    feed = "".join(line + "\n" for line in task_lines(A, "sleep", [ABANDON_SLEEP]))
    checkpoints = {J // 2: r[f"rss-{J // 2}"], J: r[f"rss-{J}"]}
    with Service(pf, WORKERS, lease_timeout=ABANDON_LEASE) as svc:
        svc.submit(warmup, os.devnull, batch_timeout(A)).check(A)
        svc.wait_until(lambda p: p["jobs"] == 0, SHORT_RUN, "idle after the warm-up job")
        r["rss-0"].values.append(svc.rss_mb())
        for i in range(1, J + 1):
            client = svc.start_submit("-", os.devnull, stdin=subprocess.PIPE)
            threading.Thread(target=_write, args=(client, feed), daemon=True).start()
            try:
                svc.wait_until(lambda p: p["jobs"] == 1 and p["done"] >= ABANDON_AFTER,
                               SHORT_RUN, f"abandoned job {i} running", client)
            finally:
                client.kill()                   # SIGKILL, mid-job
            killed = time.monotonic()
            svc.wait_until(lambda p: p["jobs"] == 0, ABANDON_LEASE + DROP_MARGIN,
                           f"abandoned job {i} dropped")
            r["drop"].values.append(time.monotonic() - killed)
            if i in checkpoints:
                checkpoints[i].values.append(svc.rss_mb())
                say(f"abandoned {i}/{J}: master RSS {checkpoints[i].values[-1]:.1f} MB "
                    f"(after the warm-up job: {r['rss-0'].values[0]:.1f} MB)")
        # the master throttles its event lines and tallies the rest about a second later
        deadline = time.monotonic() + THROTTLE_TALLY
        while (dropped := svc.events("client was silent for more than", "client gone")) < J \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = svc.ping()["workers"]
        if dropped != J or workers != WORKERS:
            raise RunFailed(f"after {J} abandoned jobs the master's log counts {dropped} "
                            f"'client was silent' drops and it has {workers} workers "
                            f"(expected {J} and {WORKERS})")


MEASURE: dict[str, Callable[[Procfleet, ServicePlan, Results], None]] = {
    "executor": measure_executor, "latency": measure_latency, "fairness": measure_fairness,
    "abandoned": measure_abandoned}


def run(pf: Procfleet, plan: ServicePlan, skip: Callable[[str], str | None] = lambda g: None,
        ) -> Results:
    """Every group `skip` does not give a reason to leave out, in order. A group that fails
    keeps what it measured; its figures carry the error."""
    results = Results(plan)
    started = time.monotonic()
    for group in GROUPS:
        why = skip(group)
        if why:
            for s in results.groups[group]:
                s.skipped = why
            continue
        say(f"service {group} ({plan.name} sizes)")
        t0 = time.monotonic()
        try:
            MEASURE[group](pf, plan, results)
        except ERRORS as exc:
            for s in results.groups[group]:
                s.errors.append(f"{type(exc).__name__}: {exc}")
            say(f"service {group}: FAILED ({str(exc).strip().splitlines()[0]})")
            continue
        say(f"service {group}: done in {time.monotonic() - t0:.0f} s")
    results.seconds = time.monotonic() - started
    return results


# -- FleetExecutor in a process of its own -------------------------------------------------------
def fleet_client(pf: Procfleet, args: list[str], timeout: float) -> dict:
    """Run `python -m bench.fleet_client ARGS` under procfleet's python; its JSON output."""
    out_path = pf.path("fleet-client", ".json")
    try:
        with open(out_path, "w+", encoding="utf-8") as out:
            child = Child([pf.python, "-m", "bench.fleet_client", *args], pf.env, stdout=out,
                          cwd=REPO, name=f"bench.fleet_client {args[0]}")
            try:
                code = child.wait(timeout)
            finally:
                child.kill()
            out.seek(0)
            text = out.read()
    finally:
        out_path.unlink(missing_ok=True)
    if code != 0 or not text.strip():
        raise RunFailed(f"bench.fleet_client {' '.join(args)} exited {code}; last lines:\n"
                        f"{child.tail()}")
    return json.loads(text)


def _write(client: Child, text: str) -> None:
    """Feed a client's stdin (a thread: the pipe may fill), then close it."""
    try:
        client.popen.stdin.write(text)
        client.popen.stdin.close()
    except (OSError, ValueError):
        pass                # killed meanwhile


# -- alone: python -m bench.service ----------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__)
    p.add_argument("--quick", action="store_const", const=QUICK, default=FULL, dest="plan",
                   help=f"smaller sizes: {QUICK.map_tasks:,}-item map, "
                        f"{QUICK.latency_samples} round trips, a {QUICK.big_tasks:,}-task big job "
                        f"{QUICK.small_repeats}×, {QUICK.abandoned_jobs} abandoned jobs")
    p.add_argument("--runs", type=int, help="FleetExecutor.map and CLI batch runs (default: "
                                            f"{FULL.runs}, quick {QUICK.runs})")
    p.add_argument("--only", metavar="GROUPS", help=f"comma-separated: {', '.join(GROUPS)}")
    p.add_argument("--procfleet", metavar="PATH",
                   default=os.environ.get("PROCFLEET_BIN") or default_bin(),
                   help="the procfleet executable to measure (env PROCFLEET_BIN)")
    p.add_argument("--write", nargs="?", type=Path, const=REPO / "docs" / "benchmarks.md",
                   metavar="REPORT", help="put this run's section into REPORT (default "
                   "docs/benchmarks.md) in place of the one there; the rest stays as it was")
    args = p.parse_args(argv)
    if args.runs is not None:
        if args.runs < 1:
            p.error("--runs must be at least 1")
        args.plan = replace(args.plan, runs=args.runs)
    only = {g.strip() for g in (args.only or "").split(",") if g.strip()}
    if only - set(GROUPS):
        p.error(f"--only: unknown group(s) {', '.join(sorted(only - set(GROUPS)))}; "
                f"groups: {', '.join(GROUPS)}")
    args.only = only
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load_at_start = load_average()
    try:
        with tempfile.TemporaryDirectory(prefix="procfleet-bench-service-") as tmp:
            pf = Procfleet(args.procfleet, Path(tmp))
            try:
                pf.check()
            except RunFailed as exc:
                say(str(exc))
                return 1
            results = run(pf, args.plan, lambda g: None if not args.only or g in args.only
                          else "not in --only")
    except KeyboardInterrupt:
        say("interrupted; children removed")
        return 130
    finally:
        kill_all()
    g = goal(results)
    print(report.service_console(results.series, g))
    if args.write:
        command = " ".join(["python -m bench.service", *argv])
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        provenance = (f"Measured by `{command}` on {when} ({git_describe()}), "
                      f"{results.seconds:.0f} s; load average "
                      f"{load_at_start} at start, {load_average()} at end.")
        section = report.service_section(results.series, g, provenance, method(results.plan))
        text = args.write.read_text(encoding="utf-8") if args.write.exists() else ""
        args.write.write_text(report.splice_section(text, section), encoding="utf-8")
        say(f"wrote the section into {args.write}")
    if results.failed:
        say(f"{len(results.failed)} figure(s) failed: "
            + ", ".join(s.key for s in results.failed))
        return 1
    return 0


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
