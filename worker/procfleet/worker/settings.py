"""The worker's options, once: the table click's options and the frozen settings object are made
from."""

from dataclasses import field

import click

from procfleet.shared.protocol import MAX_WORKER_ID, check_worker_id
from procfleet.shared.settings import (LOG_FORMAT_OPTION, MASTER_OPTION, VERBOSE_OPTION,
                                       Option, Seconds, settings_class)


class WorkerId(click.ParamType):
    """--id as the master will take it: it refuses any other at hello."""

    name = "name"

    def convert(self, value, param, ctx):
        try:
            check_worker_id(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return value


class ModuleName(click.ParamType):
    """A module to import; PROCFLEET_IMPORTS holds a comma-separated list of them."""

    name = "module"

    def convert(self, value, param, ctx):
        name = value.strip()
        if not name:
            self.fail("a module name is needed, e.g. mytasks", param, ctx)
        return name

    def split_envvar_value(self, rv):
        return [name for name in rv.split(",") if name.strip()]


WORKER_OPTIONS = (
    MASTER_OPTION,
    Option("concurrency", ("--concurrency",), "PROCFLEET_CONCURRENCY",
           type=click.IntRange(min=1, max=1024), default=1, metavar="K",
           help="Run up to K tasks at once, each slot a long-lived child process."),
    Option("imports", ("--import",), "PROCFLEET_IMPORTS", type=ModuleName(), multiple=True,
           metavar="MODULE", show_default=False,
           help="Import MODULE to register its tasks; repeatable (the env var: a "
                "comma-separated list)."),
    Option("connect_timeout", ("--connect-timeout",), "PROCFLEET_CONNECT_TIMEOUT",
           type=Seconds(min=0), default=60.0, metavar="SECONDS",
           help="Keep retrying an unreachable master, or a name that does not resolve "
                "yet, this long; then exit 3."),
    # Keep in step with the images' STOPSIGNAL and compose's stop_grace_period (15 s).
    Option("drain_timeout", ("--drain-timeout",), "PROCFLEET_DRAIN_TIMEOUT",
           type=Seconds(min=0), default=10.0, metavar="SECONDS",
           help="On SIGTERM, finish running tasks for up to SECONDS, then hand back the rest."),
    Option("worker_id", ("--id",), "PROCFLEET_WORKER_ID", type=WorkerId(), metavar="NAME",
           show_default="HOSTNAME-PID",
           help=f"This worker's name in results and logs: printable, at most {MAX_WORKER_ID} "
                "characters."),
    VERBOSE_OPTION,
    LOG_FORMAT_OPTION,
)


@settings_class(WORKER_OPTIONS)
class WorkerSettings:
    """Everything `procfleet worker` was told; fields and defaults come from WORKER_OPTIONS."""

    authkey: bytes = field(repr=False)
