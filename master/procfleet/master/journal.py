"""`--journal PATH`: the batch's progress in SQLite (WAL), so a restarted master resumes it.

What is kept: which batch this is (its source's fingerprint and the batch id workers know),
every task that was leased with its attempt counts, and every result (its line, and whether it
is ok). Writes are grouped: the master's loop commits everything since its last tick in one
transaction, never one per task.
A result is written to the results file only after its transaction committed, and a resumed
master rebuilds the results file from the journal, so the file holds each task exactly once.
A master killed between a worker's report and the next commit loses that report; the task is
simply run again after the restart.

One master at a time: the journal file is locked (flock) while a master uses it.
"""

import fcntl
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator

from procfleet.shared.errors import EXIT_UNFINISHED, ConfigError, ProcfleetError
from procfleet.shared.permissions import is_permission_error, writable, write_hint

from .leases import Dispatcher, TaskState


def restore(source, counts: dict[int, tuple[int, int, int]]) -> list[TaskState]:
    """The in-flight tasks of a resumed batch, read again from `source`, with their counts."""
    restored = []
    if counts:
        for task in source:
            if task.seq in counts:
                restored.append(TaskState(task, *counts[task.seq]))
                if len(restored) == len(counts):
                    break
    return restored

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    seq INTEGER PRIMARY KEY,
    attempts INTEGER NOT NULL, lost INTEGER NOT NULL, errors INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY, record TEXT NOT NULL, ok INTEGER NOT NULL);
"""
#: 3: results have an `ok` column (set as each is recorded)
FORMAT = "3"
#: format 2 (results without `ok`) is upgraded in place when a master opens it
UPGRADE_FROM_2 = [
    "ALTER TABLE results ADD COLUMN ok INTEGER NOT NULL DEFAULT 0",
    "UPDATE results SET ok = (json_extract(record, '$.status') = 'ok')",
    "UPDATE meta SET value = '3' WHERE key = 'format'",
]


class JournalledDispatcher(Dispatcher):
    """A Dispatcher whose leases are journalled before the worker gets them (`journal` and
    `leased_log` set by its owner). This runs in a worker's server thread, so a failed write
    is kept in `lease_failed` for the master's loop, never raised into the lease."""

    journal: "Journal"
    lease_failed: "JournalWriteError | None" = None

    def lease(self, *args, **kwargs):
        leased = super().lease(*args, **kwargs)
        if leased and self.lease_failed is None:
            try:
                self.journal.record(self.take_leased(), [])
            except JournalWriteError as exc:
                self.lease_failed = exc
            except Exception as exc:     # noqa: BLE001 - never into a worker's lease
                self.lease_failed = JournalWriteError(f"--journal {self.journal.path}: cannot "
                                                      f"record a lease: {exc}")
        return leased


