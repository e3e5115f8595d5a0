"""The worker's settings: one frozen object, built once from the CLI options and environment."""

from dataclasses import dataclass, field

DEFAULT_MASTER = "127.0.0.1:50000"
DEFAULT_CONNECT_TIMEOUT = 60.0
#: keep in step with the images' STOPSIGNAL and compose's stop_grace_period (15 s)
DEFAULT_DRAIN_TIMEOUT = 10.0


@dataclass(frozen=True)
class WorkerSettings:
    master: tuple[str, int]
    authkey: bytes = field(repr=False)
    worker_id: str
    concurrency: int = 1
    imports: tuple[str, ...] = ()
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
