"""`procfleet master`: options, settings, and exit codes."""

import sys

import click

from procfleet.shared.cli import Seconds, fail
from procfleet.shared.errors import EXIT_UNFINISHED, ProcfleetError
from procfleet.shared.logs import configure_logging
from procfleet.shared.settings import load_authkey, parse_address

from .batch import run_master
from .settings import (DEFAULT_BIND, DEFAULT_LEASE_TIMEOUT, DEFAULT_MAX_ATTEMPTS,
                       DEFAULT_RETRY_BACKOFF, MasterSettings)
from .supervise import ENV_SUPERVISOR_PID, die_with_supervisor, supervise


@click.command()
@click.option("--tasks", "tasks_path", metavar="PATH", envvar="PROCFLEET_TASKS",
              help="JSON Lines task file, '-' for stdin (env PROCFLEET_TASKS).")
@click.option("--demo", type=click.IntRange(min=0), metavar="N", envvar="PROCFLEET_DEMO",
              help="Run N demo tasks square(i), i = 0..N-1, instead of --tasks "
                   "(env PROCFLEET_DEMO).")
@click.option("--demo-sleep", type=Seconds(min=0), default=0.0, metavar="SECONDS",
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
@click.option("--timeout", type=Seconds(min=0, min_open=True), metavar="SECONDS",
              envvar="PROCFLEET_TIMEOUT",
              help="Give up on the batch after SECONDS: exit 3, finished results still written.")
@click.option("--lease-timeout", type=Seconds(min=0, min_open=True),
              default=DEFAULT_LEASE_TIMEOUT, show_default=True, metavar="SECONDS",
              envvar="PROCFLEET_LEASE_TIMEOUT",
              help="Requeue a worker's tasks when it is silent this long.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=DEFAULT_MAX_ATTEMPTS,
              show_default=True, metavar="N", envvar="PROCFLEET_MAX_ATTEMPTS",
              help="A task whose worker was lost N times ends failed.")
@click.option("--task-timeout", type=Seconds(min=0, min_open=True), metavar="SECONDS",
              envvar="PROCFLEET_TASK_TIMEOUT",
              help="Kill a task running longer than SECONDS and fail it \"timed out\"; a task "
                   "line's own \"timeout\" overrides it [default: no limit].")
@click.option("--retries", type=click.IntRange(min=0, max=100), default=0, show_default=True,
              metavar="N", envvar="PROCFLEET_RETRIES",
              help="Run a task that raised up to N more times, with exponential backoff.")
@click.option("--retry-backoff", type=Seconds(min=0), default=DEFAULT_RETRY_BACKOFF,
              show_default=True, metavar="SECONDS", envvar="PROCFLEET_RETRY_BACKOFF",
              help="First retry's delay; doubled for each further one, with jitter.")
@click.option("--journal", "journal_path", metavar="PATH", envvar="PROCFLEET_JOURNAL",
              help="Keep the batch's progress in an SQLite journal at PATH; started again "
                   "with the same PATH, a master resumes the batch (needs --results PATH).")
@click.option("--restart-on-crash", type=click.IntRange(min=0, max=1000), default=0,
              show_default=True, metavar="N", envvar="PROCFLEET_RESTART_ON_CRASH",
              help="Run the batch in a child process and restart it from the journal up to "
                   "N times if it is killed (SIGKILL, out of memory); needs --journal.")
@click.option("--wait-workers", type=click.IntRange(min=0, max=10_000), default=0,
              show_default=True, metavar="N", envvar="PROCFLEET_WAIT_WORKERS",
              help="Lease nothing until N workers have joined, so they all start together "
                   "(like Locust's --expect-workers).")
@click.option("--supervisor-pid", type=int, hidden=True, envvar=ENV_SUPERVISOR_PID)
@click.option("-v", "--verbose", count=True, help="Log more (debug).")
def master(tasks_path, demo, demo_sleep, results_path, bind, local_workers, timeout,
           lease_timeout, max_attempts, task_timeout, retries, retry_backoff, journal_path,
           restart_on_crash, wait_workers, supervisor_pid, verbose):
    """Serve a batch of tasks to workers and write one result line per task.

    \b
    Exit codes: 0 every task ok; 1 all ended, some failed; 2 usage, configuration
    or input error (nothing dispatched); 3 --timeout passed or interrupted with
    tasks unfinished (finished results are still written). With --journal, run
    the same command again to resume an unfinished batch.
    The key comes from PROCFLEET_AUTHKEY or PROCFLEET_AUTHKEY_FILE.
    """
    if (tasks_path is None) == (demo is None):
        raise click.UsageError("give exactly one of --tasks PATH or --demo N")
    if restart_on_crash and not journal_path:
        raise click.UsageError("--restart-on-crash needs --journal PATH: a restarted batch "
                               "resumes from its journal")
    configure_logging(verbose, "master")
    if restart_on_crash:
        sys.exit(supervise(restart_on_crash))
    if supervisor_pid and not die_with_supervisor(supervisor_pid):
        click.echo("procfleet: error: the --restart-on-crash supervisor is gone; the batch "
                   "was not started", err=True)
        sys.exit(EXIT_UNFINISHED)
    try:
        settings = MasterSettings(
            bind=parse_address(bind, "--bind"), authkey=load_authkey(), tasks_path=tasks_path,
            demo=demo, demo_sleep=demo_sleep, results_path=results_path,
            local_workers=local_workers, timeout=timeout, lease_timeout=lease_timeout,
            max_attempts=max_attempts, task_timeout=task_timeout, retries=retries,
            retry_backoff=retry_backoff, journal_path=journal_path, wait_workers=wait_workers)
        code = run_master(settings)
    except ProcfleetError as exc:
        fail(exc)
    sys.exit(code)
