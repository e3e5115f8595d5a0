"""`procfleet master`: options, settings, and exit codes."""

import sys

import click

from procfleet.shared.cli import fail
from procfleet.shared.errors import ProcfleetError
from procfleet.shared.logs import configure_logging
from procfleet.shared.settings import load_authkey, parse_address

from .runner import run_master
from .settings import DEFAULT_BIND, DEFAULT_LEASE_TIMEOUT, DEFAULT_MAX_ATTEMPTS, MasterSettings


@click.command()
@click.option("--tasks", "tasks_path", metavar="PATH", envvar="PROCFLEET_TASKS",
              help="JSON Lines task file, '-' for stdin (env PROCFLEET_TASKS).")
@click.option("--demo", type=click.IntRange(min=0), metavar="N", envvar="PROCFLEET_DEMO",
              help="Run N demo tasks square(i), i = 0..N-1, instead of --tasks (env PROCFLEET_DEMO).")
@click.option("--demo-sleep", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
              envvar="PROCFLEET_DEMO_SLEEP",
              help="Make each demo task sleep(SECONDS, i*i) instead, to watch a slower batch "
                   "(env PROCFLEET_DEMO_SLEEP).")
@click.option("--results", "results_path", default="-", show_default=True, metavar="PATH",
              envvar="PROCFLEET_RESULTS",
              help="Where result lines go, '-' for stdout (env PROCFLEET_RESULTS).")
@click.option("--bind", default=DEFAULT_BIND, show_default=True, metavar="HOST:PORT",
              envvar="PROCFLEET_BIND", help="Address to serve workers on (env PROCFLEET_BIND).")
@click.option("--local-workers", type=click.IntRange(min=0), default=0, metavar="N",
              envvar="PROCFLEET_LOCAL_WORKERS",
              help="Also start N worker processes on this machine (env PROCFLEET_LOCAL_WORKERS).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              envvar="PROCFLEET_TIMEOUT",
              help="Give up on the batch after SECONDS: exit 3, finished results still written.")
@click.option("--lease-timeout", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_LEASE_TIMEOUT, show_default=True, metavar="SECONDS",
              envvar="PROCFLEET_LEASE_TIMEOUT",
              help="Requeue a worker's tasks when it is silent this long.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=DEFAULT_MAX_ATTEMPTS,
              show_default=True, metavar="N", envvar="PROCFLEET_MAX_ATTEMPTS",
              help="A task whose worker was lost N times ends failed.")
@click.option("-v", "--verbose", count=True, help="Log more (debug).")
def master(tasks_path, demo, demo_sleep, results_path, bind, local_workers, timeout,
           lease_timeout, max_attempts, verbose):
    """Serve a batch of tasks to workers and write one result line per task.

    \b
    Exit codes: 0 every task ok; 1 all ended, some failed; 2 usage, configuration
    or input error (nothing dispatched); 3 --timeout passed or interrupted with
    tasks unfinished (finished results are still written).
    The key comes from PROCFLEET_AUTHKEY or PROCFLEET_AUTHKEY_FILE.
    """
    if (tasks_path is None) == (demo is None):
        raise click.UsageError("give exactly one of --tasks PATH or --demo N")
    configure_logging(verbose, "master")
    try:
        settings = MasterSettings(
            bind=parse_address(bind, "--bind"), authkey=load_authkey(), tasks_path=tasks_path,
            demo=demo, demo_sleep=demo_sleep, results_path=results_path,
            local_workers=local_workers, timeout=timeout, lease_timeout=lease_timeout,
            max_attempts=max_attempts)
        code = run_master(settings)
    except ProcfleetError as exc:
        fail(exc)
    sys.exit(code)
