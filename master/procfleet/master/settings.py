"""The master's options, once: the table click's options and the frozen settings object are made
from, and validate(), the one place for every check that involves two options."""

import os
from dataclasses import field

import click

from procfleet.shared.errors import ConfigError
from procfleet.shared.settings import (MASTER_OPTION, VERBOSE_OPTION, Address, Option,
                                       Seconds, settings_class)

from .supervise import ENV_SUPERVISOR_PID

POSITIVE_SECONDS = Seconds(min=0, min_open=True)


class WebAddress(Address):
    """HOST:PORT, or a bare PORT meaning 127.0.0.1:PORT (loopback unless a host is named)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().isdigit():
            value = f"127.0.0.1:{value.strip()}"
        return super().convert(value, param, ctx)


MASTER_OPTIONS = (
    Option("tasks_path", ("--tasks",), "PROCFLEET_TASKS", metavar="PATH",
           help="JSON Lines task file, '-' for stdin. Exactly one of --tasks, --demo or "
                "--serve."),
    Option("serve", ("--serve",), "PROCFLEET_SERVE", is_flag=True, default=False,
           show_default=False,
           help="Stay up and run the jobs clients submit (procfleet submit, FleetExecutor), "
                "keeping workers connected between them; SIGTERM stops it."),
    Option("demo", ("--demo",), "PROCFLEET_DEMO", type=click.IntRange(min=0), metavar="N",
           help="Run N demo tasks square(i), i = 0..N-1, instead of --tasks."),
    Option("demo_sleep", ("--demo-sleep",), "PROCFLEET_DEMO_SLEEP", type=Seconds(min=0),
           default=0.0, metavar="SECONDS",
           help="Make each demo task sleep(SECONDS, i*i) instead, to watch a slower batch."),
    Option("results_path", ("--results",), "PROCFLEET_RESULTS", default="-", metavar="PATH",
           help="Where result lines go, '-' for stdout."),
    Option("bind", ("--bind",), "PROCFLEET_BIND", type=Address(), default="0.0.0.0:50000",
           metavar="HOST:PORT",
           help="Address to serve workers on (port 0: any free port); IPv6 in brackets."),
    Option("local_workers", ("--local-workers",), "PROCFLEET_LOCAL_WORKERS",
           type=click.IntRange(min=0), default=0, metavar="N",
           help="Also start N worker processes on this machine."),
    Option("timeout", ("--timeout",), "PROCFLEET_TIMEOUT", type=POSITIVE_SECONDS,
           metavar="SECONDS", show_default="no limit",
           help="Give up on the batch after SECONDS: exit 3, finished results still written."),
    Option("lease_timeout", ("--lease-timeout",), "PROCFLEET_LEASE_TIMEOUT",
           type=POSITIVE_SECONDS, default=5.0, metavar="SECONDS",
           help="Requeue a worker's tasks when it is silent this long."),
    Option("max_attempts", ("--max-attempts",), "PROCFLEET_MAX_ATTEMPTS",
           type=click.IntRange(min=1), default=3, metavar="N",
           help="A task whose worker was lost N times ends failed."),
    Option("task_timeout", ("--task-timeout",), "PROCFLEET_TASK_TIMEOUT",
           type=POSITIVE_SECONDS, metavar="SECONDS", show_default="no limit",
           help="Kill a task running longer than SECONDS and fail it \"timed out\"; a task "
                "line's own \"timeout\" overrides it."),
    Option("retries", ("--retries",), "PROCFLEET_RETRIES", type=click.IntRange(min=0, max=100),
           default=0, metavar="N",
           help="Run a task that raised up to N more times, with exponential backoff."),
    Option("retry_backoff", ("--retry-backoff",), "PROCFLEET_RETRY_BACKOFF",
           type=Seconds(min=0), default=1.0, metavar="SECONDS",
           help="First retry's delay; doubled for each further one, with jitter."),
    Option("journal_path", ("--journal",), "PROCFLEET_JOURNAL", metavar="PATH",
           show_default="none",
           help="Keep the batch's progress in an SQLite journal at PATH; started again with "
                "the same PATH, a master resumes the batch (needs --results PATH)."),
    Option("restart_on_crash", ("--restart-on-crash",), "PROCFLEET_RESTART_ON_CRASH",
           type=click.IntRange(min=0, max=1000), default=0, metavar="N",
           help="Run the batch in a child process and restart it from the journal up to N "
                "times if it is killed (SIGKILL, out of memory); needs --journal."),
    Option("wait_workers", ("--wait-workers",), "PROCFLEET_WAIT_WORKERS",
           type=click.IntRange(min=0, max=10_000), default=0, metavar="N",
           help="Lease nothing until N workers have joined, so they all start together "
                "(like Locust's --expect-workers)."),
    Option("metrics", ("--metrics",), "PROCFLEET_METRICS", type=WebAddress(),
           metavar="[HOST:]PORT", show_default="off",
           help="Serve Prometheus metrics (/metrics) and a read-only dashboard (/) over HTTP "
                "here; a bare PORT is 127.0.0.1:PORT. Anyone who reaches it sees the figures "
                "and task errors: keep it on loopback or behind an authenticating proxy."),
    Option("supervisor_pid", ("--supervisor-pid",), ENV_SUPERVISOR_PID, type=int,
           hidden=True, help="Set by --restart-on-crash for its batch process."),
    VERBOSE_OPTION,
)


@settings_class(MASTER_OPTIONS)
class MasterSettings:
    """Everything `procfleet master` was told; fields and defaults come from MASTER_OPTIONS."""

    authkey: bytes = field(repr=False)

    @property
    def heartbeat_interval(self) -> float:
        """Workers call in at least this often: three chances before their lease expires."""
        return self.lease_timeout / 3

    def validate(self) -> None:
        """ConfigError for what involves two options (before any file is opened)."""
        if self.serve:
            self._validate_serve()
            return
        if (self.tasks_path is None) == (self.demo is None):
            raise ConfigError("give exactly one of --tasks PATH, --demo N or --serve: the "
                              "batch's tasks come from a file or the demo, a service's from "
                              "its clients")
        if self.restart_on_crash and not self.journal_path:
            raise ConfigError("--restart-on-crash needs --journal PATH: a restarted batch "
                              "resumes from its journal")
        if self.journal_path:
            if self.tasks_path == "-":
                raise ConfigError("--journal needs a task file or --demo: tasks read from stdin "
                                  "cannot be read again when the batch resumes")
            if self.results_path == "-":
                raise ConfigError("--journal needs --results PATH (a file): a resumed batch "
                                  "rebuilds its results file from the journal")
        files = [(option, path) for option, path in (
            ("--tasks", self.tasks_path), ("--results", self.results_path),
            ("--journal", self.journal_path)) if path and path != "-"]
        for i, (first, a) in enumerate(files):
            for second, b in files[i + 1:]:
                if same_file(a, b):
                    named = a if a == b else f"{a} and {b}"
                    raise ConfigError(f"{first} and {second} name the same file ({named}): "
                                      f"{second} would overwrite it; give {second} another path")


    def _validate_serve(self) -> None:
        given = [flag for flag, value in (
            ("--tasks", self.tasks_path), ("--demo", self.demo),
            ("--results", None if self.results_path == "-" else self.results_path),
            ("--timeout", self.timeout), ("--wait-workers", self.wait_workers or None),
            ("--restart-on-crash", self.restart_on_crash or None)) if value is not None]
        if self.journal_path:
            raise ConfigError("--journal does not go with --serve: a service's jobs are not "
                              "journalled, so a master restart loses its running jobs (their "
                              "clients exit 3 and can submit again); use --journal with a "
                              "batch (--tasks)")
        if given:
            raise ConfigError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not go "
                              "with --serve: a service's tasks, results and limits come from "
                              "each job (procfleet submit FILE --results PATH --timeout S)")


def _job_option(name: str) -> Option:
    """The master's option `name`, as `procfleet submit` takes it for one job."""
    return next(option for option in MASTER_OPTIONS if option.field == name)


