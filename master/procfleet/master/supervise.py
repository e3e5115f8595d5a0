"""`--restart-on-crash N`: run the batch in a child process and restart it when it is killed.

A master that ends a batch exits with the batch's code (1 means "done, some tasks failed") and
is never restarted; one that dies of a signal it was not sent (SIGKILL, the OOM killer, a
segfault) is started again with the same command line, and resumes from its journal. This is
the master image's answer to crashes: a container restart policy cannot tell exit 1 from a
crash, and would start a finished batch again and again.
"""

import logging
import os
import random
import signal
import subprocess
import sys
import time

from procfleet.shared.errors import EXIT_UNFINISHED

log = logging.getLogger(__name__)

#: the first restart waits this long; each further one twice as long, up to MAX_RESTART_DELAY
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 10.0
#: how often the supervisor looks at its child and at the signal flag
POLL = 0.2


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
            delay = min(RESTART_DELAY * 2 ** (restarts - 1), MAX_RESTART_DELAY)
            delay *= 0.5 + random.random() / 2
            log.warning("the batch process was killed by %s: restarting it from the journal "
                        "in %.1f s (restart %d of %d)", name, delay, restarts, self.max_restarts)
            deadline = time.monotonic() + delay
            while not self.signum and time.monotonic() < deadline:
                time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
            if self.signum:
                return EXIT_UNFINISHED

    def _run_once(self) -> tuple[int, bool]:
        child = subprocess.Popen(self.argv, env={**os.environ, "PROCFLEET_RESTART_ON_CRASH": "0"})
        forwarded = False
        while True:
            try:
                return child.wait(POLL), forwarded
            except subprocess.TimeoutExpired:
                pass
            if self.signum and not forwarded:
                child.send_signal(self.signum)
                forwarded = True


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def supervise(max_restarts: int) -> int:
    """Run this same `procfleet master` command as a child, restarting it when it crashes."""
    argv = [sys.executable, "-m", "procfleet.shared.cli", *sys.argv[1:],
            "--restart-on-crash", "0"]
    return Supervisor(argv, max_restarts).run()
