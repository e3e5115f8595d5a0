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


class ProtocolMismatch(ProcfleetError):
    """Master and worker speak different protocol versions."""


class UnknownTask(ProcfleetError):
    """A task name that no imported module registered."""
