"""The command line: usage and configuration errors are exit 2 with a message, no traceback."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from procfleet.shared import cli
from procfleet.shared.cli import main


def run(args, env=None):
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("PROCFLEET_AUTHKEY", raising=False)
    monkeypatch.delenv("PROCFLEET_AUTHKEY_FILE", raising=False)


def command_names(help_text: str) -> set[str]:
    """The names in the "Commands:" section of a group's --help."""
    section = help_text.split("Commands:", 1)[1] if "Commands:" in help_text else ""
    return {line.split()[0] for line in section.splitlines() if line.strip()}


def test_help_lists_and_dispatches_the_installed_subcommands():
    """The subcommands come from the procfleet.commands entry points: listed and reachable."""
    assert command_names(run(["--help"]).output) == {"master", "ping", "status", "submit",
                                                   "worker"}
    for name, first_line in [("master", "Serve a batch of tasks to workers"),
                             ("worker", "Lease tasks from a master"),
                             ("submit", "Submit a JSON Lines task file")]:
        result = run([name, "--help"])
        assert result.exit_code == 0, result.output
        assert first_line in result.output


def test_a_subcommand_that_is_not_installed_says_which_package(monkeypatch):
    monkeypatch.setattr(cli, "entry_points", lambda **_: [])
    result = run(["worker"])
    assert result.exit_code == 2
    assert result.stderr == ("procfleet: error: 'procfleet worker' is not installed here: "
                             "install procfleet-worker (pip install ./worker) or use the "
                             "worker image\n")


@pytest.mark.parametrize("args", [["master"], ["master", "--demo", "3", "--tasks", "x.jsonl"]])
def test_master_needs_exactly_one_source(authkey_env, args):
    result = run(args)
    assert result.exit_code == 2
    assert "exactly one of --tasks PATH, --demo N or --serve" in result.output


def test_master_without_key_names_both_variables(no_key):
    result = run(["master", "--demo", "1"])
    assert result.exit_code == 2
    assert "PROCFLEET_AUTHKEY" in result.output and "PROCFLEET_AUTHKEY_FILE" in result.output


def test_master_with_short_key(monkeypatch):
    monkeypatch.setenv("PROCFLEET_AUTHKEY", "short")
    result = run(["master", "--demo", "1"])
    assert result.exit_code == 2 and "at least 16" in result.output


