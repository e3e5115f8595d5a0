"""The chaos report: each fault test adds a row; the session ends with the table.

A row counts what the results file holds: `lost` is expected ids with no result, `duplicated`
is result lines beyond the first for an id (must be 0), `dropped` is late duplicates the master
refused (it counts them in its summary). `recover_s` is fault-specific and said in `recovery`.
"""

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "build" / "chaos-report.md"


@dataclass
class Row:
    fault: str
    tasks: int
    results: int
    lost: int
    duplicated: int
    dropped: int
    recover_s: float | None
    recovery: str


ROWS: list[Row] = []


def record(fault: str, expected_ids, records: list[dict], *, dropped: float = 0,
           recover_s: float | None = None, recovery: str = "") -> Row:
    """Add a row for `fault` from the results file's records; return it for asserts."""
    expected = {str(i) for i in expected_ids}
    counts = Counter(r["id"] for r in records)
    row = Row(fault, len(expected), len(records), len(expected - set(counts)),
              sum(c - 1 for c in counts.values()), int(dropped), recover_s, recovery)
    ROWS.append(row)
    return row


def table() -> str:
    lines = ["| fault injected | tasks | results | lost | duplicated (dropped) | seconds to recover |",
             "|---|---:|---:|---:|---:|---|"]
    for r in ROWS:
        recover = f"{r.recover_s:.2f} ({r.recovery})" if r.recover_s is not None else r.recovery
        lines.append(f"| {r.fault} | {r.tasks} | {r.results} | {r.lost} | "
                     f"{r.duplicated} ({r.dropped}) | {recover} |")
    return "\n".join(lines)


def write_report() -> Path | None:
    if not ROWS:
        return None
    REPORT.parent.mkdir(exist_ok=True)
    mode = "a" if os.environ.get("PROCFLEET_CHAOS_APPEND") else "w"
    with REPORT.open(mode) as fh:
        fh.write(table() + "\n")
    return REPORT
