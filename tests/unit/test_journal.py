"""The SQLite journal: a batch is recognised, resumed with its counts, and refused if different."""

import os
import sqlite3

import pytest

from procfleet.master.leases import Dispatcher
from procfleet.master.journal import Journal, JournalledDispatcher, restore
from procfleet.shared.errors import ConfigError, ProcfleetError
from procfleet.shared.protocol import ERROR, OK, Outcome
from fakes import FakeClock, tasks


def run_some(journal: Journal, n: int, finish: int):
    """A dispatcher over n tasks that leases 4 and finishes `finish` of them, journalled."""
    d = Dispatcher(tasks(n), n, lease_timeout=5, max_attempts=3, clock=FakeClock())
    d.leased_log = []
    leased = d.lease("a", 4)
    d.complete("a", [Outcome(t.seq, OK, t.args[0] ** 2, None) for t in leased[:finish]])
    journal.record(d.take_leased(),
                   d.take_results())
    return leased


def test_new_journal_starts_a_batch_and_the_same_source_resumes_it(tmp_path):
    path = str(tmp_path / "j.db")
    journal = Journal(path)
    batch, resumed = journal.open_batch("--demo 10", "demo:10:0.0", 10)
    assert not resumed
    leased = run_some(journal, 10, finish=2)
    journal.close()

    again = Journal(path)
    assert again.open_batch("--demo 10", "demo:10:0.0", 10) == (batch, True)
    assert sorted(again.done()) == [leased[0].seq, leased[1].seq]
    in_flight = restore(tasks(10), again.in_flight())
    assert [st.task for st in in_flight] == leased[2:]
    assert all(st.attempts == 1 for st in in_flight)
    lines = list(again.results())
    assert len(lines) == 2 and '"status":"ok"' in lines[0]
    assert again.count_ok() == 2


def test_resumed_dispatcher_never_reruns_finished_tasks(tmp_path):
    journal = Journal(str(tmp_path / "j.db"))
    journal.open_batch("s", "f", 10)
    run_some(journal, 10, finish=3)
    d = Dispatcher(tasks(10), 10, lease_timeout=5, max_attempts=3, done=journal.done(),
                   restored=restore(tasks(10), journal.in_flight()), clock=FakeClock())
    leased = d.lease("b", 100)
    assert len(leased) == 7 and {t.seq for t in leased}.isdisjoint({0, 1, 2})
    assert [t.seq for t in leased[:1]] == [3]          # in flight before: first again


def test_one_transaction_per_call_and_duplicates_are_ignored(tmp_path):
    journal = Journal(str(tmp_path / "j.db"))
    journal.open_batch("s", "f", 3)
    journal.record([], [(0, '{"id":"0","status":"ok"}', True)])
    journal.record([], [(0, '{"id":"0","status":"failed"}', False)])
    assert list(journal.results()) == ['{"id":"0","status":"ok"}']


def test_a_journal_of_another_batch_is_refused_with_what_to_do(tmp_path):
    path = str(tmp_path / "j.db")
    Journal(path).open_batch("tasks.jsonl", "file:abc", 5)
    with pytest.raises(ConfigError, match=r"belongs to another batch \(tasks.jsonl, 5 tasks\), "
                                          r"not --demo 7 \(7 tasks\).*new journal path"):
        Journal(path).open_batch("--demo 7", "demo:7:0.0", 7)


def test_a_file_that_is_not_sqlite_is_a_config_error(tmp_path):
    path = tmp_path / "j.db"
    path.write_text("not a database, just text " * 100)
    with pytest.raises(ConfigError, match="--journal .*cannot use it as an SQLite journal"):
        Journal(str(path))


def test_journal_uses_wal(tmp_path):
    journal = Journal(str(tmp_path / "j.db"))
    assert journal.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_second_master_on_the_same_journal_is_refused_until_the_first_closes(tmp_path):
    path = str(tmp_path / "j.db")
    first = Journal(path)
    with pytest.raises(ConfigError, match=r"--journal .*j.db: another master holds it"):
        Journal(path)
    hard_link = tmp_path / "link.db"
    os.link(path, hard_link)
    with pytest.raises(ConfigError, match="another master holds it"):
        Journal(str(hard_link))
    first.close()
    Journal(path).close()


def test_a_full_journal_is_an_exit_3_error_and_the_transaction_is_rolled_back(tmp_path):
    journal = Journal(str(tmp_path / "j.db"))
    journal.open_batch("s", "f", 1000)
    journal.record([(0, 1, 0, 0)], [(1, '{"id":1}', True)])
    (pages,) = journal.db.execute("PRAGMA page_count").fetchone()
    journal.db.execute(f"PRAGMA max_page_count = {pages}")        # the disk is full
    big = [(seq, '{"id":%d,"result":"%s"}' % (seq, "x" * 500), True) for seq in range(2, 500)]
    with pytest.raises(ProcfleetError) as err:
        journal.record([(0, 2, 0, 0)], big)
    assert err.value.exit_code == 3
    assert "database or disk is full" in str(err.value) and "\n" not in str(err.value)
    assert "run the same command again" in str(err.value)
    assert not journal.db.in_transaction
    assert list(journal.results()) == ['{"id":1}'] and journal.in_flight() == {0: [1, 0, 0]}
    journal.db.execute("PRAGMA max_page_count = 1000000")         # room again
    journal.record([(0, 2, 0, 0)], big)
    assert len(list(journal.results())) == 1 + len(big)


def journalled(journal: Journal, n: int) -> JournalledDispatcher:
    d = JournalledDispatcher(tasks(n), n, lease_timeout=5, max_attempts=3, clock=FakeClock())
    d.journal, d.leased_log = journal, []
    return d


