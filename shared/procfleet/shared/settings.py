"""Configuration both sides need: the option tables' machinery, the shared key, HOST:PORT.

Each command's options are one table of `Option`s (huey's `consumer_options.py`): click's
options and the frozen settings dataclass are both made from it, so a default, an env var or a
help text is written once.
"""

import dataclasses
import inspect
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import click

from .errors import ConfigError
from .logs import LOG_FORMATS, TEXT
from .permissions import is_permission_error, read_hint

ENV_AUTHKEY = "PROCFLEET_AUTHKEY"
ENV_AUTHKEY_FILE = "PROCFLEET_AUTHKEY_FILE"
MIN_AUTHKEY_LENGTH = 16

KEY_HINT = (
    f"set {ENV_AUTHKEY} to a random string of at least {MIN_AUTHKEY_LENGTH} characters, "
    f"or {ENV_AUTHKEY_FILE} to a file holding one (e.g. a Docker secret); "
    "master and workers must use the same key"
)


def load_authkey(environ: Mapping[str, str] | None = None) -> bytes:
    """Return the cluster key from the environment; never a default."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_AUTHKEY) or None
    path = env.get(ENV_AUTHKEY_FILE) or None
    if value is not None and path is not None:
        raise ConfigError(f"both {ENV_AUTHKEY} and {ENV_AUTHKEY_FILE} are set: keep only one")
    if path is not None:
        try:
            # Binary: a CR inside the key stays a CR (text mode would turn it into LF).
            with open(path, "rb") as fh:
                value = fh.read().rstrip(b"\r\n").decode("utf-8")
        except OSError as exc:
            why = f"; {read_hint(path)}" if is_permission_error(exc) else ""
            raise ConfigError(f"cannot read {ENV_AUTHKEY_FILE}={path!r}: {exc.strerror}{why}"
                              ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{ENV_AUTHKEY_FILE}={path!r} is not UTF-8 text") from None
        source = f"{ENV_AUTHKEY_FILE} ({path})"
    else:
        source = ENV_AUTHKEY
    if value is None:
        raise ConfigError(f"no key: {KEY_HINT}")
    if len(value) < MIN_AUTHKEY_LENGTH:
        raise ConfigError(
            f"the key in {source} has {len(value)} characters; it needs at least "
            f"{MIN_AUTHKEY_LENGTH}: {KEY_HINT}"
        )
    # The bytes the environment held: a key that is not UTF-8 still works, the same on each side.
    try:
        return os.fsencode(value) if source == ENV_AUTHKEY else value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"the key in {source} is not valid text: {KEY_HINT}") from None


def parse_address(text: str, option: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT) and check the port; `option` names the source."""
    try:
        return _split_address(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None


def _split_address(text: str) -> tuple[str, int]:
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:50000)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"{text!r} has no address between the brackets (e.g. [::1]:50000)")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} in {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} in {text!r} is outside 0-65535")
    return host, port


def format_address(address: tuple) -> str:
    """HOST:PORT, IPv6 as [::1]:PORT; an IPv6 socket address (4-tuple) gives its host and port."""
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- option tables ---------------------------------------------------------------------------

class Seconds(click.FloatRange):
    """A FloatRange that also refuses nan and infinities (FloatRange lets nan through)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return number


class Address(click.ParamType):
    """HOST:PORT (IPv6 as [::1]:PORT) as a (host, port) tuple."""

    name = "address"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return _split_address(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of one command: everything click and the settings object need to know."""

    field: str                      # the settings attribute and click's parameter name
    flags: tuple[str, ...]          # ("--lease-timeout",), ("-v", "--verbose")
    envvar: str
    help: str
    type: Any = None                # a click type; None: text
    default: Any = None             # as typed on the command line; None: not given
    metavar: str | None = None
    show_default: bool | str = True  # a string describes a default that is not a value
    multiple: bool = False
    count: bool = False
    is_flag: bool = False           # an on/off switch: --serve
    flag_value: Any = None          # the value of the option given alone: --watch [SECONDS]
    hidden: bool = False

    @property
    def flag(self) -> str:
        return self.flags[-1]

    def value_default(self) -> Any:
        """The default as the settings object holds it: what click makes of `default`."""
        if self.multiple:
            return tuple(self.default or ())
        if self.is_flag:
            return bool(self.default)
        if self.default is None or self.count or self.type is None:
            return self.default
        return click.types.convert_type(self.type).convert(self.default, None, None)

    def annotation(self) -> Any:
        if self.is_flag:
            return bool
        kinds = {click.IntRange: int, Seconds: float, Address: tuple[str, int]}
        kind = int if self.count or self.type is int else next(
            (k for t, k in kinds.items() if isinstance(self.type, t)), str)
        if self.multiple:
            return tuple[kind, ...]
        return kind if self.count or self.default is not None else kind | None

    def click_option(self):
        return click.option(
            *self.flags, self.field, type=self.type, default=self.default, envvar=self.envvar,
            show_envvar=True, help=self.help, metavar=self.metavar, count=self.count,
            **({"is_flag": True} if self.is_flag else {}),
            **({"is_flag": False, "flag_value": self.flag_value}
               if self.flag_value is not None else {}),
            multiple=self.multiple, hidden=self.hidden, show_default=self.show_default)


def click_options(table: Sequence[Option]):
    """Decorate a click command with every option of `table`, in the table's order."""
    def decorate(command):
        for option in reversed(table):
            command = option.click_option()(command)
        return command
    return decorate


def settings_class(table: Sequence[Option]):
    """Make the decorated class a frozen, keyword-only dataclass with one field per option of
    `table` (its default derived from the table) besides the fields the class declares."""
    def decorate(cls):
        own = inspect.get_annotations(cls)
        cls.__annotations__ = {option.field: option.annotation() for option in table} | own
        for option in table:
            setattr(cls, option.field, option.value_default())
        return dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    return decorate


#: the master's address: `procfleet worker --master` and `procfleet ping --master`
MASTER_OPTION = Option(
    "master", ("--master",), "PROCFLEET_MASTER", type=Address(), default="127.0.0.1:50000",
    metavar="HOST:PORT", help="The master's address; IPv6 in brackets, [::1]:50000.")

VERBOSE_OPTION = Option(
    "verbose", ("-v", "--verbose"), "PROCFLEET_VERBOSE", count=True, default=0,
    show_default=False, help="Log more (debug).")

LOG_FORMAT_OPTION = Option(
    "log_format", ("--log-format",), "PROCFLEET_LOG_FORMAT", type=click.Choice(LOG_FORMATS),
    default=TEXT, metavar="text|json",
    help="Log lines as text (HH:MM:SS actor: message) or one JSON object each (time, actor, "
         "level, logger, message and fields), for log shippers.")

PING_OPTIONS = (MASTER_OPTION,)


@settings_class(PING_OPTIONS)
class PingSettings:
    """`procfleet ping`'s settings."""


STATUS_OPTIONS = (
    MASTER_OPTION,
    Option("json", ("--json",), "PROCFLEET_STATUS_JSON", is_flag=True, default=False,
           show_default=False, help="Print one JSON object (one a line with --watch)."),
    Option("watch", ("--watch",), "PROCFLEET_STATUS_WATCH", type=Seconds(min=0.1),
           flag_value=2.0, metavar="[SECONDS]", show_default="off; alone: 2",
           help="Print the status again every SECONDS (2 if not given) until Ctrl-C."),
)


@settings_class(STATUS_OPTIONS)
class StatusSettings:
    """`procfleet status`'s settings."""
