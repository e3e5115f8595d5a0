"""`--local-workers N`: worker processes on this machine, started as `procfleet worker`.

The master never imports worker code: it runs the installed command in a child process.
"""

import logging
import os
import subprocess
import sys
import time
from importlib.metadata import entry_points

from procfleet.shared.errors import ConfigError

log = logging.getLogger(__name__)

#: how long a local worker gets to exit by itself once the batch is over
EXIT_GRACE = 5.0


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
                 authkey: bytes | None = None, env: dict | None = None) -> None:
        self.procs: list[subprocess.Popen] = []
        self.reported: set[int] = set()
        env = dict(os.environ if env is None else env, PROCFLEET_MASTER=master_address)
        if authkey is not None:         # FleetExecutor's own key: not in the environment
            env.pop("PROCFLEET_AUTHKEY_FILE", None)
            env["PROCFLEET_AUTHKEY"] = os.fsdecode(authkey)
        for i in range(1, count + 1):
            cmd = [sys.executable, "-m", "procfleet.shared", "worker",
                   "--id", f"local-{os.getpid()}-{i}"]
            for module in imports:
                cmd += ["--import", module]
            self.procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL))

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