def test_a_lease_is_journalled_before_the_worker_gets_it(tmp_path):
    journal = Journal(str(tmp_path / "j.db"))
    journal.open_batch("s", "f", 10)
    d = journalled(journal, 10)
    leased = d.lease("a", 3)
    assert journal.in_flight() == {t.seq: [1, 0, 0] for t in leased}   # no tick needed
    # A master killed now and started again counts the next lease as the second.
    again = Dispatcher(tasks(10), 10, lease_timeout=5, max_attempts=3, clock=FakeClock(),
                       done=journal.done(), restored=restore(tasks(10), journal.in_flight()))
    relet = again.lease("b", 1)[0]
    again.complete("b", [Outcome(relet.seq, OK, 0, None)])
    [(_seq, line, _ok)] = again.take_results()
    assert '"attempts":2' in line


def test_a_lease_whose_journal_write_fails_is_not_raised_into_the_lease(tmp_path):
    journal = Journal(str(tmp_path / "j.db"))
    journal.open_batch("s", "f", 10)
    d = journalled(journal, 10)
    (pages,) = journal.db.execute("PRAGMA page_count").fetchone()
    journal.db.execute(f"PRAGMA max_page_count = {pages}")        # the disk is full
    big = [(seq, 1, 0, 0) for seq in range(100, 50_000)]
    d.take_leased = lambda: big                     # more than the full disk takes
    assert len(d.lease("a", 2)) == 2                 # the worker's call still gets an answer
    assert d.lease_failed is not None and d.lease_failed.exit_code == 3
    assert "database or disk is full" in str(d.lease_failed)


def test_a_journal_sqlite_can_only_read_is_refused_at_the_start(tmp_path, monkeypatch):
    path = str(tmp_path / "j.db")
    Journal(path).close()
    connect = sqlite3.connect
    # As SQLite opens a file it may not write (root ignores file modes, so say it outright).
    monkeypatch.setattr(sqlite3, "connect", lambda p, **kw: connect(f"file:{p}?mode=ro",
                                                                     uri=True, **kw))
    with pytest.raises(ConfigError, match=r"--journal .*j.db: .*readonly database"):
        Journal(path)


def test_a_results_okness_is_its_own_column_set_as_it_is_recorded(tmp_path):
    journal = Journal(str(tmp_path / "j.db"))
    journal.open_batch("s", "f", 4)
    d = Dispatcher(tasks(4), 4, lease_timeout=5, max_attempts=1, clock=FakeClock())
    held = d.lease("a", 3)
    d.complete("a", [Outcome(held[0].seq, OK, 0, None), Outcome(held[1].seq, ERROR, None, "x"),
                     Outcome(held[2].seq, OK, 4, None)])
    journal.record([], d.take_results())
    assert sorted(journal.db.execute("SELECT seq, ok FROM results")) == [(0, 1), (1, 0), (2, 1)]
    assert journal.count_ok() == 2
    # The count is the column's, not the text's: a line is never read back to count it.
    journal.record([], [(3, '{"id":"3","status":"ok"}', False)])
    assert journal.count_ok() == 2


def old_journal(path: str, fingerprint: str = "demo:4:0.0", total: int = 4) -> None:
    """A journal as the previous release (format 2) left it: results without `ok`."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE leases (seq INTEGER PRIMARY KEY,
            attempts INTEGER NOT NULL, lost INTEGER NOT NULL, errors INTEGER NOT NULL);
        CREATE TABLE results (seq INTEGER PRIMARY KEY, record TEXT NOT NULL);
    """)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("format", "2"), ("batch", "b0"), ("source", "--demo 4"),
        ("fingerprint", fingerprint), ("total", str(total))])
    db.executemany("INSERT INTO leases VALUES (?, 1, 0, 0)", [(0,), (1,), (2,)])
    db.executemany("INSERT INTO results VALUES (?, ?)", [
        (0, '{"id":0,"task":"square","status":"ok","result":0}'),
        (1, '{"id":1,"task":"square","status":"failed","result":null}')])
    db.commit()
    db.close()


def test_a_journal_of_the_previous_release_is_upgraded_when_it_is_resumed(tmp_path):
    path = str(tmp_path / "j.db")
    old_journal(path)
    journal = Journal(path)
    assert journal.open_batch("--demo 4", "demo:4:0.0", 4) == ("b0", True)
    assert journal.count_ok() == 1
    assert sorted(journal.db.execute("SELECT seq, ok FROM results")) == [(0, 1), (1, 0)]
    assert journal.in_flight() == {2: [1, 0, 0]}
    journal.record([], [(2, '{"id":2}', True)])
    assert journal.count_ok() == 2
    journal.close()
    again = Journal(path)                           # upgraded once: format 3 from now on
    assert again.open_batch("--demo 4", "demo:4:0.0", 4) == ("b0", True)
    assert again.db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == ("3",)
    assert again.count_ok() == 2


def test_an_old_journal_of_another_batch_is_refused_and_left_as_it_was(tmp_path):
    path = str(tmp_path / "j.db")
    old_journal(path, fingerprint="file:abc")
    with pytest.raises(ConfigError, match="belongs to another batch"):
        Journal(path).open_batch("--demo 4", "demo:4:0.0", 4)
    db = sqlite3.connect(path)
    assert [row[1] for row in db.execute("PRAGMA table_info(results)")] == ["seq", "record"]
    assert db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == ("2",)
    db.close()


def test_a_journal_of_an_unknown_format_is_refused_with_what_to_do(tmp_path):
    path = str(tmp_path / "j.db")
    old_journal(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '1' WHERE key = 'format'")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=r"--journal .*j.db: written by another procfleet "
                                          r"version \(format 1\); give a new path"):
        Journal(path).open_batch("--demo 4", "demo:4:0.0", 4)
