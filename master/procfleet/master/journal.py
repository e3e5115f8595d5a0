"""`--journal PATH`: the batch's progress in SQLite (WAL), so a restarted master resumes it.

What is kept: which batch this is (its source's fingerprint and the batch id workers know),
every task that was leased with its attempt counts, and every result. Writes are grouped: the
master's loop commits everything since its last tick in one transaction, never one per task.
A result is written to the results file only after its transaction committed, and a resumed
master rebuilds the results file from the journal, so the file holds each task exactly once.
A master killed between a worker's report and the next commit loses that report; the task is
simply run again after the restart.
"""

import sqlite3
import uuid
from collections.abc import Iterator

from procfleet.shared.errors import ConfigError

from .dispatcher import TaskState


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
CREATE TABLE IF NOT EXISTS results (seq INTEGER PRIMARY KEY, record TEXT NOT NULL);
"""
FORMAT = "2"


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives the process being killed; only a power loss may
            # undo the last few, and those tasks then run again.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"--journal {path}: cannot use it as an SQLite journal: {exc}; "
                              "give a new path or remove the file") from None

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
        if meta.get("format") != FORMAT:
            raise ConfigError(f"--journal {self.path}: written by another procfleet version "
                              f"(format {meta.get('format')}); give a new path")
        if meta["fingerprint"] != fingerprint or int(meta["total"]) != total:
            raise ConfigError(
                f"--journal {self.path} belongs to another batch ({meta['source']}, "
                f"{meta['total']} tasks), not {source_name} ({total} tasks): pass the same "
                "tasks to resume it, or give a new journal path to start a new batch")
        return meta["batch"], True

    def done(self) -> Iterator[int]:
        return (seq for (seq,) in self.db.execute("SELECT seq FROM results"))

    def in_flight(self) -> dict[int, tuple[int, int, int]]:
        """seq -> (attempts, lost, errors) of tasks leased without a result: they run again."""
        rows = self.db.execute(
            "SELECT seq, attempts, lost, errors FROM leases WHERE seq NOT IN "
            "(SELECT seq FROM results)")
        return {seq: counts for seq, *counts in rows}

    def results(self) -> Iterator[str]:
        """Every result record so far, as JSON lines, in task order."""
        return (record for (record,) in self.db.execute(
            "SELECT record FROM results ORDER BY seq"))

    def count_ok(self) -> int:
        (count,) = self.db.execute(
            "SELECT count(*) FROM results WHERE json_extract(record, '$.status') = 'ok'").fetchone()
        return count

    def record(self, leased: list[tuple], results: list[tuple[int, str]]) -> None:
        """One transaction: leases as (seq, attempts, lost, errors), results as (seq, line).

        Only numbers are kept for a lease: the task itself is read again from its source (the
        fingerprint guarantees it is the same) when a resumed batch needs it."""
        if not leased and not results:
            return
        with self._transaction():
            if leased:
                self.db.executemany("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)", leased)
            if results:
                self.db.executemany("INSERT OR IGNORE INTO results VALUES (?, ?)", results)

    def close(self) -> None:
        self.db.close()

    def _transaction(self):
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN")

    def __exit__(self, exc_type, _exc, _tb):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
