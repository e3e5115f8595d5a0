"""The master's settings: one frozen object, built once from the CLI options and environment."""

import os
from dataclasses import dataclass, field

from procfleet.shared.errors import ConfigError

DEFAULT_BIND = "0.0.0.0:50000"
DEFAULT_LEASE_TIMEOUT = 5.0
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETRY_BACKOFF = 1.0


@dataclass(frozen=True)
class MasterSettings:
    bind: tuple[str, int]
    authkey: bytes = field(repr=False)
    tasks_path: str | None = None
    demo: int | None = None
    demo_sleep: float = 0.0
    results_path: str = "-"
    local_workers: int = 0
    timeout: float | None = None
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    task_timeout: float | None = None
    retries: int = 0
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    journal_path: str | None = None
    wait_workers: int = 0

    @property
    def heartbeat_interval(self) -> float:
        """Workers call in at least this often: three chances before their lease expires."""
        return self.lease_timeout / 3

    def validate(self) -> None:
        """ConfigError for what involves two options (before any file is opened)."""
        if self.journal_path:
            if self.tasks_path == "-":
                raise ConfigError("--journal needs a task file or --demo: tasks read from stdin "
                                  "cannot be read again when the batch resumes")
            if self.results_path == "-":
                raise ConfigError("--journal needs --results PATH (a file): a resumed batch "
                                  "rebuilds its results file from the journal")
        files = [(option, path) for option, path in (
            ("--tasks", self.tasks_path), ("--results", self.results_path),
            ("--journal", self.journal_path)) if path and path != "-"]
        for i, (first, a) in enumerate(files):
            for second, b in files[i + 1:]:
                if same_file(a, b):
                    named = a if a == b else f"{a} and {b}"
                    raise ConfigError(f"{first} and {second} name the same file ({named}): "
                                      f"{second} would overwrite it; give {second} another path")


def same_file(a: str, b: str) -> bool:
    """Whether paths `a` and `b` are one file: the same path once symlinks are resolved, or
    the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:         # one of them does not exist (yet): not the same file
        return False
