"""Writing result records as JSON Lines to a file or stdout, buffered, flushed per batch."""

import sys

from procfleet.shared.errors import ConfigError
from procfleet.shared.records import dumps


class ResultWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        if path == "-":
            self._fh = sys.stdout
            self._close = False
        else:
            try:
                self._fh = open(path, "w", encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"--results: cannot write {path!r}: {exc.strerror or exc}") from None
            self._close = True

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        self._fh.write("".join(dumps(r) + "\n" for r in records))
        self._fh.flush()
        self.count += len(records)

    def close(self) -> None:
        if self._close:
            self._fh.close()
        else:
            self._fh.flush()
