"""`procfleet master`: options, settings, and exit codes."""

import sys

import click

from procfleet.shared.cli import Command, fail
from procfleet.shared.errors import EXIT_UNFINISHED, ProcfleetError
from procfleet.shared.logs import configure_logging
from procfleet.shared.settings import click_options, load_authkey

from .batch import run_master
from .serve import run_service
from .settings import MASTER_OPTIONS, MasterSettings
from .supervise import die_with_supervisor, supervise


@click.command(cls=Command)
@click_options(MASTER_OPTIONS)
def master(**options):
    """Serve a batch of tasks to workers and write one result line per task.

    \b
    Exit codes: 0 every task ok; 1 all ended, some failed; 2 usage, configuration
    or input error (nothing dispatched); 3 --timeout passed or interrupted with
    tasks unfinished (finished results are still written). With --journal, run
    the same command again to resume an unfinished batch.
    The key comes from PROCFLEET_AUTHKEY or PROCFLEET_AUTHKEY_FILE.
    """
    try:
        settings = MasterSettings(authkey=load_authkey(), **options)
        settings.validate()
    except ProcfleetError as exc:
        fail(exc)
    configure_logging(settings.verbose, "master", settings.log_format)
    if settings.restart_on_crash:
        sys.exit(supervise(settings.restart_on_crash))
    if settings.supervisor_pid and not die_with_supervisor(settings.supervisor_pid):
        click.echo("procfleet: error: the --restart-on-crash supervisor is gone; the batch "
                   "was not started", err=True)
        sys.exit(EXIT_UNFINISHED)
    try:
        code = run_service(settings) if settings.serve else run_master(settings)
    except ProcfleetError as exc:
        fail(exc)
    sys.exit(code)
