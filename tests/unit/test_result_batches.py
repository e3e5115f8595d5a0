"""How many finished outcomes one exchange carries: capped in bytes, never zero."""

from procfleet.shared.protocol import OK, RESULT_BATCH_BYTES, Outcome
from procfleet.worker.worker import first_batch


def outcomes(*sizes):
    return [Outcome(i, OK, None, None, size) for i, size in enumerate(sizes)]


def test_small_outcomes_all_go_in_one_call():
    assert first_batch(outcomes(*[100] * 2000)) == 2000
    assert first_batch([]) == 0


def test_big_outcomes_are_split_so_that_no_call_passes_the_cap():
    third = RESULT_BATCH_BYTES // 3
    batch = outcomes(third, third, third, third, 10)
    first = first_batch(batch)
    assert first == 3
    assert sum(o.size for o in batch[:first]) <= RESULT_BATCH_BYTES
    assert first_batch(batch[first:]) == 2


def test_one_outcome_larger_than_the_cap_still_goes_alone():
    batch = outcomes(RESULT_BATCH_BYTES + 1, 5)
    assert first_batch(batch) == 1
