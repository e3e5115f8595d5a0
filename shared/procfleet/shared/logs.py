"""One logging set-up for every procfleet process: stderr, a steady prefix per actor, or one
JSON object per line for log shippers (--log-format json); and Tally, which keeps debug lines
about busy paths down to one per key per second."""

import json
import logging
import sys
import time
from datetime import datetime, timezone

#: --log-format values
TEXT = "text"
JSON = "json"
LOG_FORMATS = (TEXT, JSON)

#: a LogRecord's own attributes: whatever else it has came in `extra=` and is a field in JSON
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes, not the stream of its start: a
    live progress bar (rich) puts a stand-in there that prints lines above the bar."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), actor, level, logger, message, the
    fields given in `extra=`, and the traceback as text when there is one."""

    def __init__(self, actor: str) -> None:
        super().__init__()
        self.actor = actor

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc)
                 .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                 "actor": self.actor, "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(verbose: int = 0, actor: str = "procfleet", fmt: str = TEXT) -> None:
    """Log to stderr as `HH:MM:SS actor: message` (fmt "json": a JSON object per line);
    -v for debug."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    handler = StderrHandler()
    if fmt == JSON:
        handler.setFormatter(JsonFormatter(actor))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {actor}: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def json_logs() -> bool:
    """Whether configure_logging chose JSON lines (so nothing else should draw on stderr)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


class Tally:
    """Counts added up per key (a worker id) until `interval` seconds passed since the key's
    first count; then `add` returns the sums (with "seconds", the window's length) for one
    debug line, and starts again. `due` hands over the windows that passed without an `add`."""

    def __init__(self, interval: float = 1.0, clock=time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.open: dict = {}        # key -> (window start, {name: sum})

    def add(self, key, **counts: float) -> dict | None:
        now = self.clock()
        since, sums = self.open.get(key) or (now, {})
        for name, value in counts.items():
            sums[name] = sums.get(name, 0) + value
        if now - since >= self.interval:
            self.open.pop(key, None)
            return {**sums, "seconds": now - since}
        self.open[key] = (since, sums)
        return None

    def due(self, everything: bool = False) -> list[tuple]:
        """(key, sums) of every window older than the interval (`everything`: of all),
        taken out."""
        now = self.clock()
        ready = [(key, {**sums, "seconds": now - since}) for key, (since, sums)
                 in self.open.items() if everything or now - since >= self.interval]
        for key, _ in ready:
            del self.open[key]
        return ready
