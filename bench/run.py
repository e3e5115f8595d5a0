"""`python -m bench`: run every case in one process tree, print the table, and write
docs/benchmarks.md with the plot next to it."""

import argparse
import datetime
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import baseline, compose, plot, report
from .procfleet import Procfleet, RunFailed, default_bin
from .procs import ChildTimeout, kill_all
from .stats import INFO, Goal, Series, at_least, below, memory_goal, missing_from, ratio

REPO = Path(__file__).resolve().parent.parent
#: the goals' worker count, and the goals' fixed workloads
GOAL_WORKERS = 4
RECIPE_BATCH = 100
DIST_TASKS, DIST_SLEEP, DIST_WORKERS, DIST_CONCURRENCY = 3200, 0.05, 8, 8
RECOVERY_TASKS, RECOVERY_SLEEP, RECOVERY_LEASE, RECOVERY_CONCURRENCY = 400, 0.05, 2.0, 2
RECOVERY_GOAL_S = 3.0
MEMORY_LIMIT_MB, MEMORY_MAX_GROWTH = 200.0, 1.25
#: a 1-minute load average above this × cores at start is noted as a busy machine
BUSY_LOAD = 0.5
#: bound on `scripts/images.sh` when --build-images asks for it
IMAGES_TIMEOUT = 1800


@dataclass(frozen=True)
class Plan:
    name: str
    runs: int
    tasks: int              # tiny-task cases: procfleet, batched recipe, Pool, compose
    percall_tasks: int      # the per-call recipe (one round trip per call: slow)
    worker_counts: tuple[int, ...]
    memory_sizes: tuple[int, int]


FULL = Plan("full", 3, 200_000, 200_000, (1, 2, 4, 8), (100_000, 1_000_000))
QUICK = Plan("quick", 1, 20_000, 5_000, (1, 2, 4, 8), (10_000, 100_000))


@dataclass
class Case:
    series: Series
    measure: Callable[[], float]


ERRORS = (RunFailed, ChildTimeout, baseline.BaselineError, OSError, subprocess.SubprocessError,
          EOFError, ConnectionError)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const=QUICK, dest="plan",
                      help="every case once with fewer tasks (~2 minutes)")
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
                        "journal-4, pool-1, pool-1000, compose-4, distributed, memory-N, recovery")
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
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="procfleet-bench-") as tmp:
            return _run(args, argv, Path(tmp), started)
    except KeyboardInterrupt:
        print("bench: interrupted; children and containers removed", file=sys.stderr)
        return 130
    finally:
        kill_all()
        compose.down_all()


