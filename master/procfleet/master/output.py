"""Writing result records as JSON Lines to a file or stdout, buffered, flushed per batch."""

import itertools
import sys

from procfleet.shared.errors import ConfigError


def _open(path: str, mode: str):
    try:
        return open(path, mode, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--results: cannot write {path!r}: {exc.strerror or exc}") from None


class ResultWriter:
    def __init__(self, path: str) -> None:
        self._fh = sys.stdout if path == "-" else _open(path, "w")

    @staticmethod
    def check(path: str) -> None:
        """ConfigError unless `path` can be written; an existing file is left as it is."""
        if path != "-":
            _open(path, "a").close()

    def write_lines(self, lines) -> int:
        """Write encoded result records, one per line, and flush; return how many."""
        if isinstance(lines, list):
            chunks = [lines]
        else:   # e.g. a resumed batch's journal: in pieces, never all in memory
            chunks = iter(lambda it=iter(lines): list(itertools.islice(it, 10_000)), [])
        count = 0
        for chunk in chunks:
            if chunk:
                self._fh.write("\n".join(chunk) + "\n")
                count += len(chunk)
        self._fh.flush()
        return count

    def close(self) -> None:
        if self._fh is sys.stdout:
            self._fh.flush()
        else:
            self._fh.close()
