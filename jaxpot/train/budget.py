"""A wall-time budget shared by :func:`~jaxpot.train.fit`, :func:`~jaxpot.train.fit_gap` and
:func:`~jaxpot.train.evaluate`.

One object answers every "is there still time?" question of a run, so the pieces of a training
job (data preparation, the epoch loop, the final validation, writing the model) spend one budget
instead of each keeping its own clock::

    budget = TimeBudget.minutes(15)           # or TimeBudget.unlimited()
    while budget.left() > step_time + reserve:
        ...
    budget.expired()                          # True once the deadline has passed
    budget.fraction_used()                    # 0 at the start, 1 at the deadline

Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import math
import time

__all__ = ["TimeBudget", "as_budget"]


class TimeBudget:
    """A deadline on the monotonic clock (or none).

    Args:
      seconds: length of the budget in seconds (None: unlimited).
      start: ``time.monotonic()`` at which it started (default: now).

    Raises:
      ValueError: a budget that is not a positive, finite number of seconds.
    """

    def __init__(self, seconds: float | None = None, *, start: float | None = None):
        if seconds is not None:
            seconds = float(seconds)
            if not (math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"time budget must be a positive number of seconds, "
                                 f"got {seconds}")
        self.start = time.monotonic() if start is None else float(start)
        self.seconds = seconds

    @classmethod
    def minutes(cls, minutes: float | None, *, start: float | None = None) -> TimeBudget:
        """A budget of ``minutes`` (None: unlimited)."""
        return cls(None if minutes is None else 60.0 * float(minutes), start=start)

    @classmethod
    def until(cls, deadline: float | None, *, start: float | None = None) -> TimeBudget:
        """A budget ending at the absolute monotonic time ``deadline`` (None: unlimited)."""
        start = time.monotonic() if start is None else float(start)
        if deadline is None:
            return cls(None, start=start)
        budget = cls(None, start=start)
        budget.seconds = float(deadline) - start  # may be <= 0: already spent
        return budget

    @classmethod
    def unlimited(cls) -> TimeBudget:
        return cls(None)

    @property
    def limited(self) -> bool:
        """True when there is a deadline."""
        return self.seconds is not None

    @property
    def deadline(self) -> float | None:
        """Absolute ``time.monotonic()`` deadline, or None."""
        return None if self.seconds is None else self.start + self.seconds

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds until the deadline (``inf`` without one; negative once it has passed)."""
        if self.seconds is None:
            return math.inf
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self.left() <= 0.0

    def fits(self, seconds: float) -> bool:
        """True when ``seconds`` more work still ends before the deadline."""
        return seconds <= self.left()

    def fraction_used(self) -> float:
        """Elapsed over total (0 without a deadline)."""
        if self.seconds is None:
            return 0.0
        if self.seconds <= 0:
            return 1.0
        return self.elapsed() / self.seconds

    def sub(self, fraction: float | None = None, *, reserve_s: float = 0.0) -> TimeBudget:
        """A budget starting now that ends ``reserve_s`` before this one's deadline, or after
        ``fraction`` of what is left (whichever is earlier)."""
        now = time.monotonic()
        if self.seconds is None:
            return TimeBudget(None, start=now)
        end = self.deadline - float(reserve_s)
        if fraction is not None:
            end = min(end, now + float(fraction) * (self.deadline - now))
        return TimeBudget.until(end, start=now)

    def __repr__(self) -> str:
        if self.seconds is None:
            return "TimeBudget(unlimited)"
        return f"TimeBudget({self.seconds:.1f} s, {self.left():.1f} s left)"


def as_budget(budget: TimeBudget | None = None, *, deadline: float | None = None,
              minutes: float | None = None) -> TimeBudget:
    """Normalise the ways callers give a budget: an object, a deadline or minutes."""
    if budget is not None:
        return budget
    if deadline is not None:
        return TimeBudget.until(deadline)
    return TimeBudget.minutes(minutes)
