"""Calibrating predicted spreads, and measuring whether they mean anything.

A model's raw spread (ensemble std, GP std) is rarely the size of its error: deep ensembles are
usually overconfident. :func:`fit_scale` finds the single factor ``a`` that makes the stated
``a·σ`` intervals cover the errors of a validation set as a Gaussian would (68.3 % within 1σ,
95.4 % within 2σ: the factor minimises the larger of the two misses). One factor per quantity
(energies per structure, force components) keeps the ranking, so the correlation figures below
do not change with calibration, only the coverage does.

:func:`uncertainty_metrics` measures the rest:

- Spearman rank correlation of σ and |error| per force component, per atom (``|ΔF_i|``
  against σ_i) and per structure (force MAE against mean σ);
- coverage of the 1σ and 2σ intervals (force components, and structure energies);
- AUROC of telling, from the mean σ alone, the structures whose force MAE is above the median
  from the others (0.5: no better than chance; 1: perfect).
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_scale", "coverage", "auroc", "spearman", "uncertainty_metrics",
           "COVERAGE_1SIGMA", "COVERAGE_2SIGMA"]

COVERAGE_1SIGMA = 0.6827
COVERAGE_2SIGMA = 0.9545


def coverage(errors, sigma, k: float = 1.0) -> float:
    """Fraction of ``|errors| <= k·sigma`` (NaN for no data)."""
    e, s = np.abs(np.ravel(errors)), np.ravel(sigma)
    return float(np.mean(e <= k * s)) if e.size else float("nan")


def fit_scale(errors, sigma) -> float:
    """The factor ``a`` whose ``a·σ`` intervals cover the errors as a Gaussian's would.

    Minimises ``max(|cov₁(a) − 0.683|, |cov₂(a) − 0.954|)`` over ``a`` (a search over the
    candidate ratios |error|/σ, exact for the empirical distribution).

    Args:
      errors: signed or absolute errors, any shape.
      sigma: predicted stds, broadcastable to ``errors``.

    Raises:
      ValueError: no finite pair with σ > 0.
    """
    e = np.abs(np.ravel(np.asarray(errors, np.float64)))
    s = np.ravel(np.broadcast_to(np.asarray(sigma, np.float64), np.shape(errors)))
    ok = np.isfinite(e) & np.isfinite(s) & (s > 0)
    if not ok.any():
        raise ValueError("fit_scale: no finite error with a positive predicted sigma")
    z = np.sort(e[ok] / s[ok])
    n = z.size
    candidates = np.unique(np.concatenate([z, z / 2.0]))
    cov1 = np.searchsorted(z, candidates, side="right") / n
    cov2 = np.searchsorted(z, 2.0 * candidates, side="right") / n
    miss = np.maximum(np.abs(cov1 - COVERAGE_1SIGMA), np.abs(cov2 - COVERAGE_2SIGMA))
    return float(max(candidates[int(np.argmin(miss))], 1e-12))


def spearman(a, b) -> float:
    """Spearman's rank correlation (NaN with fewer than 3 pairs or a constant input)."""
    a, b = np.ravel(a), np.ravel(b)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def auroc(scores, positive) -> float:
    """Area under the ROC curve of ``scores`` separating ``positive`` (bool) from the rest:
    the probability that a random positive scores above a random negative (ties count half).
    NaN when either class is empty."""
    from scipy.stats import rankdata

    scores, positive = np.ravel(scores), np.ravel(positive).astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def uncertainty_metrics(rows: list[dict]) -> dict:
    """Ranking and coverage figures of per-structure predictions.

    Args:
      rows: one dict per structure with ``force_error [n, 3]`` (eV/Å, predicted − reference),
        ``forces_std [n]`` (eV/Å, per atom), and optionally ``energy_error`` (eV) and
        ``energy_std`` (eV).

    Returns:
      ``spearman_component``, ``spearman_atom``, ``spearman_structure``,
      ``coverage_1sigma``/``coverage_2sigma`` (force components),
      ``energy_coverage_1sigma``/``energy_coverage_2sigma``, ``energy_spearman``,
      ``auroc_high_error`` and ``n_structures`` (NaN where undefined).
    """
    f_err = [np.asarray(r["force_error"]) for r in rows if r.get("force_error") is not None]
    f_std = [np.asarray(r["forces_std"]) for r in rows if r.get("force_error") is not None]
    out = {"n_structures": len(rows)}
    if f_err:
        comp_e = np.concatenate([np.abs(e).ravel() for e in f_err])
        comp_s = np.concatenate([np.repeat(s, 3) for s in f_std])
        atom_e = np.concatenate([np.linalg.norm(e, axis=-1) for e in f_err])
        atom_s = np.concatenate(f_std)
        mae = np.array([np.mean(np.abs(e)) for e in f_err])
        mean_s = np.array([np.mean(s) for s in f_std])
        out.update(spearman_component=spearman(comp_s, comp_e),
                   spearman_atom=spearman(atom_s, atom_e),
                   spearman_structure=spearman(mean_s, mae),
                   coverage_1sigma=coverage(comp_e, comp_s, 1.0),
                   coverage_2sigma=coverage(comp_e, comp_s, 2.0),
                   auroc_high_error=auroc(mean_s, mae > np.median(mae)))
    e_rows = [r for r in rows if r.get("energy_error") is not None
              and r.get("energy_std") is not None]
    if e_rows:
        ee = np.array([abs(float(r["energy_error"])) for r in e_rows])
        es = np.array([float(r["energy_std"]) for r in e_rows])
        out.update(energy_coverage_1sigma=coverage(ee, es, 1.0),
                   energy_coverage_2sigma=coverage(ee, es, 2.0),
                   energy_spearman=spearman(es, ee))
    return out
