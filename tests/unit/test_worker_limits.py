"""What worker ids that only say hello may cost the master: Dispatcher.admit, with a fake clock."""

import pytest
from fakes import FakeClock, tasks

from procfleet.master import leases as leases_module
from procfleet.master.leases import Dispatcher


def make(n: int = 10):
    clock = FakeClock()
    return Dispatcher(tasks(n), lease_timeout=5.0, max_attempts=3, clock=clock), clock


def join(d: Dispatcher, worker_id: str) -> str | None:
    """What the service does at hello: admit, then the id is known."""
    refusal = d.admit(worker_id)
    if refusal is None:
        d.new_session(worker_id, f"session-{worker_id}")
    return refusal


def test_idle_ids_are_capped_but_working_and_known_ones_always_get_in(monkeypatch):
    monkeypatch.setattr(leases_module, "MAX_IDLE_WORKERS", 3)
    d, clock = make()
    assert [join(d, f"idle-{i}") for i in range(3)] == [None, None, None]
    refusal = join(d, "one-too-many")
    assert refusal is not None and "MAX_IDLE_WORKERS" in refusal
    assert "one-too-many" not in d.workers
    assert join(d, "idle-0") is None            # a known id reconnecting is never refused
    d.lease("idle-0", 2)                        # now one of them works...
    clock.now += leases_module.ADMIT_RECOUNT    # ...as the next count sees...
    assert join(d, "newcomer") is None          # ...so there is room for one more idle id
    assert join(d, "another") is not None


def test_ids_that_went_silent_stop_counting_as_idle(monkeypatch):
    monkeypatch.setattr(leases_module, "MAX_IDLE_WORKERS", 2)
    d, clock = make()
    join(d, "a")
    join(d, "b")
    assert join(d, "c") is not None
    clock.now += 6.0                            # past the lease timeout: a and b are dead
    d.expire()
    assert join(d, "c") is None


def test_past_max_workers_departed_ids_are_forgotten_and_still_counted(monkeypatch):
    monkeypatch.setattr(leases_module, "MAX_WORKERS", 4)
    monkeypatch.setattr(leases_module, "MAX_IDLE_WORKERS", 4)
    d, clock = make()
    for name in "abcd":
        assert join(d, name) is None
    d.lease("a", 1)
    clock.now += 6.0
    d.expire()                                  # all four dead; a's task is requeued
    assert join(d, "e") is None                 # room made by forgetting the departed
    assert d.forgotten == 4 and set(d.workers) == {"e"}
    assert d.seen_workers() == 5
    for name in "fgh":
        assert join(d, name) is None
    clock.now += leases_module.ADMIT_RECOUNT
    refusal = join(d, "i")                      # four live ids: nothing to forget
    assert refusal is not None and "MAX_WORKERS" in refusal
    assert d.pending() == 10                    # nothing was lost on the way


@pytest.mark.parametrize("known", [True, False])
def test_admit_changes_nothing_for_a_refused_id(monkeypatch, known):
    monkeypatch.setattr(leases_module, "MAX_IDLE_WORKERS", 1)
    d, _ = make()
    join(d, "first")
    before = dict(d.workers)
    result = d.admit("first" if known else "second")
    assert (result is None) == known
    assert d.workers == before
