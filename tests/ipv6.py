"""IPv6 loopback for tests: skip where this host cannot bind ::1, fail in CI where it must."""

import socket

from procs import unavailable


def require_ipv6_loopback() -> None:
    """Skip the calling test when [::1] cannot be bound here; in CI (CI set) fail it instead."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except (OSError, AttributeError) as exc:
        unavailable(f"IPv6 loopback: this host cannot bind [::1]:0 ({exc})")