def test_master_bad_task_file_dispatches_nothing(authkey_env, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"task": "square", "args": [1]}\n{"task": \n')
    result = run(["master", "--tasks", str(path), "--bind", "127.0.0.1:0"])
    assert result.exit_code == 2
    assert f"{path}:2: invalid JSON" in result.output
    assert "serving" not in result.output


def test_master_missing_task_file(authkey_env, tmp_path):
    result = run(["master", "--tasks", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 2 and "cannot read tasks file" in result.output


def test_master_bad_bind(authkey_env):
    result = run(["master", "--demo", "1", "--bind", "nohost"])
    assert result.exit_code == 2 and "--bind" in result.output


def test_master_bad_option_value_names_the_option(authkey_env):
    result = run(["master", "--demo", "-1"])
    assert result.exit_code == 2 and "--demo" in result.output


def test_master_results_path_unwritable(authkey_env, tmp_path):
    result = run(["master", "--demo", "1", "--results", str(tmp_path / "no" / "dir.jsonl")])
    assert result.exit_code == 2 and "--results" in result.output


def test_worker_without_key(no_key):
    result = run(["worker"])
    assert result.exit_code == 2 and "PROCFLEET_AUTHKEY_FILE" in result.output


def test_worker_unresolvable_master_is_retried_then_exit_3_naming_it(authkey_env):
    # Not a configuration error at start: orchestrators create names late (tests/e2e/
    # test_late_master_name.py has the retries for real); with no time to retry, exit 3 at once.
    result = run(["worker", "--master", "no-such-host.invalid:50000", "--connect-timeout", "0"])
    assert result.exit_code == 3, result.output
    assert "its name 'no-such-host.invalid' does not resolve" in result.output


def test_worker_bad_import_names_the_module(authkey_env):
    result = run(["worker", "--import", "procfleet_no_such_module"])
    assert result.exit_code == 2
    assert "--import procfleet_no_such_module" in result.output


def test_worker_import_with_syntax_error_shows_file_and_line(authkey_env, tmp_path, monkeypatch):
    (tmp_path / "broken_tasks.py").write_text("def f(:\n")
    monkeypatch.chdir(tmp_path)
    result = run(["worker"], env={"PROCFLEET_IMPORTS": "broken_tasks"})
    assert result.exit_code == 2
    assert "SyntaxError" in result.output and "broken_tasks.py, line 1" in result.output


def test_worker_bad_concurrency(authkey_env):
    result = run(["worker", "--concurrency", "0"])
    assert result.exit_code == 2 and "--concurrency" in result.output


def test_ping_without_master_is_exit_3(authkey_env):
    result = run(["ping", "--master", "127.0.0.1:1"])
    assert result.exit_code == 3 and "not reachable" in result.output


@pytest.mark.parametrize("args", [[], ["--json"], ["--watch"], ["--watch", "0.5", "--json"]])
def test_status_without_master_is_exit_3(authkey_env, args):
    result = run(["status", "--master", "127.0.0.1:1", *args])
    assert result.exit_code == 3 and "not reachable" in result.output


def test_status_without_key_is_exit_2(no_key):
    result = run(["status", "--master", "127.0.0.1:1"])
    assert result.exit_code == 2 and "PROCFLEET_AUTHKEY" in result.output


def test_status_watch_takes_an_optional_number_of_seconds(authkey_env):
    result = run(["status", "--watch", "0"])
    assert result.exit_code == 2 and "--watch" in result.output


def test_status_renders_a_batch_and_a_service_as_tables():
    from procfleet.shared.status import render
    worker = {"id": "w-1", "address": "10.0.0.2:41000", "python": "3.12.8", "concurrency": 4,
              "state": "working", "held": 8, "ok": 120, "failed": 2, "last_seen_s": 0.3,
              "rate": 40.25}
    batch = {"state": "run", "batch": "abc", "mode": "batch", "total": 1000, "finished": 122,
             "ok": 120, "failed": 2, "running": 5, "queued_on_workers": 3, "pending": 870,
             "alive_workers": 1, "elapsed_s": 3.0, "workers": [worker]}
    text = render("m:50000", batch)
    assert "122/1000 done (120 ok, 2 failed), 5 running, 3 queued on workers" in text
    header, row = text.splitlines()[2:4]
    assert header.split() == ["worker", "address", "python", "conc", "state", "held", "ok",
                              "failed", "seen", "rate/s"]
    assert row.split() == ["w-1", "10.0.0.2:41000", "3.12.8", "4", "working", "8", "120", "2",
                           "0.3s", "ago", "40.2"]
    service = {"state": "run", "mode": "service", "jobs": [
        {"job": "0123456789abcdef", "label": "a.jsonl", "submitted": 5, "finished": 1, "ok": 1,
         "failed": 0, "leased": 2, "closed": True}], "jobs_done": 3, "jobs_abandoned": 0,
        "ok": 41, "failed": 0, "running": 1, "queued_on_workers": 1, "pending": 2,
        "alive_workers": 0, "workers": []}
    text = render("m:50000", service)
    assert "1 jobs open, 3 done" in text and "0123456789ab  a.jsonl" in text
    assert text.endswith("no workers yet")


@pytest.mark.parametrize("worker_id", ["line\nbreak", "x" * 129, "", "tab\there"])
def test_worker_id_the_master_would_refuse_is_a_usage_error(authkey_env, worker_id):
    result = run(["worker", "--id", worker_id, "--master", "127.0.0.1:1",
                  "--connect-timeout", "0.1"])
    assert result.exit_code == 2, result.output
    assert "--id" in result.output and "printable text" in result.output


# --- usage errors: one line, `procfleet: error: <what>: <what to do>`, exit 2 ----------------

@pytest.mark.parametrize("args,env,what,to_do", [
    (["master", "--demo", "1", "--bogus"], {}, "No such option '--bogus'",
     "'procfleet master --help' for the options"),
    (["master", "--demo", "-1"], {}, "Invalid value for '--demo'",
     "see 'procfleet master --help'"),
    (["master", "--demo"], {}, "Option '--demo' requires an argument",
     "see 'procfleet master --help'"),
    (["master", "--demo", "1"], {"PROCFLEET_LEASE_TIMEOUT": "soon"},
     "Invalid value for '--lease-timeout'",
     "(from PROCFLEET_LEASE_TIMEOUT): fix or unset PROCFLEET_LEASE_TIMEOUT"),
    (["master", "--demo", "1", "--bind", "nohost"], {}, "Invalid value for '--bind'",
     "is not HOST:PORT (e.g. 127.0.0.1:50000)"),
    (["master", "--demo", "1", "--restart-on-crash", "2"], {},
     "--restart-on-crash needs --journal PATH", "resumes from its journal"),
    (["master"], {}, "give exactly one of --tasks PATH, --demo N or --serve", "a service's from its clients"),
    (["worker", "--concurrency", "0"], {}, "Invalid value for '--concurrency'",
     "see 'procfleet worker --help'"),
    (["worker", "--id", "a\nb"], {}, "Invalid value for '--id'", "printable text"),
    (["ping", "--master", "host:http"], {}, "Invalid value for '--master'", "not a number"),
    (["mastr"], {}, "No such command 'mastr'", "see 'procfleet --help'"),
])
def test_a_usage_error_is_one_line_on_stderr_and_exit_2(authkey_env, args, env, what, to_do):
    result = run(args, env=env)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert result.stderr.startswith(f"procfleet: error: {what}"), result.stderr
    assert to_do in result.stderr


def test_a_usage_error_from_the_installed_command_is_one_line(authkey_env, tmp_path):
    """The real `procfleet` executable, as a user runs it (not CliRunner's stand-in)."""
    exe = os.path.join(os.path.dirname(sys.executable), "procfleet")
    proc = subprocess.run([exe, "master", "--demo", "1", "--lease-timeout", "nan"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("procfleet: error: Invalid value for '--lease-timeout'")
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.rstrip().endswith("see 'procfleet master --help' for the options")


def test_procfleet_alone_still_shows_its_help():
    result = run([])
    assert "Commands:" in result.output and "procfleet: error" not in result.output
