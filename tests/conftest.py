"""Shared fixtures: a test key in the environment, never a real one; the chaos table."""

import pytest

import chaos
from fakes import TEST_KEY


@pytest.fixture
def authkey_env(monkeypatch):
    monkeypatch.delenv("PROCFLEET_AUTHKEY_FILE", raising=False)
    monkeypatch.setenv("PROCFLEET_AUTHKEY", TEST_KEY)
    return TEST_KEY


def pytest_terminal_summary(terminalreporter):
    """Fault tests add rows to the chaos report: print it last, and keep it in build/."""
    if chaos.ROWS:
        terminalreporter.section("chaos: faults injected, and what the results files held")
        terminalreporter.write_line(chaos.table())
        path = chaos.write_report()
        terminalreporter.write_line(f"(also in {path})")
