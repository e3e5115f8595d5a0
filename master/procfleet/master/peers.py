"""Which peer the current server thread is serving, for log lines.

The connection server (connections.py) records it as it takes a connection; the service
(rpc.py) and anything else a call runs reads it, without importing the socket server.
"""

import threading

_peer = threading.local()


def serving(address: str) -> None:
    """This thread now serves the peer at `address` (host:port)."""
    _peer.address = address


def current_peer() -> str:
    """The address of the peer whose request this server thread is serving ('?' if none)."""
    return getattr(_peer, "address", "?")
