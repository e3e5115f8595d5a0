"""Writing result records as JSON Lines to a file or stdout, buffered, flushed per batch."""

import sys

from procfleet.shared.errors import ConfigError
from procfleet.shared.records import dumps


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

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        self._fh.write("".join([dumps(r) + "\n" for r in records]))
        self._fh.flush()

    def write_lines(self, lines) -> int:
        """Write already-encoded records (a resumed batch's, from its journal); return count."""
        count = 0
        for line in lines:
            self._fh.write(line + "\n")
            count += 1
        self._fh.flush()
        return count

    def close(self) -> None:
        if self._fh is sys.stdout:
            self._fh.flush()
        else:
            self._fh.close()
