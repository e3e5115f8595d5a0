"""One hierarchy for every error procfleet raises on purpose, with the exit code it maps to."""

EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_USAGE = 2
EXIT_UNFINISHED = 3


class ProcfleetError(Exception):
    """Base class; `exit_code` is what the CLI exits with when this reaches it."""

    exit_code = EXIT_USAGE


class ConfigError(ProcfleetError):
    """Bad options, environment or input: nothing was done."""


class TaskFileError(ConfigError):
    """The task file cannot be read or holds invalid lines."""


class AuthenticationFailed(ProcfleetError):
    """The master and this process do not share the same key."""


class MasterUnreachable(ProcfleetError):
    """No master answered at the address within the connect timeout."""

    exit_code = EXIT_UNFINISHED
    #: what to check, added when the retries give up
    hint = "is the master running? see --master and --connect-timeout"


class MasterNameUnresolved(MasterUnreachable):
    """The master's host name does not resolve (yet: orchestrators create names late)."""

    hint = ("check the name in --master; with Docker the master's container or service must "
            "be on this network; see --connect-timeout")


class ProtocolMismatch(ProcfleetError):
    """Master and worker speak different protocol versions."""


class UnknownTask(ProcfleetError):
    """A task name that no imported module registered."""


class TaskFailed(ProcfleetError):
    """A task of a FleetExecutor ended failed without a builtin exception to re-raise: its
    function raised a non-builtin one, or the task never returned (see the subclasses). The
    worker's text (`error`: type, message and traceback) is the message."""

    exit_code = 1

    def __init__(self, error: str, *, task: str = "", attempts: int = 0,
                 worker: str | None = None) -> None:
        super().__init__(error)
        self.error, self.task, self.attempts, self.worker = error, task, attempts, worker


class WorkerLost(TaskFailed):
    """Every worker that held the task went silent or left (--max-attempts times)."""


class TaskTimeout(TaskFailed):
    """The task ran past its timeout and was killed."""


class WorkerCrash(TaskFailed):
    """The process running the task died (crashed, killed) each time it was tried."""
