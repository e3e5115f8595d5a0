"""The `procfleet` command: subcommands come from whichever distributions are installed.

The master image installs `procfleet-master`, the worker image `procfleet-worker`; each adds its
subcommand through the `procfleet.commands` entry-point group, so neither image carries the other.
"""

import json
import sys
import time
from importlib.metadata import entry_points
from multiprocessing.managers import RemoteError
from typing import NoReturn

import click
from click.core import ParameterSource

from . import __version__
from .errors import EXIT_USAGE, MasterUnreachable, ProcfleetError
from .manager import CONNECT_ERRORS, connect
from .settings import (PING_OPTIONS, STATUS_OPTIONS, PingSettings, StatusSettings, click_options,
                       format_address, load_authkey)
from .status import render

ENTRY_POINT_GROUP = "procfleet.commands"
#: what --watch prints before each redraw on a terminal: cursor home, clear the screen
CLEAR_SCREEN = "\x1b[H\x1b[2J"
KNOWN_PACKAGES = {"master": "procfleet-master", "submit": "procfleet-master",
                  "worker": "procfleet-worker"}
PREFIX = "procfleet: error: "


def one_line(text: str) -> str:
    """`text` with its control characters (a newline in a value, say) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def fail(exc: ProcfleetError) -> NoReturn:
    """Print a user-facing error (no traceback) and exit with its code."""
    click.echo(PREFIX + one_line(str(exc)), err=True)
    sys.exit(exc.exit_code)


class UsageProblem(click.UsageError):
    """A usage error shown as the README promises: `procfleet: error: <what>: <what to do>`,
    one line on stderr, exit 2 (click's own form is three lines: Usage, Try, Error)."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, ctx: click.Context | None = None) -> None:
        super().__init__(one_line(message), ctx)

    @classmethod
    def from_click(cls, exc: click.UsageError) -> "UsageProblem":
        """Click's message (unknown option, bad or missing value) and where to look next."""
        if isinstance(exc, UsageProblem):
            return exc
        what = exc.format_message().rstrip(".")
        if exc.ctx is None:
            return cls(what)
        param = exc.param if type(exc) is click.BadParameter else None
        if param is not None and param.opts:
            # Said the same way whichever click: the option, and where the value came from.
            value_source = exc.ctx.get_parameter_source(param.name)
            what = f"Invalid value for '{param.opts[-1]}': {exc.message.rstrip('.')}"
            if value_source is ParameterSource.ENVIRONMENT and param.envvar:
                return cls(f"{what} (from {param.envvar}): fix or unset {param.envvar}", exc.ctx)
        names, ctx = [], exc.ctx
        while ctx.parent is not None:      # the root's name may be `python -m procfleet.shared`
            names.append(ctx.info_name)
            ctx = ctx.parent
        path = " ".join(["procfleet", *reversed(names)])
        what, _, guess = what.partition(". Did you mean ")     # click's spelling suggestion
        to_do = f"see '{path} --help' for the options"
        if guess:
            to_do = f"did you mean {guess} {to_do[0].upper()}{to_do[1:]}"
        return cls(f"{what}: {to_do}", exc.ctx)

    def show(self, file=None) -> None:
        click.echo(PREFIX + self.message, err=True, file=file)


def _one_line_usage_errors(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except click.UsageError as exc:
        if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
            raise               # `procfleet` alone: the help, as click shows it
        raise UsageProblem.from_click(exc) from None


class KnowsItsContext:
    """Some of click's parse errors (a missing value) carry no context: give them this one,
    so the one-line message can name the command's --help."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.ctx = exc.ctx or ctx
            raise


class Command(KnowsItsContext, click.Command):
    """A procfleet subcommand (master, worker, ping)."""


class PluginGroup(KnowsItsContext, click.Group):
    """Subcommands from entry points; every usage error (the group's or a subcommand's) as
    one line."""

    def make_context(self, info_name, args, parent=None, **extra):
        return _one_line_usage_errors(super().make_context, info_name, args, parent, **extra)

    def invoke(self, ctx):
        return _one_line_usage_errors(super().invoke, ctx)

    def _entry_points(self) -> dict:
        return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._entry_points()))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        ep = self._entry_points().get(name)
        if ep is not None:
            return ep.load()
        if name in KNOWN_PACKAGES:
            raise UsageProblem(
                f"'procfleet {name}' is not installed here: install {KNOWN_PACKAGES[name]} "
                f"(pip install ./{KNOWN_PACKAGES[name].split('-')[1]}) or use the "
                f"{KNOWN_PACKAGES[name].split('-')[1]} image", ctx)
        return None


@click.group("procfleet", cls=PluginGroup,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="procfleet")
def main():
    """procfleet: a small distributed task runner (master, workers, leases, exactly-once results)."""


@main.command(cls=Command)
@click_options(PING_OPTIONS)
def ping(**options):
    """Check that a master accepts authenticated connections (the images' health check).

    Exit 0 when it answers, 2 for a wrong or missing key, 3 when nobody answers.
    """
    settings = PingSettings(**options)
    try:
        proxy = connect(settings.master, load_authkey())
        info = proxy.ping()
    except ProcfleetError as exc:
        fail(exc)
    jobs = f", {info['jobs']} jobs open" if "jobs" in info else ""     # a service (--serve)
    click.echo(f"master {format_address(settings.master)}: {info['state']}, "
               f"{info['done']}/{info['total']} tasks done, {info['workers']} workers{jobs}")


@main.command(cls=Command)
@click_options(STATUS_OPTIONS)
def status(**options):
    """Show a master's batch (or a service's jobs) and its workers: address, Python,
    concurrency, state, tasks held, ok, failed, last seen, rate.

    Exit 0 when it answers, 2 for a wrong or missing key, 3 when nobody answers.
    """
    settings = StatusSettings(**options)
    address = format_address(settings.master)
    redraw = settings.watch is not None and not settings.json and sys.stdout.isatty()
    try:
        proxy = connect(settings.master, load_authkey())
        while True:
            reply = _status_of(proxy, address)
            if settings.json:
                click.echo(json.dumps(reply))
            else:
                click.echo((CLEAR_SCREEN if redraw else "") + render(address, reply)
                           + ("" if redraw or settings.watch is None else "\n"))
            if settings.watch is None:
                return
            time.sleep(settings.watch)
    except ProcfleetError as exc:
        fail(exc)
    except KeyboardInterrupt:
        pass


def _status_of(proxy, address: str) -> dict:
    """The master's status reply; MasterUnreachable once it is gone or refuses the call."""
    try:
        return proxy.status()
    except RemoteError as exc:      # '#TRACEBACK': a master of a release without status
        raise MasterUnreachable(f"master {address} refused status ({one_line(str(exc)).strip()}"
                                f"); an older release? procfleet ping works with any") from None
    except CONNECT_ERRORS as exc:
        reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) \
            or str(exc) or type(exc).__name__
        raise MasterUnreachable(f"master {address} stopped answering: {reason}") from None


if __name__ == "__main__":  # python -m procfleet.shared.cli; children: -m procfleet.shared
    main()
