"""`procfleet status`'s text: a master's status reply (the dispatcher's `status` method) as a
few lines and a plain table of workers."""

WORKER_COLUMNS = (("worker", "id"), ("address", "address"), ("python", "python"),
                  ("conc", "concurrency"), ("state", "state"), ("held", "held"), ("ok", "ok"),
                  ("failed", "failed"), ("seen", "last_seen_s"), ("rate/s", "rate"))
JOB_COLUMNS = (("job", "job"), ("label", "label"), ("submitted", "submitted"),
               ("finished", "finished"), ("ok", "ok"), ("failed", "failed"),
               ("running", "running"))


def table(rows: list[dict], columns) -> list[str]:
    """Rows as left-aligned columns under their headings (two spaces apart)."""
    cells = [[heading for heading, _ in columns]]
    for row in rows:
        cells.append([_cell(key, row.get(key)) for _, key in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip()
            for line in cells]


def _cell(key: str, value) -> str:
    if value is None or value == "":
        return "-"
    if key == "last_seen_s":
        return f"{value:.1f}s ago"
    if key == "job":
        return str(value)[:12]
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def render(address: str, status: dict) -> str:
    """The human form of a status reply from the master at `address`."""
    lines = []
    if status.get("mode") == "service":
        lines.append(f"master {address}: {status['state']}, service: {len(status['jobs'])} "
                     f"jobs open, {status['jobs_done']} done, {status['ok']} ok, "
                     f"{status['failed']} failed, {status['running']} tasks held by workers, "
                     f"{status['pending']} waiting, {status['alive_workers']} workers")
        if status["jobs"]:
            lines += ["", *table(status["jobs"], JOB_COLUMNS)]
    else:
        rate = status["finished"] / status["elapsed_s"] if status.get("elapsed_s") else 0.0
        lines.append(f"master {address}: {status['state']}, batch {status['batch']}: "
                     f"{status['finished']}/{status['total']} done ({status['ok']} ok, "
                     f"{status['failed']} failed), {status['running']} held by workers, "
                     f"{status['pending']} waiting, {status['alive_workers']} workers, "
                     f"{status['elapsed_s']:.1f} s, {rate:.1f} tasks/s")
    workers = status.get("workers", [])
    lines += ["", *table(workers, WORKER_COLUMNS)] if workers else ["", "no workers yet"]
    return "\n".join(lines)
