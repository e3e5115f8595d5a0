"""The cases of one run, built from a plan: what each measures, in which order, and the goals."""

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import baseline, compose, report
from .machine import REPO
from .procfleet import Procfleet, RunFailed
from .procs import ChildTimeout
from .stats import Goal, Series, at_least, below, memory_goal, missing_from, ratio

#: the goals' worker count, and the goals' fixed workloads
GOAL_WORKERS = 4
RECIPE_BATCH = 100
DIST_TASKS, DIST_SLEEP, DIST_WORKERS, DIST_CONCURRENCY = 3200, 0.05, 8, 8
#: goal 3: at least this share of the ideal speed-up
DIST_MIN_SHARE = 0.9
RECOVERY_TASKS, RECOVERY_SLEEP, RECOVERY_LEASE, RECOVERY_CONCURRENCY = 400, 0.05, 2.0, 2
RECOVERY_GOAL_S = 3.0
MEMORY_LIMIT_MB, MEMORY_MAX_GROWTH = 200.0, 1.25
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


@dataclass
class Suite:
    """Every case in run order, and the series the report and the goals look up."""

    cases: list[Case] = field(default_factory=list)
    scaling: dict[str, list[Series]] = field(default_factory=dict)
    other: list[Series] = field(default_factory=list)
    recovery_seen: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> list[Series]:
        other = {id(s) for s in self.other}
        return [c.series for c in self.cases if id(c.series) not in other]

    def get(self, key: str) -> Series | None:
        return next((c.series for c in self.cases if c.series.key == key), None)


ERRORS = (RunFailed, ChildTimeout, baseline.BaselineError, OSError, subprocess.SubprocessError,
          EOFError, ConnectionError)


