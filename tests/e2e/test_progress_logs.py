"""Watching a real batch: the live bar on a terminal (a pty), the summary as a JSON file,
JSON log lines and -v's debug lines, and the demo spread over every worker."""

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from collections import Counter

from procs import assert_exactly_once, read_results, summary

#: rich's control sequences (cursor moves, colours), taken out to read the bar's text
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def run_on_a_terminal(args: list[str], env: dict, timeout: float = 60) -> tuple[int, str]:
    """Run `procfleet ARGS` with its stderr on a pty (200 columns) and return (exit code,
    what it wrote there)."""
    master_fd, slave_fd = pty.openpty()
    fcntl.ioctl(slave_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master_fd, 65536)
            except OSError:             # EIO: every writer closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc = subprocess.Popen([sys.executable, "-m", "procfleet.shared", *args],
                            env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave_fd, start_new_session=True)
    os.close(slave_fd)
    try:
        code = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    reader.join(10)
    os.close(master_fd)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_a_terminal_gets_a_live_bar_with_running_and_queued_apart(authkey_env, tmp_path):
    """One worker with 2 slots holds 4 or more slow tasks: 2 run, the rest wait in it. The
    old progress line counted them all as running."""
    out = tmp_path / "results.jsonl"
    code, screen = run_on_a_terminal(
        ["master", "--demo", "12", "--demo-sleep", "0.5", "--local-workers", "1",
         "--bind", "127.0.0.1:0", "--results", str(out)],
        {"PROCFLEET_CONCURRENCY": "2", "TERM": "xterm-256color", "COLUMNS": "200"})
    text = ANSI.sub("\n", screen)
    assert code == 0, text[-3000:]
    assert_exactly_once(read_results(out), {str(i): i * i for i in range(12)})
    shown = [tuple(map(int, m.groups())) for m in re.finditer(
        r"(\d+)/12 · [\d.]+/s · ETA \S+ · (\d+) running · (\d+) queued on workers · "
        r"(\d+) workers", text)]
    assert shown, text[-3000:]
    # the worker holds more than its 2 slots (PREFETCH), yet never more than 2 count as running
    assert any(running + queued > 2 for _, running, queued, _ in shown), shown
    assert all(running <= 2 for _, running, _, _ in shown), shown
    # both at once; how many run is as the worker said at its last call (on a loaded machine
    # a slot may not have begun its next task yet when the worker calls in with results)
    assert any(running and queued for _, running, queued, _ in shown), shown
    assert (12, 0, 0, 1) in shown                       # the closing frame: all done
    assert "progress:" not in text                      # the bar instead of the log lines
    # the local worker's lines come through the master, above the bar, not across it
    assert re.search(r"^\S+ worker local-\S+: connected to master", text, re.M), text[-3000:]
    assert not re.search(r"workers[^\n]*worker local-", text), text[-3000:]
    assert re.search(r"master: summary: \{", text)      # the closing line is still logged
    # nothing of the bar after it (rich's own stand-in wrote a line another thread had
    # rendered with a frame after the bar had stopped)
    assert "queued on workers" not in screen.partition("master: summary: ")[2]


def test_the_readme_demo_gives_every_worker_a_share(spawn, tmp_path):
    """`make up` and the README's demo once ran all 100 tasks on the first worker in 0.01 s,
    the others joining after the batch ended. With --wait-workers and a task sleep, each of
    the 4 workers does some; --summary-json holds what the closing line says."""
    out, summary_path = tmp_path / "results.jsonl", tmp_path / "summary.json"
    master = spawn("master", "--demo", "100", "--demo-sleep", "0.05", "--local-workers", "4",
                   "--wait-workers", "4", "--bind", "127.0.0.1:0", "--results", out,
                   "--summary-json", summary_path)
    assert master.wait(60) == 0, master.tail()
    results = read_results(out)
    assert_exactly_once(results, {str(i): i * i for i in range(100)})
    per_worker = Counter(r["worker"] for r in results)
    assert len(per_worker) == 4 and min(per_worker.values()) >= 5, per_worker
    written = json.loads(summary_path.read_text())
    assert written == summary(master)
    assert (written["tasks"], written["ok"], written["workers"]) == (100, 100, 4)


def test_json_logs_and_v_debug_lines_from_master_and_workers(spawn, tmp_path):
    """--log-format json: every stderr line (local workers' too) is one JSON object, with
    the summary as a field; -v adds each worker's calls once a second, not once a call."""
    out, summary_path = tmp_path / "results.jsonl", tmp_path / "summary.json"
    master = spawn("master", "--demo", "400", "--demo-sleep", "0.01", "--local-workers", "2",
                   "--bind", "127.0.0.1:0", "--results", out, "--summary-json", summary_path,
                   "--log-format", "json", "-v", env={"PROCFLEET_VERBOSE": "1"})
    assert master.wait(60) == 0, master.tail()
    entries = [json.loads(line) for line in master.stderr.splitlines() if line.strip()]
    assert entries and all({"time", "actor", "level", "logger", "message"} <= set(e)
                           for e in entries)
    actors = Counter(e["actor"].split()[0] for e in entries)
    assert actors["master"] and actors["worker"], actors
    [closing] = [e for e in entries if "summary" in e]
    assert closing["summary"] == json.loads(summary_path.read_text())
    assert closing["message"].startswith("summary: {")
    calls = [e for e in entries if e["level"] == "debug" and e["actor"] == "master"
             and "calls in" in e["message"]]
    assert {e["worker"] for e in calls} == {e["actor"].split()[1] for e in entries
                                            if e["actor"].startswith("worker ")}
    assert sum(e["results"] for e in calls) == 400          # every result counted once
    seconds = closing["summary"]["seconds"]
    assert len(calls) <= 2 * (seconds + 2), f"{len(calls)} lines in {seconds} s"
    exchanges = [e for e in entries if e["actor"].startswith("worker ")
                 and e["level"] == "debug" and "exchanges in" in e["message"]]
    assert exchanges and all(0 <= e["started"] <= e["held"] for e in exchanges)
