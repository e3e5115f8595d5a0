"""Listening and connecting across address families: IPv4, IPv6, dual-stack, names with both."""

import errno
import logging
import socket
import time

import pytest
from fakes import TEST_KEY
from ipv6 import require_ipv6_loopback

from procfleet.master.connections import listen, start_server
from procfleet.shared.errors import ConfigError
from procfleet.shared.manager import connect
from procfleet.shared.settings import format_address, parse_address
from procfleet.shared.transport import connect_first, resolve

KEY = TEST_KEY.encode()
#: longest a test waits for anything that should happen at once
PROMPT = 5.0
#: a name the fake resolver answers with both ::1 and 127.0.0.1
DUAL = "dual.procfleet.test"


class PingService:
    """The one dispatcher method these tests call."""

    heartbeat_interval = 1.0        # start_server derives the idle timeout from it

    def ping(self):
        return {"state": "run"}


@pytest.fixture
def ipv6():
    require_ipv6_loopback()


@pytest.fixture
def serve():
    """Factory: a real master server on `address`; closed at teardown."""
    servers = []

    def start(address):
        servers.append(start_server(PingService(), address, KEY))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def dual_name(monkeypatch):
    """Factory: make DUAL resolve to ::1 and 127.0.0.1, in the given order, like a real
    resolver (it honours the family asked for); other names resolve as usual."""
    real = socket.getaddrinfo

    def install(order):
        def fake(host, port, family=0, type=0, proto=0, flags=0):
            if host != DUAL:
                return real(host, port, family, type, proto, flags)
            infos = [(f, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                      ("::1", port, 0, 0) if f == socket.AF_INET6 else ("127.0.0.1", port))
                     for f in order]
            infos = [i for i in infos if family in (socket.AF_UNSPEC, i[0])]
            if not infos:
                raise socket.gaierror(socket.EAI_ADDRFAMILY,
                                      "Address family for hostname not supported")
            return infos

        monkeypatch.setattr(socket, "getaddrinfo", fake)

    return install


def connects(family, host, port) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROMPT)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


# --- resolving and connecting -------------------------------------------------------------

def test_resolve_gives_ipv6_and_ipv4_addresses(ipv6):
    assert resolve("::1", 5, PROMPT) == [(socket.AF_INET6, ("::1", 5, 0, 0))]
    assert resolve("127.0.0.1", 5, PROMPT) == [(socket.AF_INET, ("127.0.0.1", 5))]


