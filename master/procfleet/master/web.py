"""The master's read-only web port (`--metrics HOST:PORT`): Prometheus metrics at /metrics, the
dashboard at / (polling /api/status), nothing that changes anything.

Off unless asked for; a bare port binds loopback. Every figure is read from the service under
its lock at request time (a scrape costs what a `procfleet status` costs). While bound to a
loopback address, requests must name a loopback host (a DNS-rebinding page on another site
cannot read the figures); the dashboard's page takes no script from elsewhere (its CSP says so).
"""

import ipaddress
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from procfleet.shared.errors import ConfigError
from procfleet.shared.settings import format_address

from .figures import Durations

log = logging.getLogger(__name__)

#: the dashboard's files (package data), by path
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
          "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
#: how often the server's loop looks for close() (what it adds to the master's exit, at most)
POLL = 0.1
#: a connection that sends nothing for this long is closed (a thread each: keep them short)
IDLE_TIMEOUT = 10.0


class MasterCollector:
    """The master's figures as Prometheus metrics, read at each scrape."""

    def __init__(self, service, server, durations: Durations) -> None:
        self.service, self.server, self.durations = service, server, durations

    def collect(self):
        service, server = self.service, self.server
        status = service.status(limit=None)        # every worker, for their states
        counters = service.counter_totals()
        tasks = GaugeMetricFamily("procfleet_tasks", "Tasks by state: ok and failed (ended), "
                                  "running (held by workers), pending (waiting for one)",
                                  labels=["state"])
        for state in ("ok", "failed", "running", "pending"):
            tasks.add_metric([state], status[state])
        yield tasks
        if status.get("mode") == "batch":
            yield GaugeMetricFamily("procfleet_batch_tasks", "Tasks in the batch",
                                    value=status["total"])
        else:
            yield GaugeMetricFamily("procfleet_jobs_open", "Jobs open on the service",
                                    value=len(status["jobs"]))
        for name, key, text in (
                ("procfleet_leases_requeued", "requeued",
                 "Tasks of silent workers put back in the queue"),
                ("procfleet_duplicates_dropped", "duplicates",
                 "Late results for tasks that had one already, dropped"),
                ("procfleet_retried", "retried", "Attempts that raised and were run again"),
                ("procfleet_crashed", "crashed", "Attempts whose process died"),
                ("procfleet_workers_lost", "workers_lost",
                 "Workers silent past the lease timeout")):
            yield CounterMetricFamily(name, text, value=counters[key])
        refused = CounterMetricFamily(
            "procfleet_refused_connections", "Connections the master refused or closed, by "
            "reason", labels=["reason"])
        for reason, count in (("auth", server.auth_failures),
                              ("handshake_timeout", server.handshake_timeouts),
                              ("too_many_pending", server.shed_connections),
                              ("too_many_open", server.crowded.total),
                              ("other_wire", server.old_wire_peers),
                              ("idle", server.idle_closed)):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily("procfleet_rejected_messages", "Malformed messages refused",
                                  value=server.rejected_messages + server.refused_requests)
        yield CounterMetricFamily("procfleet_refused_calls", "Calls refused whole",
                                  value=service.notes["refused"].total)
        workers = GaugeMetricFamily("procfleet_workers", "Workers by state",
                                    labels=["state"])
        states = {"working": 0, "idle": 0, "lost": 0, "left": 0}
        for row in status["workers"]:
            states[row["state"]] += 1
        for state, count in states.items():
            workers.add_metric([state], count)
        yield workers
        yield GaugeMetricFamily("procfleet_workers_alive", "Workers alive now",
                                value=status["alive_workers"])
        buckets, total, count = service.durations_snapshot(self.durations)
        histogram = HistogramMetricFamily(
            "procfleet_task_duration_seconds", "Seconds from the lease that handed a task out "
            "to the worker's result for that attempt (its queue on the worker and the round "
            "trip included)")
        histogram.add_metric([], [(_bound(b), c) for b, c in buckets], sum_value=total)
        yield histogram


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class WebServer:
    """The HTTP server on its own daemon threads; `close()` stops it."""

    def __init__(self, service, server, address: tuple[str, int]) -> None:
        self.service = service
        self.durations = Durations()
        service.watch_durations(self.durations)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MasterCollector(service, server, self.durations))
        self.loopback_only = _is_loopback(address[0])
        handler = type("Handler", (_Handler,), {"web": self})
        try:
            self.httpd = _Server(address, handler)
        except OSError as exc:
            raise ConfigError(f"--metrics: cannot listen on {format_address(address)}: "
                              f"{exc.strerror or exc}; choose another HOST:PORT") from None
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(POLL,),
                                       name="procfleet-web", daemon=True)

    def start(self) -> None:
        self.thread.start()
        log.info("metrics and dashboard on http://%s/ (read-only%s)",
                 format_address(self.address),
                 "; loopback only" if self.loopback_only else "; NOT loopback: anyone who "
                 "reaches this port sees the cluster's figures and task errors")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def api_status(self) -> dict:
        status = self.service.status()
        status["history"] = self.service.history()
        status["failures"] = self.service.recent_failures()
        return status


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler):
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    web: WebServer
    server_version = "procfleet"
    sys_version = ""
    timeout = IDLE_TIMEOUT

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        if self.web.loopback_only and not _loopback_host(self.headers.get("Host", "")):
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"this port answers loopback names only "
                       b"(localhost, 127.0.0.1, [::1]); see the README on exposing it\n",
                       "text/plain; charset=utf-8", head)
            return
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                body, kind = generate_latest(self.web.registry), CONTENT_TYPE_LATEST
            elif path == "/api/status":
                body = json.dumps(self.web.api_status()).encode()
                kind = "application/json"
            elif path in STATIC:
                name, kind = STATIC[path]
                body = files(__package__).joinpath("dashboard", name).read_bytes()
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", head)
                return
        except Exception:       # noqa: BLE001 - a figure that fails to read is a 500, logged
            log.warning("serving %s failed", path, exc_info=True)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"error\n", "text/plain", head)
            return
        self._send(HTTPStatus.OK, body, kind, head)

    def _send(self, code: int, body: bytes, kind: str, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        log.debug("web %s: " + fmt, self.address_string(), *args)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _loopback_host(header: str) -> bool:
    """Whether a Host header names a loopback host (any port)."""
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in LOOPBACK_NAMES or _is_loopback(host)


def start_web(service, server, address: tuple[str, int]) -> WebServer:
    """Serve the metrics and the dashboard of `service` (and `server`'s connection counters)
    on `address`; ConfigError if it cannot listen there."""
    web = WebServer(service, server, address)
    web.start()
    return web
