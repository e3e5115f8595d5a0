"""The `procfleet` command: subcommands come from whichever distributions are installed.

The master image installs `procfleet-master`, the worker image `procfleet-worker`; each adds its
subcommand through the `procfleet.commands` entry-point group, so neither image carries the other.
"""

import sys
from importlib.metadata import entry_points
from typing import NoReturn

import click

from . import __version__
from .errors import ProcfleetError
from .manager import connect
from .settings import PING_OPTIONS, PingSettings, click_options, format_address, load_authkey

ENTRY_POINT_GROUP = "procfleet.commands"
KNOWN_PACKAGES = {"master": "procfleet-master", "worker": "procfleet-worker"}


def fail(exc: ProcfleetError) -> NoReturn:
    """Print a user-facing error (no traceback) and exit with its code."""
    click.echo(f"procfleet: error: {exc}", err=True)
    sys.exit(exc.exit_code)


class PluginGroup(click.Group):
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
            ctx.fail(
                f"'procfleet {name}' is not installed here: install {KNOWN_PACKAGES[name]} "
                f"(pip install ./{name}) or use the {name} image"
            )
        return None


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="procfleet")
def main():
    """procfleet: a small distributed task runner (master, workers, leases, exactly-once results)."""


@main.command()
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
    click.echo(f"master {format_address(settings.master)}: {info['state']}, "
               f"{info['done']}/{info['total']} tasks done, {info['workers']} workers")


if __name__ == "__main__":  # python -m procfleet.shared.cli; children: -m procfleet.shared
    main()