@pytest.mark.parametrize("listening", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("order", [(socket.AF_INET6, socket.AF_INET),
                                   (socket.AF_INET, socket.AF_INET6)],
                         ids=["v6-first", "v4-first"])
def test_a_name_with_both_addresses_reaches_the_master_on_either(ipv6, serve, dual_name,
                                                                  listening, order):
    server = serve((listening, 0))
    port = server.address[1]
    dual_name(order)
    assert resolve(DUAL, port, PROMPT) == [
        (f, ("::1", port, 0, 0) if f == socket.AF_INET6 else ("127.0.0.1", port)) for f in order]
    started = time.monotonic()
    assert connect((DUAL, port), KEY, timeout=PROMPT).ping() == {"state": "run"}
    assert time.monotonic() - started < PROMPT / 2      # a refused address costs no waiting


def test_connect_first_tries_the_next_address_and_raises_the_last_error():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = (socket.AF_INET, closed.getsockname())
        with listen(("127.0.0.1", 0), 8) as up:
            reachable = (socket.AF_INET, up.getsockname())
            deadline = time.monotonic() + PROMPT
            with connect_first([refused, reachable], deadline) as sock:
                assert sock.getpeername() == up.getsockname()
        with pytest.raises(ConnectionRefusedError):
            connect_first([refused, refused], time.monotonic() + PROMPT)


def test_connect_first_tries_nothing_after_its_deadline():
    with listen(("127.0.0.1", 0), 8) as up:
        with pytest.raises(TimeoutError, match="no time left"):
            connect_first([(socket.AF_INET, up.getsockname())], time.monotonic() - 1)


# --- listening ----------------------------------------------------------------------------

@pytest.mark.parametrize("host,family", [("127.0.0.1", socket.AF_INET),
                                         ("0.0.0.0", socket.AF_INET),
                                         ("::1", socket.AF_INET6)])
def test_listen_uses_the_family_of_the_address(host, family):
    if family == socket.AF_INET6:
        require_ipv6_loopback()
    with listen((host, 0), 8) as sock:
        assert sock.family == family
        assert sock.getsockname()[0] == host


def test_the_default_wildcard_stays_ipv4_only(ipv6):
    with listen(("0.0.0.0", 0), 8) as sock:
        port = sock.getsockname()[1]
        assert connects(socket.AF_INET, "127.0.0.1", port)
        assert not connects(socket.AF_INET6, "::1", port)


def test_the_ipv6_wildcard_listens_dual_stack(ipv6):
    with listen(("::", 0), 8) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        assert connects(socket.AF_INET6, "::1", port)
        assert connects(socket.AF_INET, "127.0.0.1", port)


class NoIPv6Socket(socket.socket):
    """socket.socket on a kernel without IPv6."""

    def __init__(self, family=-1, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        super().__init__(family, *args, **kwargs)


def test_the_ipv6_wildcard_falls_back_to_ipv4_without_ipv6(monkeypatch, caplog):
    monkeypatch.setattr(socket, "socket", NoIPv6Socket)
    with listen(("::", 0), 8) as sock:
        assert sock.family == socket.AF_INET
        assert sock.getsockname()[0] == "0.0.0.0"
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "this host has no IPv6" in record.getMessage()
    assert "listening on 0.0.0.0:0, IPv4 only" in record.getMessage()


@pytest.mark.parametrize("ci,outcome", [("", pytest.skip.Exception),
                                        ("true", pytest.fail.Exception)])
def test_ipv6_tests_skip_without_ipv6_but_fail_in_ci(monkeypatch, ci, outcome):
    monkeypatch.setattr(socket, "socket", NoIPv6Socket)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=r"cannot bind \[::1\]:0"):
        require_ipv6_loopback()


def test_an_explicit_ipv6_address_does_not_fall_back(monkeypatch):
    monkeypatch.setattr(socket, "socket", NoIPv6Socket)
    with pytest.raises(ConfigError, match=r"cannot listen on \[::1\]:0: Address family not "
                                          r"supported.*--bind"):
        start_server(PingService(), ("::1", 0), KEY)


def test_a_name_with_both_addresses_listens_on_ipv4_as_before(dual_name):
    dual_name((socket.AF_INET6, socket.AF_INET))
    with listen((DUAL, 0), 8) as sock:
        assert sock.family == socket.AF_INET


def test_an_ipv6_server_keeps_host_and_port_as_its_address(ipv6, serve):
    server = serve(("::1", 0))
    host, port = server.address
    assert host == "::1" and port > 0
    assert connect(server.address, KEY, timeout=PROMPT).ping() == {"state": "run"}


def test_a_dual_stack_server_serves_ipv4_and_ipv6_clients(ipv6, serve):
    server = serve(("::", 0))
    port = server.address[1]
    assert server.address == ("::", port)
    for host in ("::1", "127.0.0.1"):
        assert connect((host, port), KEY, timeout=PROMPT).ping() == {"state": "run"}


# --- addresses as text ----------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [("[::1]:50000", ("::1", 50000)),
                                           ("[::]:0", ("::", 0)),
                                           ("[fe80::1%lo]:7", ("fe80::1%lo", 7))])
def test_parse_ipv6_addresses(text, expected):
    assert parse_address(text, "--bind") == expected


def test_empty_brackets_name_the_option():
    with pytest.raises(ConfigError, match="no address between the brackets") as err:
        parse_address("[]:50000", "--master")
    assert str(err.value).startswith("--master: ")


def test_format_address_brackets_ipv6_and_takes_a_socket_address():
    assert format_address(("::1", 5)) == "[::1]:5"
    assert format_address(("::1", 5, 0, 0)) == "[::1]:5"
    assert format_address(("127.0.0.1", 5)) == "127.0.0.1:5"
