"""In-process stand-ins the tests share: the test key, a clock the test moves, a batch's tasks,
and a Condition that tells the test when another thread is parked on it."""

import threading

from procfleet.shared.protocol import Task

#: the key every test uses, never a real one
TEST_KEY = "procfleet-test-key-0123456789"


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def tasks(n: int) -> list[Task]:
    """`n` demo tasks: square(i) with id str(i)."""
    return [Task(i, str(i), "square", [i], {}) for i in range(n)]


class ParkingCondition(threading.Condition):
    """A Condition that counts the waits begun on it, so that a test knows a thread is parked
    (instead of reading Condition._waiters).

    The count goes up while the waiter still holds the lock, which wait() then releases: once
    `wait_parked` returns, whatever the test does under the lock happens after the waiter is
    really waiting, never before."""

    def __init__(self) -> None:
        super().__init__()
        self._parked = 0
        self._counted = threading.Condition(threading.Lock())

    def wait(self, timeout: float | None = None) -> bool:
        with self._counted:
            self._parked += 1
            self._counted.notify_all()
        return super().wait(timeout)

    @property
    def parked(self) -> int:
        """How many waits have begun so far."""
        with self._counted:
            return self._parked

    def wait_parked(self, count: int, timeout: float = 5.0) -> None:
        """Block until `count` waits in all have begun; AssertionError after `timeout`."""
        with self._counted:
            if not self._counted.wait_for(lambda: self._parked >= count, timeout):
                raise AssertionError(f"{self._parked} of {count} waits began on the condition "
                                     f"within {timeout} s")
