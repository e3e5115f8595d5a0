"""What a batch shows while it runs: the figures (rate, ETA), the log line, the bar."""

import io
import logging
import sys
import threading

import pytest

from procfleet.master.progress import (BarProgress, LinesAbove, LogProgress, RateMeter, bar_text,
                                       figures, format_eta)


def snapshot(**changes) -> dict:
    s = {"total": 100, "finished": 40, "ok": 38, "failed": 2, "running": 4,
         "queued_on_workers": 4, "pending": 52, "alive_workers": 4, "open_input": False}
    return {**s, **changes}


def test_the_rate_follows_the_last_window_not_the_whole_batch():
    meter = RateMeter(window=10.0)
    assert meter.update(0.0, 0) == 0.0
    for t in range(1, 21):                       # 100 tasks/s for 20 s
        rate = meter.update(float(t), 100 * t)
    assert rate == pytest.approx(100.0)
    for t in range(21, 41):                      # then it stalls
        rate = meter.update(float(t), 2000)
    assert rate == 0.0
    assert len(meter.samples) <= 12              # bounded, however long the batch


def test_eta_is_what_is_left_at_the_current_rate():
    f = figures(snapshot(), elapsed=8.0, rate=12.0)
    assert (f["eta"], f["running"], f["queued_on_workers"], f["workers"]) == (5.0, 4, 4, 4)
    assert figures(snapshot(), 8.0, rate=0.0)["eta"] is None
    assert figures(snapshot(open_input=True), 8.0, rate=12.0)["eta"] is None   # stdin: unknown
    assert [format_eta(s) for s in (None, 5.0, 65.4, 3725)] == ["?", "0:05", "1:05", "1:02:05"]


def test_the_log_line_comes_every_interval_with_running_and_queued_apart(caplog):
    caplog.set_level(logging.INFO, logger="procfleet.master.progress")
    progress = LogProgress(interval=5.0, start=100.0)
    assert not progress.due(104.9) and progress.due(105.0)
    progress.show(snapshot(finished=0, ok=0, failed=0), 105.0, 5.0)
    progress.show(snapshot(), 110.0, 10.0)
    assert not progress.due(114.9) and progress.due(115.0)
    record = caplog.records[-1]
    assert record.getMessage() == (
        "progress: 40/100 done (38 ok, 2 failed), 4 running, 4 queued on workers, 52 waiting, "
        "4 workers, 8.0 tasks/s, ETA 0:08, 10.0 s")
    assert record.progress["rate"] == 8.0 and record.progress["queued_on_workers"] == 4


def test_the_bar_shows_done_failed_rate_eta_running_queued_and_workers():
    assert bar_text(figures(snapshot(), 10.0, 8.0)) == (
        "40/100 [red]2 failed[/] · 8.0/s · ETA 0:08 · 4 running · 4 queued on workers · "
        "4 workers")
    out = io.StringIO()
    bar = BarProgress(interval=0.25, start=0.0, stream=out)
    assert bar.due(0.0)
    bar.show(snapshot(finished=0, ok=0, failed=0), 1.0, 1.0)
    assert not bar.due(1.2) and bar.due(1.25)
    bar.close(snapshot(finished=100, ok=98, running=0, queued_on_workers=0, pending=0), 2.0,
              2.0)
    text = out.getvalue()
    assert "100/100 2 failed · 100.0/s · ETA 0:00 · 0 running · 0 queued on workers" in text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_from_other_threads_print_above_the_bar_and_none_after_it_stops(monkeypatch):
    """While the bar runs sys.stderr is its stand-in: log lines and local workers' lines
    from any thread come out whole, and once it stopped, plainly, with no frame after."""
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    bar = BarProgress(stream=None)
    assert isinstance(sys.stderr, LinesAbove)

    def chatter(name):
        for i in range(50):
            sys.stderr.write(f"{name} line {i}\n")

    threads = [threading.Thread(target=chatter, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for i in range(20):
        bar.show(snapshot(finished=5 * i), float(i), float(i))
    for t in threads:
        t.join()
    sys.stderr.write("half a ")
    bar.close(snapshot(finished=100, ok=100, failed=0), 30.0, 30.0)
    assert sys.stderr is screen
    sys.stderr.write("line, then the summary\n")
    bar.stop()                                          # again: nothing more
    text = screen.getvalue()
    for n in range(4):
        for i in range(50):
            assert f"t{n} line {i}\n" in text
    closing = text.index("half a line, then the summary")
    assert "queued on workers" not in text[closing:]
    assert "100/100" in text[:closing]