def _run(args, argv: list[str], workdir: Path, started: float) -> int:
    plan: Plan = args.plan
    pf = Procfleet(args.procfleet, workdir)
    notes: list[str] = list(args.note)
    if plan.name == "quick":
        notes.append("Quick run: fewer tasks and one run per case, so the ratios are indicative; "
                     "`make bench` measures at the goals' sizes.")
    machine = machine_info(args, argv, pf)
    busy = os.getloadavg()[0]
    if busy > BUSY_LOAD * len(os.sched_getaffinity(0)):
        notes.append(f"Other work was running when the suite started (load average {busy:.1f} on "
                     f"{len(os.sched_getaffinity(0))} cores): the numbers are noisier than usual.")
    say(f"procfleet: {pf.executable}; {plan.name} plan: {plan.runs} run(s) per case")

    unusable = None
    try:
        pf.check()
    except RunFailed as exc:
        unusable = f"procfleet unusable: {exc}"
    journal_skip = unusable or (None if pf.has_master_option("--journal") else
                                "this procfleet's `master --help` lists no --journal option yet")

    cases: list[Case] = []

    def add(series: Series, measure, skipped: str | None = None) -> Series:
        series.skipped = skipped
        cases.append(Case(series, measure))
        return series

    T, P = plan.tasks, plan.percall_tasks
    scaling: dict[str, list[Series]] = {"procfleet (local workers)": [],
                                         "recipe, batched (100/call)": [],
                                         "recipe, one task per call": []}
    for k in plan.worker_counts:
        scaling["procfleet (local workers)"].append(add(
            Series(f"procfleet-{k}", f"procfleet, {workers(k, 'local worker')}", tasks=T,
                   workers=k),
            lambda k=k: pf.demo(T, k).summary["tasks_per_s"], unusable))
    for k in plan.worker_counts:
        scaling["recipe, batched (100/call)"].append(add(
            Series(f"recipe-batched-{k}", f"recipe batched ({RECIPE_BATCH}/call), "
                   f"{workers(k, 'worker')}", tasks=T, workers=k),
            lambda k=k: T / baseline.run_recipe(T, k, RECIPE_BATCH)))
    for k in plan.worker_counts:
        scaling["recipe, one task per call"].append(add(
            Series(f"recipe-percall-{k}", f"recipe one task per call, {workers(k, 'worker')}",
                   tasks=P, workers=k),
            lambda k=k: P / baseline.run_recipe(P, k, 1)))
    w = GOAL_WORKERS
    add(Series("journal-4", f"procfleet --journal, {w} local workers", tasks=T, workers=w),
        lambda: pf.demo(T, w, journal=True).summary["tasks_per_s"], journal_skip)
    for chunk in (1, 1000):
        add(Series(f"pool-{chunk}", f"Pool({w}).map, chunksize={chunk}", tasks=T, workers=w),
            lambda chunk=chunk: T / baseline.run_pool(T, w, chunk))
    compose_series = add(
        Series("compose-4", f"compose cluster, {w} worker containers", tasks=T, workers=w),
        lambda: run_compose(args, pf, T, w),
        "--no-compose" if args.no_compose else
        compose_skip(args, notes) if selected(args, "compose-4") else f"not in --only {args.only}")

    other: list[Series] = []

    def add_other(series: Series, measure, skipped=None):
        other.append(add(series, measure, skipped))
        return series

    dist = add_other(
        Series("distributed", f"{DIST_TASKS:,} × sleep({DIST_SLEEP:g}) on {DIST_WORKERS} workers × "
               f"{DIST_CONCURRENCY} slots: speed-up", unit="×", tasks=DIST_TASKS),
        lambda: DIST_TASKS * DIST_SLEEP / pf.distributed(
            DIST_TASKS, DIST_SLEEP, DIST_WORKERS, DIST_CONCURRENCY).summary["seconds"], unusable)
    small_n, large_n = plan.memory_sizes
    mem = [add_other(Series(f"memory-{n}", f"master peak RSS, {n:,}-task file, {w} local workers",
                            unit="MB", tasks=n),
                     lambda n=n: pf.memory(n, w).peak_rss_mb, unusable)
           for n in (small_n, large_n)]
    how: list[str] = []

    def recovery() -> float:
        seconds, seen = pf.recovery(RECOVERY_TASKS, RECOVERY_SLEEP, RECOVERY_LEASE,
                                    RECOVERY_CONCURRENCY)
        how.append(seen)
        return seconds

    rec = add_other(Series("recovery", f"recovery after SIGKILL of a worker "
                           f"(lease timeout {RECOVERY_LEASE:g} s)", unit="s"),
                    recovery, unusable)

    for case in cases:
        if case.series.skipped is None and not selected(args, case.series.key):
            case.series.skipped = f"not in --only {args.only}"
    run_cases(cases, plan.runs)
    if how:
        notes.append("Recovery seen through: " + ", ".join(how) + ".")

    throughput = [c.series for c in cases if c.series not in other]
    by_key = {s.key: s for s in throughput}
    goals = evaluate_goals(by_key, dist, mem, rec, compose_series, plan)

    png = args.output.with_suffix(".png")
    why_not = plot.plot_scaling(scaling, png, f"tasks/s against workers ({plan.name} run, "
                                f"{T:,} square tasks; per-call recipe {P:,})")
    if why_not:
        notes.append(f"No plot: {why_not}.")
    machine["load average at end"] = load_average()
    machine["suite wall time"] = f"{time.monotonic() - started:.0f} s"
    for s in throughput + other:
        for err in s.errors:
            notes.append(f"{s.label}: {' '.join(err.split())[:600]}")
    text = report.render(machine, throughput, other, goals, notes,
                         None if why_not else png.name, FULL.runs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(report.console(throughput, other, goals))
    say(f"wrote {args.output}" + ("" if why_not else f" and {png}"))
    return 0


def run_cases(cases: list[Case], runs: int) -> None:
    """Round-robin: run r of every case before run r+1 of any, so drift spreads over all cases.
    A case that failed once is not run again (its result is already unusable)."""
    todo = [c for c in cases if c.series.skipped is None]
    total = len(todo) * runs
    n = 0
    for r in range(runs):
        for case in todo:
            s = case.series
            n += 1
            if s.errors:
                continue
            t0 = time.monotonic()
            try:
                value = case.measure()
            except ERRORS as exc:
                s.errors.append(f"run {r + 1}: {type(exc).__name__}: {exc}")
                say(f"[{n}/{total}] {s.label}: FAILED ({_first_line(str(exc))})")
                continue
            s.values.append(value)
            say(f"[{n}/{total}] {s.label}: {report.fmt(value, s.unit)} {s.unit} "
                f"({time.monotonic() - t0:.1f} s)")


def evaluate_goals(by_key: dict[str, Series], dist: Series, mem: list[Series], rec: Series,
                   comp: Series, plan: Plan) -> list[Goal]:
    p4, b4, c4 = by_key.get("procfleet-4"), by_key.get("recipe-batched-4"), by_key.get("recipe-percall-4")
    j4 = by_key.get("journal-4")
    goals = [
        at_least("1. tiny tasks, 4 workers: procfleet ÷ batched recipe", ratio(p4, b4), 0.6,
                 want=0.9, missing=missing_from(p4, b4)),
        at_least("1. tiny tasks, 4 workers: procfleet ÷ per-call recipe", ratio(p4, c4), 40,
                 missing=missing_from(p4, c4)),
        at_least("2. with --journal ÷ without (4 local workers)", ratio(j4, p4), 0.5,
                 missing=missing_from(j4, p4)),
    ]
    ideal = DIST_WORKERS * DIST_CONCURRENCY
    name = f"3. {DIST_TASKS:,} × sleep({DIST_SLEEP:g}) on {ideal} slots: % of ideal speed-up"
    target = f"report (ideal {ideal}×)"
    if dist.ok:
        goals.append(Goal(name, target, f"{dist.median:.1f}× = {100 * dist.median / ideal:.0f}%",
                          INFO))
    else:
        why = missing_from(dist)
        goals.append(Goal(name, target, "—", why.status, why.note))
    small, large = mem
    goals.append(memory_goal(f"4. master peak RSS, {plan.memory_sizes[0]:,} / "
                             f"{plan.memory_sizes[1]:,}-task files", small, large,
                             MEMORY_LIMIT_MB, MEMORY_MAX_GROWTH))
    goals.append(at_least("5. compose cluster ÷ local, 4 workers", ratio(comp, p4), 0.5,
                          missing=missing_from(comp, p4)))
    goals.append(below(f"6. recovery after SIGKILL (lease {RECOVERY_LEASE:g} s)",
                       rec.median if rec.ok else None, RECOVERY_GOAL_S, unit=" s",
                       missing=missing_from(rec)))
    return goals


def selected(args, key: str) -> bool:
    """Whether --only (comma-separated keys or prefixes) lets case `key` run."""
    if not args.only:
        return True
    return any(key.startswith(k.strip()) for k in args.only.split(",") if k.strip())


def compose_skip(args, notes: list[str]) -> str | None:
    images = tuple(args.compose_images) if args.compose_images else compose.IMAGES
    if args.build_images and not args.compose_images and compose.unusable_reason(()) is None:
        say("building the images (scripts/images.sh)")
        try:
            built = subprocess.run([str(REPO / "scripts" / "images.sh")], timeout=IMAGES_TIMEOUT,
                                   stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"scripts/images.sh took over {IMAGES_TIMEOUT} s"
        if built.returncode != 0:
            return f"scripts/images.sh exited {built.returncode}"
    reason = compose.unusable_reason(images)
    if reason is None and args.compose_images:
        notes.append(f"The compose case ran on images {images[0]} and {images[1]}.")
    return reason


def run_compose(args, pf: Procfleet, tasks: int, workers: int) -> float:
    extra = []
    if args.compose_images:
        override = pf.workdir / "compose.images.yml"
        override.write_text("services:\n"
                            f"  master:\n    image: {args.compose_images[0]}\n"
                            f"  worker:\n    image: {args.compose_images[1]}\n")
        extra.append(str(override))
    cluster = compose.ComposeCluster(REPO, pf.env, extra)
    summary = cluster.run_demo(tasks, workers)
    left = compose.wait_gone(cluster.project)
    if left:
        raise RunFailed(f"containers left after down: {' '.join(left)}")
    return summary["tasks_per_s"]


def machine_info(args, argv: list[str], pf: Procfleet) -> dict[str, str]:
    cpu = "unknown"
    mem = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
        mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo")
                      if line.startswith("MemTotal"))
        mem = f"{mem_kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "`" + " ".join(["python -m bench", *map(shlex.quote, argv)]) + "`",
        "plan": f"{args.plan.name}: {args.plan.runs} run(s) per case, {args.plan.tasks:,} tiny "
                f"tasks ({args.plan.percall_tasks:,} for the per-call recipe)",
        "CPU": f"{cpu}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)",
        "memory": mem,
        "OS": platform.platform(),
        "Python (suite and baselines)": platform.python_version(),
        "procfleet": procfleet_version(pf.executable),
        "tree": git_describe(),
        "Docker": docker_version(),
        "load average at start": load_average(),
    }


