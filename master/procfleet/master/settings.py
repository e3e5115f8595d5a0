"""The master's settings: one frozen object, built once from the CLI options and environment."""

from dataclasses import dataclass, field

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
