"""What a batch shows while it runs: a live bar when stderr is a terminal (rich), else a
progress log line every PROGRESS_INTERVAL seconds. Both read the service's snapshot only when
they are due to show it; the figures (rate, ETA) come from plain functions of it."""

import logging
import os
import sys
import threading
from collections import deque

from procfleet.shared.logs import json_logs

log = logging.getLogger(__name__)

#: how often a batch logs its progress (stderr not a terminal)
PROGRESS_INTERVAL = 5.0
#: how often the bar is drawn again
BAR_INTERVAL = 0.25
#: the rate (and so the ETA) is measured over about the last this many seconds
RATE_WINDOW = 10.0


class RateMeter:
    """Tasks finished per second over about the last `window` seconds, from (time, finished)
    samples: recent enough to follow a batch that speeds up or stalls, long enough to be steady."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, finished: int) -> float:
        samples = self.samples
        samples.append((now, finished))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        then, before = samples[0]
        return (finished - before) / (now - then) if now > then else 0.0


def figures(snapshot: dict, elapsed: float, rate: float) -> dict:
    """The progress figures of a service snapshot: what the bar and the log line show.
    `running` are tasks a worker has begun, `queued_on_workers` those leased and waiting in a
    worker, `pending` those waiting in the master; eta is None while it cannot be told (no
    rate yet, or tasks still streaming in from stdin)."""
    s = snapshot
    left = s["total"] - s["finished"]
    eta = left / rate if rate > 0 and not s.get("open_input") else None
    return {"finished": s["finished"], "total": s["total"], "ok": s["ok"],
            "failed": s["failed"], "running": s["running"],
            "queued_on_workers": s["queued_on_workers"], "pending": s["pending"],
            "workers": s["alive_workers"], "rate": round(rate, 1),
            "eta": None if eta is None else round(eta, 1), "elapsed": round(elapsed, 1)}


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes = f"{rest // 60:02d}" if hours else f"{rest // 60}"
    return f"{hours}:{minutes}:{rest % 60:02d}" if hours else f"{minutes}:{rest % 60:02d}"


class LogProgress:
    """A progress line every `interval` seconds."""

    draws = False       # nothing on the terminal to keep other writers off

    def __init__(self, interval: float = PROGRESS_INTERVAL, start: float = 0.0) -> None:
        self.interval = interval
        self.next = start + interval
        self.rate = RateMeter()

    def due(self, now: float) -> bool:
        return now >= self.next

    def show(self, snapshot: dict, now: float, elapsed: float) -> None:
        self.next = now + self.interval
        f = figures(snapshot, elapsed, self.rate.update(now, snapshot["finished"]))
        log.info("progress: %d/%d done (%d ok, %d failed), %d running, %d queued on workers, "
                 "%d waiting, %d workers, %.1f tasks/s, ETA %s, %.1f s", f["finished"],
                 f["total"], f["ok"], f["failed"], f["running"], f["queued_on_workers"],
                 f["pending"], f["workers"], f["rate"], format_eta(f["eta"]), elapsed,
                 extra={"progress": f})

    def close(self, snapshot: dict, now: float, elapsed: float) -> None:
        """The batch ended: its summary line says the rest."""

    def stop(self) -> None:
        """Nothing to undo."""


class BarProgress:
    """A live bar on stderr, drawn every `interval` seconds. While it runs, sys.stderr is a
    stand-in (LinesAbove) that prints each whole line above the bar: the log handler and the
    local workers' relays write there. One lock orders those lines, the frames and the end:
    with rich's own stand-in, a line rendered by another thread just before the bar stopped
    was written after it, with a stale frame."""

    draws = True        # local workers' lines come through sys.stderr, not across the bar

    def __init__(self, interval: float = BAR_INTERVAL, start: float = 0.0, stream=None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.interval = interval
        self.next = start
        self.rate = RateMeter()
        self.lock = threading.RLock()
        self.stream = sys.stderr if stream is None else stream
        self.bar = Progress(TextColumn("[bold]batch"), BarColumn(),
                            TextColumn("{task.fields[text]}"), console=Console(file=self.stream),
                            auto_refresh=False, redirect_stderr=False, redirect_stdout=False)
        self.task = self.bar.add_task("batch", total=None, text="starting")
        self.live = True
        self.bar.start()
        if stream is None:
            sys.stderr = LinesAbove(self)

    def due(self, now: float) -> bool:
        return now >= self.next

    def show(self, snapshot: dict, now: float, elapsed: float) -> None:
        self.next = now + self.interval
        f = figures(snapshot, elapsed, self.rate.update(now, snapshot["finished"]))
        with self.lock:
            if self.live:
                self.bar.update(self.task, total=f["total"] or None, completed=f["finished"],
                                text=bar_text(f))
                self.bar.refresh()

    def close(self, snapshot: dict, now: float, elapsed: float) -> None:
        """The last frame, left on the screen above the summary line."""
        self.show(snapshot, now, elapsed)
        self.stop()

    def stop(self) -> None:
        """Give the terminal back (sys.stderr, the cursor); safe to call again."""
        with self.lock:
            if not self.live:
                return
            self.live = False
            self.bar.stop()
            stand_in = sys.stderr
            if isinstance(stand_in, LinesAbove) and stand_in.bar is self:
                sys.stderr = self.stream
                if stand_in.partial:
                    self.stream.write(stand_in.partial)

    def print_lines(self, lines: list[str]) -> None:
        """Under the lock: whole lines above the bar, or straight out once it stopped."""
        if self.live:
            for line in lines:
                self.bar.console.print(line, markup=False, highlight=False, emoji=False,
                                       soft_wrap=True)
        else:
            self.stream.write("".join(line + "\n" for line in lines))


class LinesAbove:
    """sys.stderr while a BarProgress runs: whole lines go above the bar, one writer at a
    time; the rest of what a stream offers is the real stderr's."""

    def __init__(self, bar: BarProgress) -> None:
        self.bar = bar
        self.partial = ""

    def write(self, text: str) -> int:
        with self.bar.lock:
            *lines, self.partial = (self.partial + text).split("\n")
            if lines:
                self.bar.print_lines(lines)
        return len(text)

    def flush(self) -> None:
        self.bar.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.bar.stream, name)


def bar_text(f: dict) -> str:
    """What the bar shows beside itself."""
    failed = f" [red]{f['failed']} failed[/]" if f["failed"] else ""
    return (f"{f['finished']}/{f['total']}{failed} · {f['rate']:.1f}/s · ETA "
            f"{format_eta(f['eta'])} · {f['running']} running · {f['queued_on_workers']} "
            f"queued on workers · {f['workers']} workers")


def make_progress(start: float) -> LogProgress | BarProgress:
    """A bar when stderr is a terminal that can draw one and logs are text; log lines else."""
    stream = sys.stderr
    if (stream is not None and stream.isatty() and os.environ.get("TERM") != "dumb"
            and not json_logs()):
        return BarProgress(start=start)
    return LogProgress(start=start)
