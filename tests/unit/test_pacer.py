"""How many tasks a worker asks to hold (Pacer), driven by a fake clock: a fast worker reaches
full leases within milliseconds, a slow one holds a few tasks, and a slowdown shrinks the lease."""

from procfleet.worker.worker import LEASE_WINDOW, MAX_LEASED, PREFETCH, Pacer


def run(pacer: Pacer, rate: float, seconds: float, start: float = 0.0, step: float = 0.001) -> float:
    """Report tasks finishing at `rate` per second, every `step` s, for `seconds`; return the
    clock at the end."""
    now, carry = start, 0.0
    for _ in range(round(seconds / step)):
        now += step
        carry += rate * step
        done = int(carry)
        carry -= done
        if done:
            pacer.finished(done, now)
    return now


def test_a_new_worker_holds_the_floor():
    assert Pacer(3).target() == 3 * PREFETCH


def test_a_fast_worker_holds_full_leases_within_twenty_milliseconds():
    pacer = Pacer(1)
    run(pacer, 40_000, 0.020)
    assert pacer.target() == MAX_LEASED


def test_slow_tasks_keep_the_lease_at_the_floor():
    pacer = Pacer(4)
    run(pacer, 8, 2.0)                                  # four slots, half a second a task
    assert pacer.target() == 4 * PREFETCH


def test_a_worker_that_slows_down_asks_for_less():
    pacer = Pacer(1)
    now = run(pacer, 40_000, 0.5)
    assert pacer.target() == MAX_LEASED
    run(pacer, 1_000, 1.0, start=now)
    assert pacer.target() <= 1_000 * LEASE_WINDOW * 1.1
