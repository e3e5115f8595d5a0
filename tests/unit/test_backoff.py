"""The one backoff: doubling, capped, with jitter that spreads retries but never lengthens them."""

import random

import pytest

from procfleet.shared.backoff import backoff_delay


def test_delays_double_from_the_first_and_stop_at_the_cap():
    no_jitter = [backoff_delay(n, 0.5, 5.0, rng=lambda: 1.0) for n in range(1, 7)]
    assert no_jitter == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize("attempt", [1, 2, 5, 30, 10_000])
def test_jitter_keeps_each_delay_between_half_and_all_of_its_base(attempt):
    rng = random.Random(attempt)
    base = min(0.1 * 2 ** min(attempt - 1, 64), 300.0)
    delays = [backoff_delay(attempt, 0.1, 300.0, rng=rng.random) for _ in range(200)]
    assert all(0.5 * base <= d < base for d in delays)
    assert len(set(delays)) > 150                  # spread out, not one value


def test_the_lowest_jitter_halves_the_delay():
    assert backoff_delay(3, 1.0, 60.0, rng=lambda: 0.0) == 2.0
