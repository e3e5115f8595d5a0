"""The option tables are the one source: --help, the settings objects, the README's tables and
docker-compose.yml all say what the tables say."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from procfleet.master import cli as master_cli
from procfleet.master.settings import MASTER_OPTIONS, SUBMIT_OPTIONS, MasterSettings
from procfleet.shared.cli import main
from procfleet.shared.settings import PING_OPTIONS, STATUS_OPTIONS
from procfleet.worker import cli as worker_cli
from procfleet.worker.settings import WORKER_OPTIONS, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"master": MASTER_OPTIONS, "worker": WORKER_OPTIONS, "ping": PING_OPTIONS,
          "submit": SUBMIT_OPTIONS, "status": STATUS_OPTIONS}


def invoke(args, env=None):
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


@pytest.mark.parametrize("command", sorted(TABLES))
def test_help_names_the_env_var_of_every_option(command):
    text = " ".join(invoke([command, "--help"]).output.split())    # undo click's wrapping
    shown = [o for o in TABLES[command] if not o.hidden]
    assert shown
    for option in shown:
        assert f"{option.flag}" in text
        assert option.envvar in text, f"{command} --help does not name {option.envvar}"
    assert "(env PROCFLEET" not in text     # said once, by click, not again by hand


class Captured(Exception):
    """Raised by a stand-in for the batch or the worker, holding the settings it was given."""


def capture(settings, *_):
    raise Captured(settings)


def settings_from_cli(monkeypatch, command, args, env=None):
    monkeypatch.setattr(master_cli, "run_master", capture)
    monkeypatch.setattr(worker_cli, "Worker", capture)
    with pytest.raises(Captured) as captured:
        invoke([command, *args], env=env)
    return captured.value.args[0]


def test_master_settings_defaults_are_the_options_defaults(authkey_env, monkeypatch):
    got = settings_from_cli(monkeypatch, "master", ["--demo", "1"])
    assert got == MasterSettings(authkey=authkey_env.encode(), demo=1)
    assert (got.bind, got.lease_timeout, got.max_attempts, got.retry_backoff) == (
        ("0.0.0.0", 50000), 5.0, 3, 1.0)


def test_worker_settings_defaults_are_the_options_defaults(authkey_env, monkeypatch):
    got = settings_from_cli(monkeypatch, "worker", ["--id", "w1"])
    assert got == WorkerSettings(authkey=authkey_env.encode(), worker_id="w1")
    assert (got.master, got.concurrency, got.connect_timeout, got.drain_timeout) == (
        ("127.0.0.1", 50000), 1, 60.0, 10.0)


def test_every_option_reaches_the_settings_from_its_env_var(authkey_env, monkeypatch):
    env = {"PROCFLEET_DEMO": "7", "PROCFLEET_LEASE_TIMEOUT": "2.5", "PROCFLEET_BIND": "[::1]:9",
           "PROCFLEET_RETRIES": "4", "PROCFLEET_VERBOSE": "1", "PROCFLEET_TIMEOUT": ""}
    got = settings_from_cli(monkeypatch, "master", [], env)
    assert (got.demo, got.lease_timeout, got.bind, got.retries, got.verbose, got.timeout) == (
        7, 2.5, ("::1", 9), 4, 1, None)
    env = {"PROCFLEET_IMPORTS": " json, ,os.path", "PROCFLEET_CONCURRENCY": "3",
           "PROCFLEET_WORKER_ID": "w9", "PROCFLEET_DRAIN_TIMEOUT": ""}
    got = settings_from_cli(monkeypatch, "worker", [], env)
    assert (got.imports, got.concurrency, got.worker_id, got.drain_timeout) == (
        ("json", "os.path"), 3, "w9", 10.0)


def test_the_command_line_wins_over_the_environment(authkey_env, monkeypatch):
    got = settings_from_cli(monkeypatch, "master", ["--demo", "2"], {"PROCFLEET_DEMO": "7"})
    assert got.demo == 2


# --- the README's option tables and docker-compose.yml ---------------------------------------

def readme_rows(command: str) -> dict[str, tuple[str, str]]:
    """{flag: (env, default)} from the README table under `### `procfleet <command>``."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"### `procfleet {command}`", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`-"):
            flag = cells[0].split(",")[-1].strip(" `").split()[0]
            rows[flag] = (cells[1].strip("`"), cells[2].strip("`"))
    return rows


def shown_default(option) -> str:
    if isinstance(option.show_default, str):
        return option.show_default
    if option.default is None or option.show_default is False:
        return ""
    if isinstance(option.default, float) and option.default.is_integer():
        return str(int(option.default))
    return str(option.default)


@pytest.mark.parametrize("command", ["master", "worker", "submit", "status"])
def test_readme_option_table_matches_the_options(command):
    rows = readme_rows(command)
    expected = {o.flag: (o.envvar, shown_default(o)) for o in TABLES[command] if not o.hidden}
    assert rows == expected


def compose_environment(service: str) -> dict[str, str]:
    """The PROCFLEET_* entries of one service's `environment:` in docker-compose.yml."""
    text = (ROOT / "docker-compose.yml").read_text()
    block = text.split(f"\n  {service}:\n", 1)[1].split("\n  volumes:", 1)[0]
    block = re.split(r"\n  \w+:\n", block, maxsplit=1)[0]       # up to the next service
    return dict(re.findall(r"^\s+(PROCFLEET_\w+): (.*)$", block, re.M))


@pytest.mark.parametrize("service", ["master", "worker"])
def test_compose_sets_only_options_and_restates_no_default(service):
    options = {o.envvar: o for o in TABLES[service]}
    environment = compose_environment(service)
    assert environment
    for name, value in environment.items():
        if name == "PROCFLEET_AUTHKEY":
            continue
        assert name in options, f"{service}: {name} is no option of procfleet {service}"
        passed = re.fullmatch(r"\$\{(\w+):-(.*)\}", value)
        if passed:
            assert passed.group(1) == name
            value = passed.group(2)
        default = shown_default(options[name])
        assert value == "" or not same_value(value, default), \
            f"{service}: {name} restates the default {value!r}"


def same_value(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b
