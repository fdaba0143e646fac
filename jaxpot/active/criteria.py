"""When to stop learning: the criteria checked after every iteration of the loop.

Four measures are reported in every row of ``iterations.csv``:

- **quiet steps**: MD steps run since the last trigger; the loop is *quiet* when every walker has
  run a whole segment (``steps_per_walker``) without a trigger since the last refit;
- **uncertainty plateau**: the relative change of the mean logged ``max_force_std`` over the last
  ``plateau_window`` quiet-or-not segments is below ``plateau_tol``;
- **observable standard error**: block-averaged standard error of the mean potential energy per
  atom (eV/atom) of each walker's latest segment; the largest over the walkers;
- **trust coverage**: the fraction of logged MD frames of the latest round (one segment per
  walker) whose largest per-atom force spread is under the threshold.

The run stops when every criterion in ``require`` holds, or at ``max_oracle_calls`` /
``max_iterations``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = ["StoppingCriteria", "block_standard_error", "check"]

CRITERIA = ("quiet", "plateau", "sem", "coverage")


@dataclasses.dataclass(frozen=True)
class StoppingCriteria:
    """Thresholds of the stopping criteria.

    Attributes:
      require: which criteria must all hold to stop (from ``quiet``, ``plateau``, ``sem``,
        ``coverage``).
      coverage: minimum fraction of logged frames under the threshold.
      sem_ev: maximum block standard error of the mean potential energy per atom, eV/atom.
      plateau_tol: maximum relative change of the mean spread over ``plateau_window`` segments.
      plateau_window: segments compared by the plateau criterion.
      max_oracle_calls: stop after this many structures were labelled by the loop.
      max_iterations: stop after this many MD segments.
    """

    require: Sequence[str] = ("quiet", "coverage", "sem")
    coverage: float = 0.98
    sem_ev: float = 2e-3
    plateau_tol: float = 0.1
    plateau_window: int = 4
    max_oracle_calls: int = 50
    max_iterations: int = 200

    def validated(self) -> StoppingCriteria:
        bad = [c for c in self.require if c not in CRITERIA]
        if bad:
            raise ValueError(f"stopping criteria {bad} unknown; choose from {list(CRITERIA)}")
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {self.coverage}")
        if self.max_oracle_calls < 0 or self.max_iterations < 1:
            raise ValueError("max_oracle_calls must be >= 0 and max_iterations >= 1")
        return dataclasses.replace(self, require=tuple(self.require))


def block_standard_error(x, n_blocks: int = 5) -> float:
    """Standard error of the mean of a correlated series from ``n_blocks`` block means
    (NaN when fewer than two values per block)."""
    x = np.asarray(x, np.float64)
    size = x.size // max(n_blocks, 2)
    if size < 2:
        return float("nan")
    means = x[: size * n_blocks].reshape(n_blocks, size).mean(axis=1)
    return float(np.std(means, ddof=1) / np.sqrt(n_blocks))


def check(history: list[dict], n_walkers: int, oracle_calls: int,
          criteria: StoppingCriteria) -> tuple[dict, list[str]]:
    """Evaluate the criteria on the iteration rows so far.

    Args:
      history: one dict per MD segment with ``triggered``, ``steps``, ``full`` (ran to the end),
        ``coverage_frames`` / ``trusted_frames``, ``mean_spread``, ``walker``, ``sem_ev``.
      n_walkers: walkers in a round.
      oracle_calls: structures labelled so far by the loop.
      criteria: the thresholds.

    Returns:
      ``(values, reasons)``: the measured values (``quiet``, ``plateau``, ``coverage``,
      ``sem_ev``, each with a ``*_ok`` flag) and the reasons to stop (empty: go on).
    """
    last = history[-n_walkers:]
    quiet = len(last) >= n_walkers and all(r["full"] and not r["triggered"] for r in last)
    frames = sum(r["coverage_frames"] for r in last)
    coverage = sum(r["trusted_frames"] for r in last) / frames if frames else 0.0
    sems = [r["sem_ev"] for r in last if np.isfinite(r["sem_ev"])]
    sem = max(sems) if len(sems) == len(last) and sems else float("nan")
    w = criteria.plateau_window
    spreads = [r["mean_spread"] for r in history[-2 * w:]]
    change = float("nan")
    if len(spreads) == 2 * w:
        old, new = np.mean(spreads[:w]), np.mean(spreads[w:])
        change = float(abs(new - old) / max(abs(old), 1e-12))
    ok = {"quiet": quiet, "coverage": coverage >= criteria.coverage,
          "sem": bool(np.isfinite(sem) and sem <= criteria.sem_ev),
          "plateau": bool(np.isfinite(change) and change <= criteria.plateau_tol)}
    values = {"quiet": quiet, "coverage": coverage, "sem_ev": sem, "plateau_change": change,
              **{f"{k}_ok": v for k, v in ok.items()}}
    reasons = []
    if criteria.require and all(ok[c] for c in criteria.require):
        reasons.append("converged: " + ", ".join(_describe(c, values, criteria)
                                                 for c in criteria.require))
    if oracle_calls >= criteria.max_oracle_calls:
        reasons.append(f"reached max_oracle_calls = {criteria.max_oracle_calls}")
    if len(history) >= criteria.max_iterations:
        reasons.append(f"reached max_iterations = {criteria.max_iterations}")
    return values, reasons


def _describe(name: str, values: dict, c: StoppingCriteria) -> str:
    if name == "quiet":
        return "no trigger in a full round of walkers"
    if name == "coverage":
        return f"trust coverage {values['coverage']:.3f} >= {c.coverage}"
    if name == "sem":
        return (f"energy standard error {values['sem_ev'] * 1e3:.3g} <= "
                f"{c.sem_ev * 1e3:.3g} meV/atom")
    return f"spread change {values['plateau_change']:.3f} <= {c.plateau_tol}"
