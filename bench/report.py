"""docs/benchmarks.md and the console table: plain rendering of measured series and goals."""

from .stats import Goal, Series, percentile

HEADER = """\
# Benchmarks

This file is written by the benchmark suite; do not edit it by hand. Run it again with:

```
make bench          # full: every case {full_runs}× (median, min, max), 200,000 tiny tasks, the
                    # compose cluster too (builds the images first when Docker is usable), and
                    # the service cases; 25-35 minutes on 2 cores
make bench-quick    # the same cases once each with fewer tasks: 3-4 minutes, indicative only
```

Options go through `BENCH_ARGS` (`python -m bench --help` lists them), e.g. another procfleet
installation: `make bench-quick BENCH_ARGS="--procfleet /path/to/venv/bin/procfleet"` (or
`PROCFLEET_BIN=...`), or `--no-compose`. The suite drives procfleet only through its CLI and reads
the master's closing `summary:` line; a run that loses or duplicates a result counts as failed.
Benchmarks are not part of `make test`; matplotlib (for the plot) is installed only by these
targets.
"""

METHOD = """\
## How each number is measured

- **procfleet, N local workers**: `procfleet master --demo T --local-workers N --wait-workers N
  --bind 127.0.0.1:0 --results FILE`; tasks/s is the summary's `tasks_per_s`, counted from the
  first task leased to the last result; `--wait-workers N` holds the first lease until all N
  workers have joined, as the recipe's clock starts once its workers are connected. The results
  file must hold T distinct ids.
- **recipe per-call / batched (100)**: `bench/baseline.py`, the blog recipe — a `BaseManager`
  serving two `queue.Queue` proxies on 127.0.0.1 with an authkey, N worker processes connecting over
  TCP; one task per proxy call, or lists of 100. The clock starts once every worker is connected,
  the master puts every task, then reads every result (each id checked once).
- **Pool.map**: `multiprocessing.Pool(4).map(square, range(T), chunksize=C)`, timed around `map`
  with the pool already started.
- **compose**: the repo's `docker-compose.yml` under a unique project name, `PROCFLEET_DEMO=T`,
  `PROCFLEET_WAIT_WORKERS=4`, `up -d --scale worker=4`; tasks/s from the master container's
  summary. The compose master runs as shipped: with its journal and `--restart-on-crash`. Every
  id is checked in `results.jsonl`, copied out of the master's volume; `down -v` after.
- **distributed sleep**: `--demo 3200 --demo-sleep 0.05` served to 8 separate
  `procfleet worker --concurrency 8` processes, the master with `--wait-workers 8`; speed-up =
  3200 × 0.05 s / the summary's work_seconds (first lease to last result).
- **master peak RSS**: VmHWM of the master process itself (not its local workers), read from
  /proc every 20 ms while it streams a generated JSONL file of `square` tasks with 4 local workers.
- **recovery**: `--lease-timeout 2`, `--demo 400 --demo-sleep 0.05`, two separate workers
  (`--concurrency 2`); one is SIGKILLed once a quarter of the batch is done; seconds from the kill
  to the first result of a requeued task (attempts > 1) read from the results file, or else to the
  master's "silent ... requeued" line.
"""


SERVICE_TITLE = "## Service mode and FleetExecutor"

def fmt(value: float | None, unit: str = "tasks/s") -> str:
    if value is None:
        return "—"
    if unit == "tasks/s" or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _status(s: Series) -> str:
    if s.skipped:
        return f"skipped: {s.skipped}"
    if s.errors:
        return f"{len(s.errors)} failed run(s): {_one_line(s.errors[0])}"
    return ""


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def throughput_table(series: list[Series]) -> str:
    lines = [_row(["case", "tasks", "runs", "median tasks/s", "min", "max", "note"]),
             _row(["---", "---:", "---:", "---:", "---:", "---:", "---"])]
    for s in series:
        lines.append(_row([s.label, f"{s.tasks:,}" if s.tasks else "—", str(s.runs),
                           fmt(s.median), fmt(s.min), fmt(s.max), _status(s)]))
    return "\n".join(lines)


def other_table(series: list[Series]) -> str:
    lines = [_row(["case", "runs", "median", "min", "max", "unit", "note"]),
             _row(["---", "---:", "---:", "---:", "---:", "---", "---"])]
    for s in series:
        lines.append(_row([s.label, str(s.runs), fmt(s.median, s.unit), fmt(s.min, s.unit),
                           fmt(s.max, s.unit), s.unit, _status(s)]))
    return "\n".join(lines)


def goals_table(goals: list[Goal]) -> str:
    lines = [_row(["goal", "measured", "target", "result", "note"]),
             _row(["---", "---:", "---", "---", "---"])]
    for g in goals:
        lines.append(_row([g.name, g.measured, g.target, f"**{g.status}**", g.note]))
    return "\n".join(lines)


def machine_list(machine: dict[str, str]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in machine.items())


