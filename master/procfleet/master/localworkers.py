"""`--local-workers N`: worker processes on this machine, started as `procfleet worker`.

The master never imports worker code: it runs the installed command in a child process.
"""

import logging
import os
import subprocess
import sys
import threading
import time
from importlib.metadata import entry_points

from procfleet.shared.errors import ConfigError

log = logging.getLogger(__name__)

#: how long a local worker gets to exit by itself once the batch is over
EXIT_GRACE = 5.0
#: ... and how long their last lines may take to come through (relay_stderr)
RELAY_GRACE = 1.0


def reachable_host(host: str) -> str:
    """Where a process on this machine reaches a master bound to `host`: loopback for a
    wildcard bind (0.0.0.0, ::), the host itself otherwise."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def check_worker_installed() -> None:
    if not entry_points(group="procfleet.commands", name="worker"):
        raise ConfigError("--local-workers needs procfleet-worker installed here "
                          "(pip install ./worker), or run workers elsewhere")


class LocalWorkers:
    def __init__(self, count: int, master_address: str, imports: tuple[str, ...] = (),
                 authkey: bytes | None = None, env: dict | None = None,
                 log_format: str | None = None, relay_stderr: bool = False) -> None:
        """`relay_stderr`: the workers' stderr comes through this process's sys.stderr, line
        by line, instead of going to the same file directly (a live progress bar puts its
        stand-in there, which prints lines above the bar rather than across it)."""
        self.procs: list[subprocess.Popen] = []
        self.relays: list[threading.Thread] = []
        self.reported: set[int] = set()
        env = dict(os.environ if env is None else env, PROCFLEET_MASTER=master_address)
        if log_format is not None:      # they share the master's stderr: one format in it
            env["PROCFLEET_LOG_FORMAT"] = log_format
        if authkey is not None:         # FleetExecutor's own key: not in the environment
            env.pop("PROCFLEET_AUTHKEY_FILE", None)
            env["PROCFLEET_AUTHKEY"] = os.fsdecode(authkey)
        for i in range(1, count + 1):
            cmd = [sys.executable, "-m", "procfleet.shared", "worker",
                   "--id", f"local-{os.getpid()}-{i}"]
            for module in imports:
                cmd += ["--import", module]
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE if relay_stderr else None)
            self.procs.append(proc)
            if relay_stderr:
                relay = threading.Thread(target=_relay, args=(proc.stderr,), daemon=True,
                                         name=f"local-worker-{i}-stderr")
                relay.start()
                self.relays.append(relay)

    def check(self) -> bool:
        """Log workers that died; True while at least one is still running."""
        running = False
        for proc in self.procs:
            code = proc.poll()
            if code is None:
                running = True
            elif proc.pid not in self.reported:
                self.reported.add(proc.pid)
                if code != 0:
                    log.warning("local worker (pid %d) exited with code %d", proc.pid, code)
        return running

    def stop(self) -> None:
        deadline = time.monotonic() + EXIT_GRACE
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("local worker (pid %d) did not exit; killing it", proc.pid)
                proc.kill()
                proc.wait()
        for relay in self.relays:           # their last lines, written before we exit
            relay.join(max(0.0, deadline - time.monotonic()) + RELAY_GRACE)


def _relay(stream) -> None:
    """Copy a local worker's stderr to ours, a whole line per write, until it closes."""
    with stream:
        for line in iter(stream.readline, b""):
            try:
                sys.stderr.write(line.decode("utf-8", "replace"))
            except (OSError, ValueError):       # our stderr is gone: keep draining the pipe
                pass
