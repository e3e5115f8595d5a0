"""A job on a service, from the client's side: what `procfleet submit` and FleetExecutor share.

Two connections, one per direction, each used by one thread: `put` (task lines in, waiting for
room when the master's backlog for the job is full) and `results` (result lines out, a long
poll). Every call is the job's heartbeat, and `results` runs at least once a second while the
job is open, so the master knows the client is there.
"""

import threading

from procfleet.shared.codec import RemoteCallError
from procfleet.shared.connection import connect_with_retry
from procfleet.shared.errors import ProcfleetError
from procfleet.shared.manager import CONNECT_ERRORS, STOP, DispatcherProxy
from procfleet.shared.settings import format_address

#: task lines sent in one call, and their bytes
PUT_LINES = 2_000
PUT_BYTES = 8 * 1024 * 1024
#: result lines asked for in one call
TAKE_LINES = 20_000
#: how long one call may wait at the master (it caps waits at a second)
WAIT = 1.0


class MasterGone(ProcfleetError):
    """The master closed the job's connection, stopped, or dropped the job. When it said it
    is stopping, `lines` and `figures` are its last reply's."""

    exit_code = 3
    lines: list = []
    figures: dict = {}


class JobClient:
    def __init__(self, address: tuple[str, int], authkey: bytes, options: dict, *,
                 connect_timeout: float = 30.0, stop: threading.Event | None = None) -> None:
        self.address = address
        self.stop = stop or threading.Event()
        self._put = self._connect(authkey, connect_timeout)
        self._take = self._connect(authkey, connect_timeout)
        self._control = self._connect(authkey, connect_timeout)
        self._control_lock = threading.Lock()
        info = self._call(self._control, "job_open", options)
        self.job: str = info["job"]
        self.lease_timeout: float = info["lease_timeout"]
        for proxy in (self._put, self._take, self._control):
            # a master that stops answering is gone: its calls wait at most WAIT
            proxy.set_call_timeout(max(10.0, 2 * self.lease_timeout) + WAIT)
        self.sent = 0           # task lines the master took
        self.closed = False

    def _connect(self, authkey: bytes, timeout: float) -> DispatcherProxy:
        proxy = connect_with_retry(self.address, authkey, timeout, self.stop)
        if proxy is None:
            raise MasterGone("stopped while connecting to the master")
        return proxy

    def _call(self, proxy: DispatcherProxy, method: str, *args):
        try:
            return getattr(proxy, method)(*args)
        except RemoteCallError as exc:
            if "no job" in exc.message:
                raise MasterGone(f"master {format_address(self.address)} dropped the job: "
                                 f"{exc.message}") from None
            raise
        except CONNECT_ERRORS as exc:
            raise MasterGone(f"lost the connection to master {format_address(self.address)} "
                             f"({type(exc).__name__}: {exc}); the job's unfinished tasks are "
                             "lost with it") from None

    # -- the put thread -----------------------------------------------------------------------
    def put(self, lines: list[str], end: bool = False) -> None:
        """Send `lines` (checked task lines), waiting while the master has no room; `end`:
        they are the job's last. Returns once the master took every one (or `stop` is set)."""
        start = 0
        while start < len(lines) or end:
            chunk, size = [], 0
            for line in lines[start:start + PUT_LINES]:
                size += len(line)
                if chunk and size > PUT_BYTES:
                    break
                chunk.append(line)
            last = end and start + len(chunk) == len(lines)
            taken = self._call(self._put, "job_put", self.job, chunk, last, WAIT)
            start += taken
            self.sent += taken
            if last and taken == len(chunk):
                return
            if self.stop.is_set():
                raise MasterGone("stopped while sending tasks")

    # -- the results thread ---------------------------------------------------------------------
    def results(self) -> tuple[list[str], dict]:
        """(result lines, the job's figures); waits up to a second for a line. MasterGone
        once the master is stopping."""
        lines, figures = self._call(self._take, "job_results", self.job, TAKE_LINES, WAIT)
        if figures.get("state") == STOP and not figures.get("done"):
            gone = MasterGone(f"master {format_address(self.address)} is stopping; "
                              f"{figures['submitted'] - figures['finished']} tasks of the job "
                              "are unfinished")
            gone.lines, gone.figures = lines, figures
            raise gone
        return lines, figures

    # -- any thread -----------------------------------------------------------------------------
    def cancel(self, seqs: list[int]) -> list[int]:
        with self._control_lock:
            return self._call(self._control, "job_cancel", self.job, seqs)

    def workers(self) -> int:
        """How many workers are connected to the master now."""
        with self._control_lock:
            return self._call(self._control, "ping")["workers"]

    def close(self) -> dict | None:
        """Forget the job at the master (what no worker holds never runs); None if the master
        is gone already."""
        if self.closed:
            return None
        self.closed = True
        try:
            with self._control_lock:
                return self._call(self._control, "job_close", self.job)
        except (MasterGone, RemoteCallError):
            return None
