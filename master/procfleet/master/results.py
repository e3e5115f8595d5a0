"""Writing result records as JSON Lines to a file or stdout, one write per batch of lines.

A results file is opened and locked when the batch is checked, and truncated only when it
starts; a failed write (a full disk) is cut back to the last whole line and stops the batch.
"""

import fcntl
import itertools
import os
import stat
import sys

from procfleet.shared.errors import EXIT_UNFINISHED, ConfigError, ProcfleetError
from procfleet.shared.permissions import is_permission_error, write_hint


class ResultsWriteError(ProcfleetError):
    """The results file could not be written mid-batch: the batch stops unfinished."""

    exit_code = EXIT_UNFINISHED


class ResultWriter:
    def __init__(self, path: str, resumable: bool = False) -> None:
        """Open (never truncate) and lock `path`; ConfigError if it cannot be written or
        another master writes to it. `resumable`: a journal keeps what a failed write lost."""
        self.path = path
        self.resumable = resumable
        self._fd = -1 if path == "-" else _open_locked(path)
        self._regular = self._fd >= 0 and stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._good = 0          # where the last whole line ends

    def start(self) -> None:
        """The batch starts: an earlier results file is emptied now, not at the check."""
        if self._regular:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            self._good = 0

    def write_lines(self, lines) -> int:
        """Write encoded result records, one per line; return how many. ResultsWriteError
        (with the file cut back to its last whole line) if they cannot be written."""
        if isinstance(lines, list):
            chunks = [lines]
        else:   # e.g. a resumed batch's journal: in pieces, never all in memory
            chunks = iter(lambda it=iter(lines): list(itertools.islice(it, 10_000)), [])
        count = 0
        for chunk in chunks:
            if chunk:
                self._write("\n".join(chunk) + "\n")
                count += len(chunk)
        return count

    def _write(self, text: str) -> None:
        try:
            if self._fd < 0:
                sys.stdout.write(text)
                sys.stdout.flush()
                return
            data = text.encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self._cut_back()
            where = "stdout" if self._fd < 0 else f"--results {self.path}"
            then = ("run the same command again to resume once there is room" if self.resumable
                    else "the results written so far end with a whole line")
            raise ResultsWriteError(f"{where}: cannot write results: {exc.strerror or exc}; the "
                                    f"batch stops here unfinished; {then}") from None
        self._good += len(data)

    def _cut_back(self) -> None:
        if self._regular:
            try:
                os.ftruncate(self._fd, self._good)
                os.lseek(self._fd, self._good, os.SEEK_SET)
            except OSError:
                pass

    def close(self) -> None:
        if self._fd < 0:
            try:
                sys.stdout.flush()
            except OSError:
                pass
        else:
            os.close(self._fd)       # releases the lock
            self._fd = -1


def _open_locked(path: str) -> int:
    try:
        # O_NONBLOCK: a FIFO nobody reads is an error now, not a master that hangs
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        fix = write_hint(path) if is_permission_error(exc) else "give a writable path"
        raise ConfigError(f"--results {path}: cannot write it: {exc.strerror or exc}; {fix}"
                          ) from None
    os.set_blocking(fd, True)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"--results {path}: another master is writing to it; wait for "
                              "it to end, or give another results path") from None
    return fd
