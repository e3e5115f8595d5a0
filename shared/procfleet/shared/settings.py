"""Configuration helpers both sides need: the shared key and HOST:PORT addresses."""

import os
import socket
from collections.abc import Mapping

from .errors import ConfigError
from .transport import resolve

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
            raise ConfigError(f"cannot read {ENV_AUTHKEY_FILE}={path!r}: {exc.strerror}") from None
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
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{option}: {text!r} is not HOST:PORT (e.g. 127.0.0.1:50000)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ConfigError(f"{option}: {text!r} has no address between the brackets "
                              "(e.g. [::1]:50000)")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{option}: port {port_text!r} in {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{option}: port {port} in {text!r} is outside 0-65535")
    return host, port


def resolve_host(host: str, option: str, timeout: float = 10.0) -> None:
    """Fail with a clear message when DNS says `host` does not exist.

    Only a definite "no such name" is a configuration error; a temporary DNS failure or a
    slow answer is left to the connect retries.
    """
    try:
        resolve(host, 0, timeout)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise ConfigError(
                f"{option}: cannot resolve host {host!r} ({exc.strerror}); check the name "
                "(with Docker, the master's container must exist on the same network)"
            ) from None
    except OSError:
        pass


def format_address(address: tuple) -> str:
    """HOST:PORT, IPv6 as [::1]:PORT; an IPv6 socket address (4-tuple) gives its host and port."""
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
