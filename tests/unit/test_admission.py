"""Admission bookkeeping with a fake clock: pending-handshake cap and deadlines, the byte
budget of large messages, log throttle."""

import threading

from fakes import FakeClock, ParkingCondition

from procfleet.master.admission import ByteBudget, PendingHandshakes, ThrottledCounter


def test_pending_handshakes_are_capped():
    pending = PendingHandshakes(limit=2, timeout=3.0, clock=FakeClock())
    assert pending.admit(10) and pending.admit(11)
    assert not pending.admit(12)
    assert len(pending) == 2
    assert pending.finish(10) is False
    assert pending.admit(12) and len(pending) == 2


def test_overdue_handshakes_are_cut_once_and_reported_as_overdue():
    clock = FakeClock()
    pending = PendingHandshakes(limit=10, timeout=3.0, clock=clock)
    pending.admit(10)
    clock.now += 1
    pending.admit(11)
    cut = []
    clock.now += 1.9
    assert pending.cut_overdue(cut.append) == 0
    clock.now += 0.1
    assert pending.cut_overdue(cut.append) == 1 and cut == [10]
    clock.now += 5
    assert pending.cut_overdue(cut.append) == 1 and cut == [10, 11]   # 10 is not cut twice
    assert len(pending) == 2            # still counted until their threads finish them
    assert pending.finish(10) is True and pending.finish(11) is True
    assert len(pending) == 0 and pending.finish(10) is False


def test_cut_everything_on_close():
    pending = PendingHandshakes(limit=10, timeout=3.0, clock=FakeClock())
    pending.admit(1)
    pending.admit(2)
    cut = []
    assert pending.cut_overdue(cut.append, everything=True) == 2 and sorted(cut) == [1, 2]


def test_a_finished_handshake_is_never_cut():
    clock = FakeClock()
    pending = PendingHandshakes(limit=10, timeout=3.0, clock=clock)
    pending.admit(7)
    pending.finish(7)
    clock.now += 10
    cut = []
    assert pending.cut_overdue(cut.append) == 0 and cut == []


def test_throttle_logs_a_burst_then_summaries_and_counts_everything():
    clock = FakeClock()
    counter = ThrottledCounter(burst=10, refill=6.0, interval=1.0, clock=clock)
    logged = [counter.record()[1] for _ in range(1000)]
    assert logged[:10] == [True] * 10 and not any(logged[10:])
    assert counter.total == 1000
    assert counter.summary() == (0, 1000)          # not a second since the start yet
    clock.now += 1.0
    assert counter.summary() == (990, 1000)
    assert counter.summary() == (0, 1000)          # nothing new
    counter.record()
    clock.now += 0.5
    assert counter.summary() == (0, 1001)          # at most one summary a second
    clock.now += 0.5
    assert counter.summary() == (1, 1001)


def test_throttle_allowance_refills_over_time():
    clock = FakeClock()
    counter = ThrottledCounter(burst=3, refill=6.0, interval=1.0, clock=clock)
    assert [counter.record()[1] for _ in range(4)] == [True, True, True, False]
    clock.now += 6.0
    assert [counter.record()[1] for _ in range(2)] == [True, False]
    clock.now += 3600
    assert [counter.record()[1] for _ in range(4)] == [True, True, True, False]   # capped at 3
    assert counter.total == 10


def test_the_byte_budget_lets_in_what_fits_and_the_next_waits_for_a_release():
    budget = ByteBudget(100)
    budget._cond = ParkingCondition()                     # the test sees the waiter park
    assert not budget.acquire(101, timeout=0)             # never fits: refused at once
    assert budget.acquire(60, timeout=0) and budget.acquire(40, timeout=0)
    assert not budget.acquire(1, timeout=0) and budget.used == 100
    got = []
    parked = budget._cond.parked + 1
    waiter = threading.Thread(target=lambda: got.append(budget.acquire(50, timeout=60)),
                              daemon=True)
    waiter.start()
    budget._cond.wait_parked(parked)                      # the waiter is parked on the budget
    budget.release(60)
    waiter.join(10)                                       # woken, long before its 60 s
    assert got == [True] and budget.used == 90 and budget.peak == 100
    budget.release(0)
    assert budget.used == 90
