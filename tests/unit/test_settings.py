"""Key loading, address parsing, and the settings objects made from the option tables."""

import dataclasses
import os
import re

import pytest

from procfleet.master.settings import MASTER_OPTIONS, MasterSettings
from procfleet.shared.errors import ConfigError
from procfleet.shared.settings import load_authkey, parse_address
from procfleet.worker.settings import WORKER_OPTIONS, WorkerSettings


def test_key_from_env():
    assert load_authkey({"PROCFLEET_AUTHKEY": "k" * 16}) == b"k" * 16


def test_key_from_file_ignores_trailing_newline(tmp_path):
    path = tmp_path / "key"
    path.write_text("s3cret-s3cret-s3cret\n")
    assert load_authkey({"PROCFLEET_AUTHKEY_FILE": str(path)}) == b"s3cret-s3cret-s3cret"


@pytest.mark.parametrize("env", [{}, {"PROCFLEET_AUTHKEY": ""}])
def test_missing_key_names_both_variables(env):
    with pytest.raises(ConfigError) as err:
        load_authkey(env)
    assert "PROCFLEET_AUTHKEY" in str(err.value) and "PROCFLEET_AUTHKEY_FILE" in str(err.value)


def test_short_key_is_refused_and_says_how_long():
    with pytest.raises(ConfigError, match="15 characters.*at least 16"):
        load_authkey({"PROCFLEET_AUTHKEY": "x" * 15})


def test_short_key_in_file_is_refused(tmp_path):
    path = tmp_path / "key"
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="PROCFLEET_AUTHKEY_FILE"):
        load_authkey({"PROCFLEET_AUTHKEY_FILE": str(path)})


def test_unreadable_key_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read PROCFLEET_AUTHKEY_FILE"):
        load_authkey({"PROCFLEET_AUTHKEY_FILE": str(tmp_path / "missing")})


def test_both_key_sources_is_an_error(tmp_path):
    path = tmp_path / "key"
    path.write_text("y" * 20)
    with pytest.raises(ConfigError, match="both"):
        load_authkey({"PROCFLEET_AUTHKEY": "x" * 20, "PROCFLEET_AUTHKEY_FILE": str(path)})


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:50000", ("127.0.0.1", 50000)),
    ("master:1", ("master", 1)),
    (" 0.0.0.0:0 ", ("0.0.0.0", 0)),
])
def test_parse_address(text, expected):
    assert parse_address(text, "--bind") == expected


@pytest.mark.parametrize("text,message", [
    ("localhost", "not HOST:PORT"),
    (":50000", "not HOST:PORT"),
    ("host:http", "not a number"),
    ("host:70000", "outside 0-65535"),
])
def test_parse_address_errors_name_the_option(text, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_address(text, "--master")
    assert str(err.value).startswith("--master")


# --- the settings objects: made from the option tables; validate() -------------------------

KEY = b"k" * 16


@pytest.mark.parametrize("cls,table", [(MasterSettings, MASTER_OPTIONS),
                                       (WorkerSettings, WORKER_OPTIONS)])
def test_settings_fields_are_the_table_and_the_key(cls, table):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) == {o.field for o in table} | {"authkey"}
    for option in table:
        assert fields[option.field].default == option.value_default()
    assert fields["authkey"].default is dataclasses.MISSING      # never a default key
    assert "authkey" not in repr(cls(authkey=KEY, worker_id="w")
                                 if cls is WorkerSettings else cls(authkey=KEY))


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MasterSettings(authkey=KEY, demo=1).demo = 2


def master(**options):
    return MasterSettings(authkey=KEY, **options)


@pytest.mark.parametrize("options,message", [
    ({}, "exactly one of --tasks PATH, --demo N or --serve"),
    ({"demo": 1, "tasks_path": "t.jsonl"}, "exactly one of --tasks PATH, --demo N or --serve"),
    ({"demo": 1, "restart_on_crash": 2}, "--restart-on-crash needs --journal PATH"),
    ({"tasks_path": "-", "journal_path": "j.db", "results_path": "r.jsonl"},
     "--journal needs a task file or --demo"),
    ({"demo": 1, "journal_path": "j.db"}, "--journal needs --results PATH"),
    ({"tasks_path": "same.jsonl", "results_path": "same.jsonl"},
     "--tasks and --results name the same file"),
    ({"demo": 1, "results_path": "r.jsonl", "journal_path": "r.jsonl"},
     "--results and --journal name the same file"),
    ({"demo": 1, "results_path": "r.jsonl", "summary_json": "r.jsonl"},
     "--results and --summary-json name the same file"),
    ({"serve": True, "summary_json": "s.json"}, "--summary-json does not go with --serve"),
])
def test_validate_refuses_options_that_do_not_go_together(tmp_path, monkeypatch, options,
                                                          message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        master(**options).validate()


@pytest.mark.parametrize("options", [
    {"demo": 1}, {"tasks_path": "-"}, {"demo": 0, "restart_on_crash": 1,
                                        "journal_path": "j.db", "results_path": "r.jsonl"},
    {"tasks_path": "t.jsonl", "results_path": "r.jsonl", "journal_path": "j.db"},
    {"demo": 1, "summary_json": "summary.json"},
])
def test_validate_accepts_options_that_go_together(tmp_path, monkeypatch, options):
    monkeypatch.chdir(tmp_path)
    master(**options).validate()


def test_a_hard_link_is_the_same_file(tmp_path):
    (tmp_path / "r.jsonl").write_text("")
    os.link(tmp_path / "r.jsonl", tmp_path / "t.jsonl")
    with pytest.raises(ConfigError, match="name the same file"):
        master(tasks_path=str(tmp_path / "t.jsonl"),
               results_path=str(tmp_path / "r.jsonl")).validate()
