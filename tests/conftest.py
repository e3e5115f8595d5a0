"""Shared fixtures: a test key in the environment, never a real one."""

import pytest

TEST_KEY = "procfleet-test-key-0123456789"


@pytest.fixture
def authkey_env(monkeypatch):
    monkeypatch.delenv("PROCFLEET_AUTHKEY_FILE", raising=False)
    monkeypatch.setenv("PROCFLEET_AUTHKEY", TEST_KEY)
    return TEST_KEY
