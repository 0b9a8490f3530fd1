"""95% intervals for accuracy figures: Wilson's for a proportion, Tango's score interval for a paired difference.

Shared by `smallnets evaluate`, optimize's int8 gate and the benchmarks' accuracy columns; standard library only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Interval:
    """A two-sided 95% confidence interval, in the unit of the estimate it belongs to."""

    low: float
    high: float

    def scaled(self, factor: float) -> Interval:
        return Interval(self.low * factor, self.high * factor)

    def to_list(self) -> list[float]:
        return [self.low, self.high]


def wilson_interval(successes: int, total: int, z: float = Z_95) -> Interval:
    """Wilson score interval of a proportion: keeps its coverage near 0 and 1, where the normal one collapses."""
    if total <= 0:
        return Interval(0.0, 1.0)
    p = successes / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: rounding would leave 1e-17 off
    high = 1.0 if successes == total else min(1.0, centre + half)
    return Interval(low, high)


@functools.lru_cache(maxsize=65536)
def paired_difference_interval(broken: float, fixed: float, total: float, z: float = Z_95) -> Interval:
    """95% interval of the paired difference p(reference right) - p(candidate right), as a fraction.

    Tango's (1998) score interval for matched pairs: only the discordant pairs (``broken``: reference right,
    candidate wrong; ``fixed``: the reverse) carry information, and the score statistic
    ``(b - c - n d) / sqrt(n (2 q(d) + d (1 - d)))`` with ``q(d)`` the constrained maximum-likelihood estimate
    of p(fixed) is inverted numerically. Unlike the Wald interval on discordant pairs it stays honest when there
    are few or no flips: with none among n images the upper end is z^2 / (n + z^2) (about 1.5 points for 250
    images), not zero. Counts may be fractional (what-if questions at observed rates); results are cached, as a
    recipe search and the gate's simulation ask for the same counts many times.
    """
    if total <= 0:
        return Interval(-1.0, 1.0)
    estimate = (broken - fixed) / total

    def score(difference: float) -> float:
        b_coef = (broken + fixed) - (2 * total - broken + fixed) * difference
        # The discriminant is >= 0 in exact arithmetic; at d -> -1 with every pair fixed it rounds below zero.
        discriminant = max(0.0, b_coef * b_coef + 8 * total * fixed * difference * (1 - difference))
        constrained = (b_coef + math.sqrt(discriminant)) / (4 * total)
        numerator = broken - fixed - total * difference
        variance = total * (2 * constrained + difference * (1 - difference))
        return (
            numerator / math.sqrt(variance)
            if variance > 0
            else (0.0 if numerator == 0 else math.copysign(1e9, numerator))
        )

    def solve(low: float, high: float, target: float) -> float:
        """Bisection for score(d) = target on [low, high]; score falls as d grows."""
        for _ in range(100):
            middle = (low + high) / 2
            if score(middle) > target:
                low = middle
            else:
                high = middle
        return (low + high) / 2

    edge = 1.0 - 1e-12
    # min/max: at an estimate of exactly +-1 (every pair broken, or fixed) the bisection stops 1e-12 short of it.
    return Interval(min(solve(-edge, estimate, z), estimate), max(solve(estimate, edge, -z), estimate))
