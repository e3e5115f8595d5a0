"""`procfleet worker`: options, settings, task-module imports and exit codes."""

import importlib
import os
import socket
import sys

import click

from procfleet.shared.cli import Seconds, fail
from procfleet.shared.errors import ConfigError, ProcfleetError
from procfleet.shared.logs import configure_logging
from procfleet.shared.protocol import MAX_WORKER_ID, check_worker_id
from procfleet.shared.settings import load_authkey, parse_address, resolve_host
from procfleet.shared.tasks import registry

from .settings import (DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_MASTER,
                       WorkerSettings)
from .worker import Worker


def import_task_modules(names: tuple[str, ...]) -> None:
    """Import each user module so its @task functions register; ConfigError if one fails."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a user's module can raise anything while importing
            raise ConfigError(f"--import {name}: cannot import it: {type(exc).__name__}: {exc} "
                              "(check PROCFLEET_IMPORTS / --import and the module's path)") from None


def split_imports(options: tuple[str, ...]) -> tuple[str, ...]:
    """--import may repeat; PROCFLEET_IMPORTS holds a comma-separated list."""
    names = options or tuple(os.environ.get("PROCFLEET_IMPORTS", "").split(","))
    return tuple(n.strip() for n in names if n.strip())


def _checked_id(value: str | None) -> str | None:
    """--id as the master will take it (it refuses any other at hello), or a usage error."""
    if value is not None:
        try:
            check_worker_id(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@click.command()
@click.option("--master", "master_address", envvar="PROCFLEET_MASTER", default=DEFAULT_MASTER,
              show_default=True, metavar="HOST:PORT",
              help="The master to work for (env PROCFLEET_MASTER).")
@click.option("--concurrency", type=click.IntRange(min=1, max=1024), default=1,
              show_default=True, metavar="K", envvar="PROCFLEET_CONCURRENCY",
              help="Run up to K tasks at once (env PROCFLEET_CONCURRENCY).")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Import MODULE to register its tasks; repeatable "
                   "(env PROCFLEET_IMPORTS, comma-separated).")
@click.option("--connect-timeout", type=Seconds(min=0),
              default=DEFAULT_CONNECT_TIMEOUT, show_default=True, metavar="SECONDS",
              envvar="PROCFLEET_CONNECT_TIMEOUT",
              help="Keep retrying an unreachable master this long, then exit 3.")
@click.option("--drain-timeout", type=Seconds(min=0), default=DEFAULT_DRAIN_TIMEOUT,
              show_default=True, metavar="SECONDS", envvar="PROCFLEET_DRAIN_TIMEOUT",
              help="On SIGTERM, finish running tasks for up to SECONDS, then hand back the rest.")
@click.option("--id", "worker_id", metavar="NAME", envvar="PROCFLEET_WORKER_ID",
              callback=lambda _ctx, _param, value: _checked_id(value),
              help="This worker's name in results and logs: printable, at most "
                   f"{MAX_WORKER_ID} characters [default: HOSTNAME-PID].")
@click.option("-v", "--verbose", count=True, help="Log more (debug).")
def worker(master_address, concurrency, imports, connect_timeout, drain_timeout, worker_id,
           verbose):
    """Lease tasks from a master, run them and send back their results.

    \b
    Exit codes: 0 the master said the batch is done, or SIGTERM after draining;
    2 configuration error, including a wrong key; 3 the master stayed unreachable.
    The key comes from PROCFLEET_AUTHKEY or PROCFLEET_AUTHKEY_FILE.
    """
    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
    configure_logging(verbose, f"worker {worker_id}")
    try:
        settings = WorkerSettings(
            master=parse_address(master_address, "--master"), authkey=load_authkey(),
            worker_id=worker_id, concurrency=concurrency, imports=split_imports(imports),
            connect_timeout=connect_timeout, drain_timeout=drain_timeout)
        resolve_host(settings.master[0], "--master")
        import_task_modules(settings.imports)
        w = Worker(settings, registry)
        w.install_signal_handlers()
        code = w.run()
    except ProcfleetError as exc:
        fail(exc)
    sys.exit(code)