class JournalWriteError(ProcfleetError):
    """The journal could not be written mid-batch (a full disk): the batch stops unfinished."""

    exit_code = EXIT_UNFINISHED


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path
        self.db = None
        self._lock_file = _lock(path)
        self._mutex = threading.Lock()      # one transaction at a time, whichever thread
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives the process being killed; only a power loss may
            # undo the last few, and those tasks then run again.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            # A journal SQLite opened read-only says so only at the first write (BEGIN
            # IMMEDIATE does not tell): write nothing, in a transaction, now.
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("DELETE FROM meta WHERE 0")
            finally:
                self.db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            self.close()
            # SQLite's write-ahead log is a file beside the journal: the folder must be writable
            folder = os.path.dirname(path) or "."
            fix = (write_hint(folder) if not writable(folder)
                   else "give a writable new path, or remove the file")
            raise ConfigError(f"--journal {path}: cannot use it as an SQLite journal: {exc}; "
                              f"{fix}") from None

    def open_batch(self, source_name: str, fingerprint: str, total: int) -> tuple[str, bool]:
        """Start or resume the batch; (batch id, resumed?). ConfigError for another batch."""
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if not meta:
            batch = uuid.uuid4().hex[:12]
            with self._transaction():
                self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("format", FORMAT), ("batch", batch), ("source", source_name),
                    ("fingerprint", fingerprint), ("total", str(total))])
            return batch, False
        if meta.get("format") not in (FORMAT, "2"):
            raise ConfigError(f"--journal {self.path}: written by another procfleet version "
                              f"(format {meta.get('format')}); give a new path")
        if meta["fingerprint"] != fingerprint or int(meta["total"]) != total:
            raise ConfigError(
                f"--journal {self.path} belongs to another batch ({meta['source']}, "
                f"{meta['total']} tasks), not {source_name} ({total} tasks): pass the same "
                "tasks to resume it, or give a new journal path to start a new batch")
        if meta["format"] == "2":
            with self._transaction():
                for statement in UPGRADE_FROM_2:
                    self.db.execute(statement)
        return meta["batch"], True

    def done(self) -> list[int]:
        return [seq for (seq,) in self._read("SELECT seq FROM results")]

    def in_flight(self) -> dict[int, tuple[int, int, int]]:
        """seq -> (attempts, lost, errors) of tasks leased without a result: they run again."""
        rows = self._read(
            "SELECT seq, attempts, lost, errors FROM leases WHERE seq NOT IN "
            "(SELECT seq FROM results)")
        return {seq: counts for seq, *counts in rows}

    def results(self, chunk: int = 10_000) -> Iterator[str]:
        """Every result record so far, as JSON lines, in task order. Read in chunks, each
        fetched whole: leases are journalled from other threads meanwhile."""
        after = -1
        while rows := self._read("SELECT seq, record FROM results WHERE seq > ? ORDER BY seq "
                                 "LIMIT ?", (after, chunk)):
            after = rows[-1][0]
            yield from (record for _seq, record in rows)

    def count_ok(self) -> int:
        [(count,)] = self._read("SELECT count(*) FROM results WHERE ok")
        return count

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._mutex:
            return self.db.execute(sql, params).fetchall()

    def record(self, leased: list[tuple], results: list[tuple[int, str]]) -> None:
        """One transaction: leases as (seq, attempts, lost, errors), results as (seq, line,
        ok?).

        Only numbers are kept for a lease: the task itself is read again from its source (the
        fingerprint guarantees it is the same) when a resumed batch needs it. A failed write
        is rolled back and raised as JournalWriteError."""
        if not leased and not results:
            return
        try:
            with self._transaction():
                if leased:
                    self.db.executemany("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
                                        leased)
                if results:
                    self.db.executemany("INSERT OR IGNORE INTO results (seq, record, ok) "
                                        "VALUES (?, ?, ?)", results)
        except sqlite3.Error as exc:
            raise JournalWriteError(
                f"--journal {self.path}: cannot write to it: {exc}; the batch stops here "
                "unfinished; once there is room, run the same command again to resume "
                "it") from None

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        self._lock_file.close()             # releases the lock

    def _transaction(self):
        return _Transaction(self.db, self._mutex)


def _lock(path: str):
    """`path` open, holding its exclusive lock (released when closed, or collected);
    ConfigError if another master holds it, or if it cannot be opened for writing."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        fix = write_hint(path) if is_permission_error(exc) else "give a writable path"
        raise ConfigError(f"--journal {path}: cannot open it for writing: "
                          f"{exc.strerror or exc}; {fix}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(f"--journal {path}: another master holds it (a batch is running on "
                          "this journal); wait for that master to end, or give another "
                          "journal path") from None
    return os.fdopen(fd, "r+b", buffering=0)


class _Transaction:
    """BEGIN ... COMMIT, or ROLLBACK when the body or the COMMIT itself fails."""

    def __init__(self, db: sqlite3.Connection, mutex: threading.Lock) -> None:
        self.db = db
        self.mutex = mutex

    def __enter__(self):
        self.mutex.acquire()
        try:
            self.db.execute("BEGIN")
        except BaseException:
            self.mutex.release()
            raise

    def __exit__(self, exc_type, _exc, _tb):
        try:
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")
                    return
                except sqlite3.Error:
                    self._rollback()
                    raise
            self._rollback()
        finally:
            self.mutex.release()

    def _rollback(self) -> None:
        if self.db.in_transaction:       # SQLite may have rolled back already (SQLITE_FULL)
            self.db.execute("ROLLBACK")
