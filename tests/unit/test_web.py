"""The metrics/dashboard port's own rules: a bare port is loopback, and while on loopback only
loopback host names are answered (a DNS-rebinding page elsewhere cannot read the figures)."""

import pytest

from procfleet.master.settings import WebAddress
from procfleet.master.web import _is_loopback, _loopback_host


@pytest.mark.parametrize("given, address", [
    ("9100", ("127.0.0.1", 9100)), (" 9100 ", ("127.0.0.1", 9100)),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)), ("[::1]:0", ("::1", 0))])
def test_metrics_address_defaults_to_loopback(given, address):
    assert WebAddress().convert(given, None, None) == address


@pytest.mark.parametrize("host, ok", [
    ("localhost:9100", True), ("127.0.0.1:9100", True), ("127.3.2.1", True), ("[::1]:9100", True),
    ("LOCALHOST", True), ("attacker.example:9100", False), ("10.0.0.1:9100", False),
    ("", False), ("[::ffff:10.0.0.1]:80", False)])
def test_only_loopback_host_names_pass_on_a_loopback_port(host, ok):
    assert _loopback_host(host) is ok


def test_loopback_binds():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::")