def service_table(series: list[Series]) -> str:
    lines = [_row(["measurement", "samples", "median", "p99", "min", "max", "unit", "note"]),
             _row(["---", "---:", "---:", "---:", "---:", "---:", "---", "---"])]
    for s in series:
        lines.append(_row([s.label, str(s.runs), fmt(s.median, s.unit),
                           fmt(percentile(s.values, 99), s.unit), fmt(s.min, s.unit),
                           fmt(s.max, s.unit), s.unit, _status(s)]))
    return "\n".join(lines)


def goal_line(goal: Goal, fleet: Series | None, cli: Series | None) -> str:
    """The executor goal with both of its figures, for the service section and the console."""
    figures = ""
    if fleet is not None and cli is not None and fleet.median and cli.median:
        figures = (f"FleetExecutor.map {fmt(fleet.median)} tasks/s ÷ CLI batch "
                   f"{fmt(cli.median)} tasks/s = ")
    return f"{goal.status} {goal.name}: {figures}{goal.measured} (target {goal.target})" + \
        (f" — {goal.note}" if goal.note else "")


def service_section(series: list[Series], goal: Goal, provenance: str, method: str) -> str:
    """The "Service mode and FleetExecutor" section: where it was measured, its figures, the
    executor goal with both of its figures, and how each is measured."""
    by_key = {s.key: s for s in series}
    status, _, rest = goal_line(goal, by_key.get("map"), by_key.get("cli")).partition(" ")
    return "\n".join([SERVICE_TITLE, "", provenance, "", service_table(series), "",
                      f"**{status}** {rest}", "", method.rstrip("\n"), ""])


def service_console(series: list[Series], goal: Goal) -> str:
    out = [f"{'measurement':78} {'samples':>7} {'median':>9} {'p99':>9} {'min':>9} {'max':>9}"]
    for s in series:
        out.append(f"{s.label:78} {s.runs:>7} {fmt(s.median, s.unit):>9} "
                   f"{fmt(percentile(s.values, 99), s.unit):>9} {fmt(s.min, s.unit):>9} "
                   f"{fmt(s.max, s.unit):>9}  {s.unit} {_status(s)}")
    by_key = {s.key: s for s in series}
    out += ["", goal_line(goal, by_key.get("map"), by_key.get("cli"))]
    return "\n".join(out)


def splice_section(text: str, section: str) -> str:
    """`text` (a report) with its service section replaced by `section`, or `section` put
    before the notes (or the method, or at the end) when it has none."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    body = section.rstrip("\n") + "\n\n"
    mine = [i for i in starts if lines[i].rstrip("\n") == SERVICE_TITLE]
    if mine:
        end = next((i for i in starts if i > mine[0]), len(lines))
        return "".join(lines[:mine[0]]) + body + "".join(lines[end:])
    for title in ("## Notes", "## How each number is measured"):
        at = next((i for i in starts if lines[i].rstrip("\n") == title), None)
        if at is not None:
            return "".join(lines[:at]) + body + "".join(lines[at:])
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + body


def render(machine: dict[str, str], throughput: list[Series], other: list[Series],
           goals: list[Goal], notes: list[str], plot: str | None, full_runs: int = 3,
           service: str | None = None) -> str:
    parts = [HEADER.format(full_runs=full_runs), "## This run\n", machine_list(machine), "",
             "## Throughput\n", throughput_table(throughput), "",
             "## Scaling, memory, recovery\n", other_table(other), "",
             "## Goals\n", "Ratios are of medians measured in this run.\n", goals_table(goals), ""]
    if plot:
        parts += ["## Throughput against workers\n", f"![throughput against workers]({plot})", ""]
    if service:
        parts += [service.rstrip("\n"), ""]
    if notes:
        parts += ["## Notes\n", "\n".join(f"- {n}" for n in notes), ""]
    parts += [METHOD]
    return "\n".join(parts)


def console(throughput: list[Series], other: list[Series], goals: list[Goal]) -> str:
    """A plain-text version for the terminal."""
    out = [f"{'case':58} {'tasks':>9} {'runs':>4} {'median':>10} {'min':>10} {'max':>10}"]
    for s in throughput:
        out.append(f"{s.label:58} {s.tasks or 0:>9,} {s.runs:>4} {fmt(s.median):>10} "
                   f"{fmt(s.min):>10} {fmt(s.max):>10}  {_status(s)}")
    out.append("")
    for s in other:
        out.append(f"{s.label:58} {'':>9} {s.runs:>4} {fmt(s.median, s.unit):>10} "
                   f"{fmt(s.min, s.unit):>10} {fmt(s.max, s.unit):>10}  {s.unit} {_status(s)}")
    out.append("")
    for g in goals:
        out.append(f"{g.status:5} {g.name}: {g.measured} (target {g.target})"
                   + (f" — {g.note}" if g.note else ""))
    return "\n".join(out)