def procfleet_version(executable: str) -> str:
    try:
        with open(executable, "rb") as fh:
            first = fh.readline().decode(errors="replace")
        python = first[2:].strip() if first.startswith("#!") else sys.executable
        out = subprocess.run(
            [python, "-c", "import platform, importlib.metadata as m; "
             "print(m.version('procfleet-master'), 'on Python', platform.python_version())"],
            capture_output=True, text=True, timeout=30)
        version = out.stdout.strip() or "version unknown"
    except (OSError, subprocess.SubprocessError):
        version = "version unknown"
    try:
        shown = os.path.relpath(executable, REPO)
        shown = executable if shown.startswith("..") else shown
    except ValueError:
        shown = executable
    return f"`{shown}` ({version})"


def git_describe() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        branch = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--abbrev-ref", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        return f"{branch.stdout.strip()} at {out.stdout.strip()}" if out.returncode == 0 else "not git"
    except (OSError, subprocess.SubprocessError):
        return "not git"


def docker_version() -> str:
    try:
        out = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                             capture_output=True, text=True, timeout=20)
        engine = out.stdout.strip() if out.returncode == 0 else "engine not usable"
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    cmd = compose.compose_command()
    return f"engine {engine}; compose: `{' '.join(cmd)}`" if cmd else f"engine {engine}; no compose"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def workers(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _first_line(text: str) -> str:
    return text.strip().split("; last lines:")[0].splitlines()[0] if text.strip() else text
