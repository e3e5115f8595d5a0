import pytest

from procs import Proc


@pytest.fixture
def spawn(authkey_env):
    """Factory: start `procfleet ...` processes; any still running at teardown are killed."""
    started: list[Proc] = []

    def start(*args, python=None, **kwargs):
        proc = Proc(list(args), **({"python": python} if python else {}), **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()             # its whole process group, reaped
