"""`--restart-on-crash N`: run the batch in a child process and restart it when it is killed.

A master that ends a batch exits with the batch's code (1 means "done, some tasks failed") and
is never restarted; one that dies of a signal it was not sent (SIGKILL, the OOM killer, a
segfault) is started again with the same command line, and resumes from its journal. This is
the master image's answer to crashes: a container restart policy cannot tell exit 1 from a
crash, and would start a finished batch again and again.

The batch process dies with its supervisor: on Linux the kernel sends it SIGTERM (it stops
cleanly, exit 3) when the supervisor is gone, even by SIGKILL.
"""

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

from procfleet.shared.backoff import backoff_delay
from procfleet.shared.errors import EXIT_UNFINISHED

log = logging.getLogger(__name__)

#: the first restart waits this long; each further one twice as long, up to MAX_RESTART_DELAY
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 10.0
#: how often the supervisor looks at its child and at the signal flag
POLL = 0.2
#: the batch process's environment holds its supervisor's pid here (see die_with_supervisor)
ENV_SUPERVISOR_PID = "PROCFLEET_SUPERVISOR_PID"
#: prctl(2): the signal this process gets when its parent dies
PR_SET_PDEATHSIG = 1


class Supervisor:
    def __init__(self, argv: list[str], max_restarts: int) -> None:
        self.argv = argv
        self.max_restarts = max_restarts
        self.signum = 0

    def _on_signal(self, signum, _frame) -> None:
        self.signum = signum      # forwarded to the child by the loop

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        restarts = 0
        while True:
            code, forwarded = self._run_once()
            if code >= 0 or forwarded or self.signum:
                return code if code >= 0 else 128 - code
            name = signal_name(-code)
            if restarts >= self.max_restarts:
                log.error("the batch process was killed by %s and has been restarted %d times "
                          "(--restart-on-crash %d): giving up; run the same command again to "
                          "resume from the journal", name, restarts, self.max_restarts)
                return EXIT_UNFINISHED
            restarts += 1
            delay = backoff_delay(restarts, RESTART_DELAY, MAX_RESTART_DELAY)
            log.warning("the batch process was killed by %s: restarting it from the journal "
                        "in %.1f s (restart %d of %d)", name, delay, restarts, self.max_restarts)
            deadline = time.monotonic() + delay
            while not self.signum and time.monotonic() < deadline:
                time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
            if self.signum:
                return EXIT_UNFINISHED

    def _run_once(self) -> tuple[int, bool]:
        child = subprocess.Popen(self.argv, env={**os.environ, "PROCFLEET_RESTART_ON_CRASH": "0",
                                                 ENV_SUPERVISOR_PID: str(os.getpid())})
        forwarded = False
        while True:
            try:
                return child.wait(POLL), forwarded
            except subprocess.TimeoutExpired:
                pass
            if self.signum and not forwarded:
                child.send_signal(self.signum)
                forwarded = True


def die_with_supervisor(supervisor_pid: int) -> bool:
    """In the batch process: have the kernel send it SIGTERM when its parent dies. False if
    the supervisor is already gone (it died before this call: no signal would ever come)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("cannot ask to die with the supervisor: %s",
                        os.strerror(ctypes.get_errno()))
    return os.getppid() == supervisor_pid


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def supervise(max_restarts: int) -> int:
    """Run this same `procfleet master` command as a child, restarting it when it crashes."""
    argv = [sys.executable, "-m", "procfleet.shared", *sys.argv[1:],
            "--restart-on-crash", "0"]
    return Supervisor(argv, max_restarts).run()
