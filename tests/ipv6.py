"""IPv6 loopback for tests: skip where this host cannot bind ::1, fail in CI where it must."""

import os
import socket

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_ipv6_loopback() -> None:
    """Skip the calling test when [::1] cannot be bound here; in CI (CI set) fail it instead."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except (OSError, AttributeError) as exc:
        if in_ci():
            pytest.fail(f"IPv6 loopback is required in CI: cannot bind [::1]:0 ({exc})",
                        pytrace=False)
        pytest.skip(f"this host cannot bind [::1]:0 ({exc}); IPv6 is not tested here")
