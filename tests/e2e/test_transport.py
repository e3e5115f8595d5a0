"""Connection attempts are bounded even when the peer accepts TCP and then says nothing."""

import socket
import time

import pytest

from procfleet.shared.errors import MasterUnreachable
from procfleet.shared.manager import connect


def test_silent_peer_cannot_hang_a_connection_attempt():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()                  # the kernel completes the handshake; nobody answers
        started = time.monotonic()
        with pytest.raises(MasterUnreachable):
            connect(silent.getsockname(), b"k" * 16, timeout=0.5)
        assert time.monotonic() - started < 5


def test_refused_port_is_unreachable_not_a_traceback():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MasterUnreachable, match=f"127.0.0.1:{port} is not reachable"):
        connect(("127.0.0.1", port), b"k" * 16, timeout=2)