SUBMIT_OPTIONS = (
    MASTER_OPTION,
    Option("results_path", ("--results",), "PROCFLEET_RESULTS", default="-", metavar="PATH",
           help="Where the job's result lines go, '-' for stdout."),
    Option("timeout", ("--timeout",), "PROCFLEET_TIMEOUT", type=POSITIVE_SECONDS,
           metavar="SECONDS", show_default="no limit",
           help="Give up on the job after SECONDS: exit 3, finished results still written."),
    _job_option("task_timeout"),
    _job_option("retries"),
    _job_option("retry_backoff"),
    _job_option("max_attempts"),
    Option("connect_timeout", ("--connect-timeout",), "PROCFLEET_CONNECT_TIMEOUT",
           type=POSITIVE_SECONDS, default=30.0, metavar="SECONDS",
           help="Keep trying to reach the master this long before giving up (exit 3)."),
    VERBOSE_OPTION,
)


@settings_class(SUBMIT_OPTIONS)
class SubmitSettings:
    """Everything `procfleet submit` was told."""

    tasks_path: str
    authkey: bytes = field(repr=False)

    def job_options(self) -> dict:
        options = {"label": self.tasks_path if self.tasks_path != "-" else "<stdin>",
                   "retries": self.retries, "retry_backoff": self.retry_backoff,
                   "max_attempts": self.max_attempts}
        if self.task_timeout is not None:
            options["task_timeout"] = self.task_timeout
        return options

    def validate(self) -> None:
        if self.results_path != "-" and self.tasks_path != "-" \
                and same_file(self.tasks_path, self.results_path):
            raise ConfigError(f"--results names the task file ({self.tasks_path}): it would "
                              "overwrite it; give --results another path")


def same_file(a: str, b: str) -> bool:
    """Whether paths `a` and `b` are one file: the same path once symlinks are resolved, or
    the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:         # one of them does not exist (yet): not the same file
        return False
