"""The manager definition: one BaseManager subclass, its typeid and the dispatcher's proxy.

The master registers the dispatcher typeid with a callable (procfleet.master.server); workers use
`FleetManager` as it is here, with the same typeid and no callable.
"""

from multiprocessing import AuthenticationError
from multiprocessing.managers import BaseManager, BaseProxy

from .errors import AuthenticationFailed, MasterUnreachable
from .settings import ENV_AUTHKEY, ENV_AUTHKEY_FILE, format_address

PROTOCOL_VERSION = 1

#: typeid under which the master serves its dispatcher
DISPATCHER = "dispatcher"
#: the dispatcher's methods a peer may call
DISPATCHER_METHODS = ("hello", "exchange", "goodbye", "ping")

#: what `exchange` tells a worker to do next
RUN = "run"
STOP = "stop"

#: errors that mean "nobody answered there (yet)": worth retrying
CONNECT_ERRORS = (ConnectionError, EOFError, TimeoutError, OSError)


class DispatcherProxy(BaseProxy):
    """Client side of the dispatcher; every call is one round trip carrying whole batches."""

    _exposed_ = DISPATCHER_METHODS

    def hello(self, worker_id: str, info: dict) -> dict:
        return self._callmethod("hello", (worker_id, info))

    def exchange(self, worker_id: str, outcomes: list, want: int, wait: float) -> tuple:
        """Hand back finished outcomes, lease up to `want` tasks; also the heartbeat."""
        return self._callmethod("exchange", (worker_id, outcomes, want, wait))

    def goodbye(self, worker_id: str, unfinished: list) -> None:
        return self._callmethod("goodbye", (worker_id, unfinished))

    def ping(self) -> dict:
        return self._callmethod("ping")


class FleetManager(BaseManager):
    """The manager both sides agree on."""


FleetManager.register(DISPATCHER, proxytype=DispatcherProxy, exposed=DISPATCHER_METHODS)


def auth_failure_message(address: tuple[str, int]) -> str:
    return (
        f"authentication failed connecting to master {format_address(address)}: "
        f"the key in {ENV_AUTHKEY} (or {ENV_AUTHKEY_FILE}) differs from the master's; "
        "give every process of the cluster the same key"
    )


def connect(address: tuple[str, int], authkey: bytes, manager_class=FleetManager) -> DispatcherProxy:
    """Connect once and return the dispatcher proxy.

    Raises AuthenticationFailed for a wrong key and MasterUnreachable when nobody answers.
    """
    manager = manager_class(address=address, authkey=authkey)
    try:
        manager.connect()
        proxy = getattr(manager, DISPATCHER)()
        proxy._connect()
    except AuthenticationError:
        raise AuthenticationFailed(auth_failure_message(address)) from None
    except CONNECT_ERRORS as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise MasterUnreachable(
            f"master {format_address(address)} is not reachable: {reason}"
        ) from None
    return proxy