def build_suite(args, plan: Plan, pf: Procfleet, notes: list[str]) -> Suite:
    """The cases `plan` asks for; those that cannot run here carry the reason as `skipped`."""
    unusable = None
    try:
        pf.check()
    except RunFailed as exc:
        unusable = f"procfleet unusable: {exc}"
    journal_skip = unusable or (None if pf.has_master_option("--journal") else
                                "this procfleet's `master --help` lists no --journal option yet")
    suite = Suite()
    cases = suite.cases

    def add(series: Series, measure, skipped: str | None = None) -> Series:
        series.skipped = skipped
        cases.append(Case(series, measure))
        return series

    T, P = plan.tasks, plan.percall_tasks
    scaling = suite.scaling = {"procfleet (local workers)": [],
                               f"recipe, batched ({RECIPE_BATCH}/call)": [],
                               "recipe, one task per call": []}
    for k in plan.worker_counts:
        scaling["procfleet (local workers)"].append(add(
            Series(f"procfleet-{k}", f"procfleet, {workers(k, 'local worker')}", tasks=T,
                   workers=k),
            lambda k=k: pf.demo(T, k).summary["tasks_per_s"], unusable))
    for k in plan.worker_counts:
        scaling[f"recipe, batched ({RECIPE_BATCH}/call)"].append(add(
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
    add(Series("compose-4", f"compose cluster, {w} worker containers", tasks=T, workers=w),
        lambda: run_compose(args, pf, T, w),
        "--no-compose" if args.no_compose else
        compose_skip(args, notes) if selected(args, "compose-4") else f"not in --only {args.only}")

    other = suite.other

    def add_other(series: Series, measure, skipped=None):
        other.append(add(series, measure, skipped))
        return series

    add_other(
        Series("distributed", f"{DIST_TASKS:,} × sleep({DIST_SLEEP:g}) on {DIST_WORKERS} "
               f"workers × {DIST_CONCURRENCY} slots: speed-up", unit="×", tasks=DIST_TASKS),
        lambda: DIST_TASKS * DIST_SLEEP / pf.distributed(
            DIST_TASKS, DIST_SLEEP, DIST_WORKERS, DIST_CONCURRENCY).work_seconds, unusable)
    small_n, large_n = plan.memory_sizes
    for n in (small_n, large_n):
        add_other(Series(f"memory-{n}", f"master peak RSS, {n:,}-task file, {w} local workers",
                         unit="MB", tasks=n),
                  lambda n=n: pf.memory(n, w).peak_rss_mb, unusable)
    how = suite.recovery_seen

    def recovery() -> float:
        seconds, seen = pf.recovery(RECOVERY_TASKS, RECOVERY_SLEEP, RECOVERY_LEASE,
                                    RECOVERY_CONCURRENCY)
        how.append(seen)
        return seconds

    add_other(Series("recovery", f"recovery after SIGKILL of a worker "
                           f"(lease timeout {RECOVERY_LEASE:g} s)", unit="s"),
              recovery, unusable)

    for case in cases:
        if case.series.skipped is None and not selected(args, case.series.key):
            case.series.skipped = f"not in --only {args.only}"
    return suite


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


def evaluate_goals(suite: Suite, plan: Plan) -> list[Goal]:
    """The issue's goals from this run's medians (a case missing from `suite` is SKIP)."""
    p4, b4, c4, j4 = (suite.get(f"{name}-{GOAL_WORKERS}")
                      for name in ("procfleet", "recipe-batched", "recipe-percall", "journal"))
    dist, rec, comp = suite.get("distributed"), suite.get("recovery"), suite.get("compose-4")
    small, large = (suite.get(f"memory-{n}") for n in plan.memory_sizes)
    goals = [
        at_least("1. tiny tasks, 4 workers: procfleet ÷ batched recipe", ratio(p4, b4), 0.6,
                 want=0.9, missing=missing_from(p4, b4)),
        at_least("1. tiny tasks, 4 workers: procfleet ÷ per-call recipe", ratio(p4, c4), 40,
                 missing=missing_from(p4, c4)),
        at_least("2. with --journal ÷ without (4 local workers)", ratio(j4, p4), 0.5,
                 missing=missing_from(j4, p4)),
    ]
    ideal = DIST_WORKERS * DIST_CONCURRENCY
    name = f"3. {DIST_TASKS:,} × sleep({DIST_SLEEP:g}) on {ideal} slots: speed-up ÷ ideal {ideal}×"
    share = dist.median / ideal if dist and dist.ok else None
    goals.append(at_least(name, share, DIST_MIN_SHARE, unit="", missing=missing_from(dist)))
    goals.append(memory_goal(f"4. master peak RSS, {plan.memory_sizes[0]:,} / "
                             f"{plan.memory_sizes[1]:,}-task files", small, large,
                             MEMORY_LIMIT_MB, MEMORY_MAX_GROWTH))
    goals.append(at_least("5. compose cluster ÷ local, 4 workers", ratio(comp, p4), 0.5,
                          missing=missing_from(comp, p4)))
    goals.append(below(f"6. recovery after SIGKILL (lease {RECOVERY_LEASE:g} s)",
                       rec.median if rec and rec.ok else None, RECOVERY_GOAL_S, unit=" s",
                       missing=missing_from(rec)))
    return goals


def selected(args, key: str) -> bool:
    """Whether --only (comma-separated keys or prefixes) lets case `key` run."""
    if not args.only:
        return True
    return any(key.startswith(k.strip()) for k in args.only.split(",") if k.strip())


def service_skip(args, pf: Procfleet):
    """For bench.service.run: why a group (key service-GROUP) is left out, or None."""
    def skip(group: str) -> str | None:
        if not selected(args, f"service-{group}"):
            return f"not in --only {args.only}"
        try:
            pf.check()
        except RunFailed as exc:
            return f"procfleet unusable: {exc}"
        return None
    return skip


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
    images = tuple(args.compose_images) if args.compose_images else None
    cluster = compose.ComposeCluster(REPO, pf.env, pf.workdir, tasks, images)
    summary = cluster.run_demo(tasks, workers)
    left = compose.wait_gone(cluster.project)
    if left:
        raise RunFailed(f"containers left after down: {' '.join(left)}")
    return summary["tasks_per_s"]


def workers(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _first_line(text: str) -> str:
    return text.strip().split("; last lines:")[0].splitlines()[0] if text.strip() else text
