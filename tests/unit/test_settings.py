"""Key loading and address parsing."""

import pytest

from procfleet.shared.errors import ConfigError
from procfleet.shared.settings import load_authkey, parse_address


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
