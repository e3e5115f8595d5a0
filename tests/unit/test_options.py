"""The option tables are the one source: --help and the settings objects say what they say."""

import pytest
from click.testing import CliRunner

from procfleet.master import cli as master_cli
from procfleet.master.settings import MASTER_OPTIONS, MasterSettings
from procfleet.shared.cli import main
from procfleet.shared.settings import PING_OPTIONS
from procfleet.worker import cli as worker_cli
from procfleet.worker.settings import WORKER_OPTIONS, WorkerSettings

TABLES = {"master": MASTER_OPTIONS, "worker": WORKER_OPTIONS, "ping": PING_OPTIONS}


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
    monkeypatch.setattr(worker_cli, "resolve_host", lambda *_: None)
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
