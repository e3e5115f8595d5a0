"""The manager definition: one BaseManager subclass, its typeid and the dispatcher's proxy.

The master registers the dispatcher typeid with a callable (procfleet.master.connections); workers use
`FleetManager` as it is here, with the same typeid and no callable.
"""

import socket
from multiprocessing import AuthenticationError
from multiprocessing.managers import BaseManager, BaseProxy

from . import compat
from .errors import (AuthenticationFailed, MasterNameUnresolved, MasterUnreachable,
                     ProtocolMismatch)
from .settings import ENV_AUTHKEY, ENV_AUTHKEY_FILE, format_address
from .transport import bounded_client, set_recv_timeout
from .codec import OldWireFormat

#: 2: tasks addressed by seq, outcomes with a kind, batch ids, `release`
#: 3: exchanges carry a cursor (session, call, acked) so lost lease replies are taken back
#: 4: the msgpack wire (codec.WIRE_VERSION); ok results travel as their JSON text
#: 5: exchanges say how many of the worker's held tasks have started (running vs queued)
PROTOCOL_VERSION = 5

#: typeid under which the master serves its dispatcher
DISPATCHER = "dispatcher"
#: the dispatcher's methods a peer may call
DISPATCHER_METHODS = ("hello", "exchange", "release", "goodbye", "ping", "status",
                      "job_open", "job_put", "job_results", "job_cancel", "job_close")

#: what `exchange` tells a worker to do next
RUN = "run"
STOP = "stop"

#: the longest one connection attempt (resolve, connect, authenticate) may take
ATTEMPT_TIMEOUT = 10.0

#: errors that mean "nobody answered there (yet)": worth retrying
CONNECT_ERRORS = (ConnectionError, EOFError, TimeoutError, OSError)


class DispatcherProxy(BaseProxy):
    """Client side of the dispatcher; every call is one round trip carrying whole batches."""

    _exposed_ = DISPATCHER_METHODS

    def hello(self, worker_id: str, info: dict) -> dict:
        return self._callmethod("hello", (worker_id, info))

    def exchange(self, worker_id: str, batch: str, outcomes: list, want: int,
                 wait: float, cursor: tuple, started: int) -> tuple:
        """Hand back finished outcomes, lease up to `want` tasks; also the heartbeat.

        `cursor` = (session, call, acked): this worker process's session, this call's number,
        and the number of the last call whose reply arrived. `started`: how many of the tasks
        this worker holds once `outcomes` are taken have begun running (the rest wait in it)."""
        return self._callmethod("exchange", (worker_id, batch, outcomes, want, wait, cursor,
                                             started))

    def release(self, worker_id: str, seqs: list) -> int:
        """Hand back leased tasks this worker will not run (it is draining)."""
        return self._callmethod("release", (worker_id, seqs))

    def set_call_timeout(self, seconds: float) -> None:
        """Fail a call whose reply takes longer than `seconds` (the connection is then dead)."""
        conn = compat.proxy_connection(self)
        if conn is not None:
            set_recv_timeout(conn.fileno(), seconds)

    def goodbye(self, worker_id: str) -> None:
        """Leaving on purpose: the master requeues whatever this worker still holds."""
        return self._callmethod("goodbye", (worker_id,))

    def ping(self) -> dict:
        return self._callmethod("ping")

    def status(self) -> dict:
        """The batch's (or a service's jobs') figures and the worker table (procfleet status)."""
        return self._callmethod("status")

    # -- a client's job, on a master started with --serve (procfleet.master.service) --------
    def job_open(self, options: dict) -> dict:
        """Open a job; options: label, task_timeout, retries, retry_backoff, max_attempts."""
        return self._callmethod("job_open", (options,))

    def job_put(self, job: str, lines: list, end: bool, wait: float) -> int:
        """Add task lines (task-file JSON); returns how many the master took (it takes fewer
        while its backlog for the job is full, waiting up to `wait` s for room)."""
        return self._callmethod("job_put", (job, lines, end, wait))

    def job_results(self, job: str, limit: int, wait: float) -> tuple:
        """(result lines finished since the last call, the job's figures)."""
        return self._callmethod("job_results", (job, limit, wait))

    def job_cancel(self, job: str, seqs: list) -> list:
        """Take back tasks (by their number in the job) that no worker holds."""
        return self._callmethod("job_cancel", (job, seqs))

    def job_close(self, job: str) -> dict:
        return self._callmethod("job_close", (job,))


class FleetManager(BaseManager):
    """The manager both sides agree on; the worker's side connects with a deadline."""

    def __init__(self, address, authkey, timeout: float = 10.0):
        super().__init__(address=address, authkey=authkey)
        compat.use_client(self, bounded_client(timeout))

    def connect(self):
        """BaseManager.connect, through the bounded client (the stock one has no timeout)."""
        compat.connect_manager(self)

    def dispatcher(self) -> DispatcherProxy:
        """A proxy for the master's dispatcher.

        The master owns the dispatcher for the whole batch and workers never release it, so
        the proxy skips the incref/decref round trips, and no finalizer tries to reach a
        master that is already gone when the worker exits.
        """
        return compat.unowned_proxy(self, DISPATCHER, DispatcherProxy)


FleetManager.register(DISPATCHER, proxytype=DispatcherProxy, exposed=DISPATCHER_METHODS,
                      create_method=False)


def auth_failure_message(address: tuple[str, int]) -> str:
    return (
        f"authentication failed connecting to master {format_address(address)}: "
        f"the key in {ENV_AUTHKEY} (or {ENV_AUTHKEY_FILE}) differs from the master's; "
        "give every process of the cluster the same key"
    )


def connect(address: tuple[str, int], authkey: bytes,
            timeout: float = ATTEMPT_TIMEOUT) -> DispatcherProxy:
    """Connect once, within `timeout` seconds, and return the dispatcher proxy.

    Raises AuthenticationFailed for a wrong key, MasterUnreachable when nobody answers
    (MasterNameUnresolved when the host name does not resolve) and ProtocolMismatch for a
    master of another wire.
    """
    manager = FleetManager(address, authkey, timeout=max(timeout, 0.1))
    try:
        manager.connect()
        proxy = manager.dispatcher()
        compat.open_proxy_connection(proxy)
    except AuthenticationError:
        raise AuthenticationFailed(auth_failure_message(address)) from None
    except OldWireFormat as exc:
        raise ProtocolMismatch(
            f"master {format_address(address)} does not speak this worker's wire: "
            f"{str(exc).replace('the peer', 'it', 1)}: run the master and its workers from "
            "the same procfleet release") from None
    except socket.gaierror as exc:
        raise MasterNameUnresolved(
            f"master {format_address(address)} is not reachable: its name {address[0]!r} does "
            f"not resolve ({exc.strerror or exc})") from None
    except CONNECT_ERRORS as exc:
        reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) \
            or str(exc) or type(exc).__name__
        raise MasterUnreachable(
            f"master {format_address(address)} is not reachable: {reason}"
        ) from None
    return proxy
