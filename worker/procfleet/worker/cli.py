"""`procfleet worker`: options, settings, task-module imports and exit codes."""

import importlib
import os
import socket
import sys

import click

from procfleet.shared.cli import Command, fail
from procfleet.shared.errors import ConfigError, ProcfleetError
from procfleet.shared.logs import configure_logging
from procfleet.shared.settings import click_options, load_authkey
from procfleet.shared.tasks import registry

from .settings import WORKER_OPTIONS, WorkerSettings
from .worker import Worker


def import_task_modules(names: tuple[str, ...]) -> None:
    """Import each user module so its @task functions register; ConfigError if one fails."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
            registry.allow_module(name)
        except Exception as exc:  # a user's module can raise anything while importing
            raise ConfigError(f"--import {name}: cannot import it: {type(exc).__name__}: {exc} "
                              "(check PROCFLEET_IMPORTS / --import and the module's path)") from None


@click.command(cls=Command)
@click_options(WORKER_OPTIONS)
def worker(**options):
    """Lease tasks from a master, run them and send back their results.

    \b
    Exit codes: 0 the master said the batch is done, or SIGTERM after draining;
    2 configuration error, including a wrong key; 3 the master stayed unreachable (or its
    name did not resolve) for --connect-timeout seconds.
    The key comes from PROCFLEET_AUTHKEY or PROCFLEET_AUTHKEY_FILE.
    """
    options["worker_id"] = options["worker_id"] or f"{socket.gethostname()}-{os.getpid()}"
    configure_logging(options["verbose"], f"worker {options['worker_id']}",
                      options["log_format"])
    try:
        settings = WorkerSettings(authkey=load_authkey(), **options)
        import_task_modules(settings.imports)
        w = Worker(settings, registry)
        w.install_signal_handlers()
        code = w.run()
    except ProcfleetError as exc:
        fail(exc)
    sys.exit(code)
