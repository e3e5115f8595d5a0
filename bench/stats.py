"""The pure parts of the suite: measured series, goals and ratios."""

import math
import statistics
from dataclasses import dataclass, field

PASS, FAIL, SKIP, INFO = "PASS", "FAIL", "SKIP", "INFO"


@dataclass
class Series:
    """One case's measurements (one value per run) and what went wrong in the runs that failed."""

    key: str
    label: str
    unit: str = "tasks/s"
    tasks: int | None = None
    workers: int | None = None
    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def runs(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def min(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def max(self) -> float | None:
        return max(self.values) if self.values else None

    @property
    def ok(self) -> bool:
        """At least one good run and no failed one: a case that lost results does not count."""
        return bool(self.values) and not self.errors and self.skipped is None


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank q-th percentile (0 < q <= 100): a value that was measured, never an
    interpolation; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ratio(numerator: Series | None, denominator: Series | None) -> float | None:
    """median / median, or None when either side has no usable measurement."""
    if numerator is None or denominator is None or not (numerator.ok and denominator.ok):
        return None
    if not denominator.median:
        return None
    return numerator.median / denominator.median


@dataclass
class Goal:
    """One line of the goals section: what was measured against what target, and the verdict."""

    name: str
    target: str
    measured: str
    status: str
    note: str = ""


@dataclass(frozen=True)
class Missing:
    """Why a goal has no value: SKIP when a case was left out, FAIL when a run of it failed."""

    status: str = SKIP
    note: str = "not measured"


def missing_from(*series: "Series | None") -> Missing:
    """The first reason among `series` that a goal built on them has no value."""
    for s in series:
        if s is None:
            return Missing()
        if s.errors:
            return Missing(FAIL, f"{s.label}: a run failed")
        if s.skipped:
            return Missing(SKIP, f"{s.label} skipped: {s.skipped}")
    return Missing()


def at_least(name: str, value: float | None, minimum: float, *, unit: str = "×",
             want: float | None = None, missing: Missing = Missing()) -> Goal:
    """PASS when value >= minimum; without a value, `missing` says SKIP or FAIL and why."""
    target = f"≥ {minimum:g}{unit}" + (f" (want {want:g}{unit})" if want is not None else "")
    if value is None:
        return Goal(name, target, "—", missing.status, missing.note)
    return Goal(name, target, f"{value:.3g}{unit}", PASS if value >= minimum else FAIL)


def below(name: str, value: float | None, maximum: float, *, unit: str = "",
          missing: Missing = Missing()) -> Goal:
    """PASS when value < maximum; without a value, `missing` says SKIP or FAIL and why."""
    target = f"< {maximum:g}{unit}"
    if value is None:
        return Goal(name, target, "—", missing.status, missing.note)
    return Goal(name, target, f"{value:.3g}{unit}", PASS if value < maximum else FAIL)


def memory_goal(name: str, small: Series | None, large: Series | None, limit_mb: float,
                max_growth: float) -> Goal:
    """Both peaks under `limit_mb`; the large batch's at most `max_growth` × the small one's."""
    target = f"< {limit_mb:g} MB each, large/small ≤ {max_growth:g}×"
    if not (small and large and small.ok and large.ok):
        why = missing_from(small, large)
        return Goal(name, target, "—", why.status, why.note)
    growth = large.median / small.median
    measured = f"{small.median:.0f} MB / {large.median:.0f} MB ({growth:.2f}×)"
    passed = small.median < limit_mb and large.median < limit_mb and growth <= max_growth
    return Goal(name, target, measured, PASS if passed else FAIL)
