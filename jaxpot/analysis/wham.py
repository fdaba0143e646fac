"""Potentials of mean force from umbrella sampling: WHAM, MBAR (pymbar), barriers and rates.

Inputs are the CV samples of K windows, ``samples[k]`` (CV units), each drawn with the bias
``U_k(s) = ½ κ_k (s − c_k)²`` (eV) at ``kT`` (eV). Outputs are free energies in eV on bin
centres, shifted so that the minimum is 0.

:func:`wham` solves the WHAM equations (Kumar et al., J. Comput. Chem. 13, 1011 (1992)) by
self-consistent iteration entirely in log space (``logsumexp``, no overflow at large biases)::

    ln P_b = ln Σ_k H_kb − ln Σ_k N_k exp((f_k − U_k(s_b)) / kT)
    f_k    = −kT ln Σ_b P_b exp(−U_k(s_b) / kT)

until the window free energies ``f_k`` change by less than ``tol`` (eV). The error bars come from
a bootstrap: each window's series is resampled in blocks of its statistical inefficiency (so
correlated MD samples are not counted as independent), WHAM is redone, and the standard
deviation over resamples is reported (each resample aligned like the estimate, on its minimum).

:func:`mbar_pmf` gives the same PMF through ``pymbar`` (MBAR weights, histogram free energy
surface), when pymbar is installed. :func:`barrier` and :func:`tst_rate` read a barrier and a
one-dimensional transition-state-theory rate off a PMF.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import logsumexp

from jaxpot import units

__all__ = ["PMF", "wham", "mbar_pmf", "barrier", "tst_rate"]


@dataclasses.dataclass
class PMF:
    """A potential of mean force on bins.

    Attributes:
      s: ``[n_bins]`` bin centres, CV units.
      edges: ``[n_bins + 1]`` bin edges.
      F: ``[n_bins]`` eV, 0 at the minimum; NaN for bins no window visited.
      error: ``[n_bins]`` eV, bootstrap standard deviation (NaN without bootstrap).
      f: ``[K]`` window free energies, eV (``f[0] = 0``).
      iterations: self-consistent iterations used.
    """

    s: np.ndarray
    edges: np.ndarray
    F: np.ndarray
    error: np.ndarray
    f: np.ndarray
    iterations: int


def _check(samples, centers, k, what):
    centers = np.asarray(centers, np.float64).reshape(-1)
    samples = [np.asarray(x, np.float64).reshape(-1) for x in samples]
    if len(samples) != centers.size:
        raise ValueError(f"{what}: {len(samples)} sample series for {centers.size} windows")
    for i, x in enumerate(samples):
        if x.size == 0 or not np.all(np.isfinite(x)):
            raise ValueError(f"{what}: window {i} has no samples or non-finite ones")
    k = np.broadcast_to(np.asarray(k, np.float64), centers.shape)
    return samples, centers, k


def _solve(hist, n_k, bias, kT, tol, max_iter):
    """``(ln P [B], f [K], iterations)`` from histograms ``[K, B]`` and biases ``[K, B]``."""
    with np.errstate(divide="ignore"):
        log_h = np.log(hist.sum(axis=0))
    log_n = np.log(n_k)
    f = np.zeros(len(n_k))
    for it in range(1, max_iter + 1):
        log_p = log_h - logsumexp(log_n[:, None] + (f[:, None] - bias) / kT, axis=0)
        f_new = -kT * logsumexp(log_p[None, :] - bias / kT, axis=1)
        f_new -= f_new[0]
        if np.max(np.abs(f_new - f)) < tol:
            return log_p, f_new, it
        f = f_new
    raise RuntimeError(f"wham: no convergence in {max_iter} iterations (last change "
                       f"{np.max(np.abs(f_new - f)):.3g} eV); check that neighbouring windows "
                       f"overlap")


def _pmf_from(log_p, widths, kT):
    F = -kT * (log_p - np.log(widths))
    F[~np.isfinite(F)] = np.nan
    return F - np.nanmin(F)


def _resample(x, rng, block):
    n = x.size
    starts = rng.integers(0, max(n - block, 0) + 1, size=-(-n // block))
    return np.concatenate([x[s:s + block] for s in starts])[:n]


def wham(samples, centers, k, kT: float, *, bins=50, range=None, tol: float = 1e-7,
         max_iter: int = 100000, n_bootstrap: int = 0, seed: int = 0) -> PMF:
    """PMF of a CV from umbrella windows by WHAM.

    Args:
      samples: K sequences of CV samples (one per window; ``[K, n]`` or ragged).
      centers: ``[K]`` window centres (CV units).
      k: spring constant(s), eV per CV unit², scalar or ``[K]``.
      kT: eV.
      bins: number of bins or ``[n_bins + 1]`` edges.
      range: ``(lo, hi)`` of the bins (default: the samples' range).
      tol: convergence of the window free energies, eV.
      max_iter: iteration cap.
      n_bootstrap: bootstrap resamples for the error bars (0: none).
      seed: seed of the bootstrap.

    Returns:
      A :class:`PMF`.
    """
    samples, centers, k = _check(samples, centers, k, "wham")
    allx = np.concatenate(samples)
    edges = np.histogram_bin_edges(allx, bins=bins, range=range)
    mid, widths = 0.5 * (edges[1:] + edges[:-1]), np.diff(edges)
    bias = 0.5 * k[:, None] * (mid[None, :] - centers[:, None]) ** 2

    def once(series):
        hist = np.stack([np.histogram(x, bins=edges)[0] for x in series]).astype(np.float64)
        log_p, f, it = _solve(hist, hist.sum(axis=1), bias, kT, tol, max_iter)
        return _pmf_from(log_p, widths, kT), f, it

    F, f, it = once(samples)
    error = np.full_like(F, np.nan)
    if n_bootstrap:
        from jaxpot.analysis.stats import statistical_inefficiency

        rng = np.random.default_rng(seed)
        blocks = [max(1, int(np.ceil(statistical_inefficiency(x, method="autocorrelation"))))
                  if x.size >= 16 else 1 for x in samples]
        boot = np.stack([once([_resample(x, rng, b) for x, b in zip(samples, blocks,
                                                                     strict=True)])[0]
                         for _ in np.arange(n_bootstrap)])
        error = np.nanstd(boot, axis=0, ddof=1)
    return PMF(s=mid, edges=edges, F=F, error=error, f=f, iterations=it)


def mbar_pmf(samples, centers, k, kT: float, *, bins=50, range=None) -> PMF:
    """The PMF through pymbar's MBAR (histogram free energy surface) on the same data.

    Arguments as :func:`wham`; ``error`` is pymbar's analytical uncertainty (which treats the
    samples as independent: subsample correlated series first). Requires ``pymbar`` ≥ 4.
    """
    import pymbar

    samples, centers, k = _check(samples, centers, k, "mbar_pmf")
    x = np.concatenate(samples)
    n_k = np.array([s.size for s in samples])
    edges = np.histogram_bin_edges(x, bins=bins, range=range)
    u_kn = 0.5 * k[:, None] * (x[None, :] - centers[:, None]) ** 2 / kT
    fes = pymbar.FES(u_kn, n_k, verbose=False)
    fes.generate_fes(np.zeros(x.size), x, fes_type="histogram",
                     histogram_parameters={"bin_edges": edges})
    mid = 0.5 * (edges[1:] + edges[:-1])
    occupied = np.histogram(x, bins=edges)[0] > 0
    out = fes.get_fes(mid[occupied], reference_point="from-lowest", uncertainty_method="analytical")
    F = np.full(mid.size, np.nan)
    err = np.full(mid.size, np.nan)
    F[occupied] = np.asarray(out["f_i"]) * kT
    err[occupied] = np.asarray(out["df_i"]) * kT
    F -= np.nanmin(F)
    f_k = np.asarray(fes.mbar.f_k) * kT
    return PMF(s=mid, edges=edges, F=F, error=err, f=f_k - f_k[0], iterations=0)


def _well(pmf: PMF, lo, hi):
    sel = np.flatnonzero((pmf.s >= lo) & (pmf.s <= hi) & np.isfinite(pmf.F))
    if sel.size == 0:
        raise ValueError(f"barrier: no PMF values in [{lo}, {hi}]")
    return sel


def barrier(pmf: PMF, reactant: tuple[float, float], product: tuple[float, float]) -> dict:
    """Barrier of the PMF between a reactant and a product basin (CV intervals).

    Returns:
      ``{"barrier": F(s‡) − min F over the reactant basin (eV), "reverse": F(s‡) − min F over
      the product basin, "s_min": reactant minimum, "s_ts": the top (the maximum of F between
      the two minima), "error": bootstrap error of the barrier (quadrature of the two bins'
      errors, NaN without bootstrap)}``.
    """
    r, p = _well(pmf, *reactant), _well(pmf, *product)
    i_r = r[np.nanargmin(pmf.F[r])]
    i_p = p[np.nanargmin(pmf.F[p])]
    a, b = sorted((i_r, i_p))
    between = np.arange(a, b + 1)
    i_t = between[np.nanargmax(pmf.F[between])]
    err = float(np.hypot(pmf.error[i_t], pmf.error[i_r]))
    return {"barrier": float(pmf.F[i_t] - pmf.F[i_r]), "reverse": float(pmf.F[i_t] - pmf.F[i_p]),
            "s_min": float(pmf.s[i_r]), "s_ts": float(pmf.s[i_t]), "error": err}


def tst_rate(pmf: PMF, kT: float, mass_amu: float, reactant: tuple[float, float],
             product: tuple[float, float]) -> dict:
    """One-dimensional transition-state-theory rate out of the reactant basin.

    ``k = √(kT / 2π m) · exp(−F(s‡)/kT) / ∫_reactant exp(−F(s)/kT) ds``, for a CV in Å with an
    effective mass ``m`` (amu; exact for a Cartesian coordinate, the reduced mass for a bond).

    Returns:
      ``{"rate_per_s": 1/s, "prefactor_per_s": the same without the Boltzmann factor of the
      barrier (1/s), "barrier": eV}``.
    """
    b = barrier(pmf, reactant, product)
    i_t = int(np.argmin(np.abs(pmf.s - b["s_ts"])))
    lo, hi = sorted((b["s_min"], b["s_ts"]))
    side = (pmf.s >= min(reactant[0], lo)) & (pmf.s <= max(reactant[1], hi))
    side &= (pmf.s < pmf.s[i_t]) if b["s_min"] < b["s_ts"] else (pmf.s > pmf.s[i_t])
    side &= np.isfinite(pmf.F)
    widths = np.diff(pmf.edges)
    z_r = np.sum(np.exp(-(pmf.F[side] - pmf.F[i_t]) / kT) * widths[side])  # Å, relative to s‡
    v = np.sqrt(kT / (2 * np.pi * mass_amu)) * units.fs * 1e15  # Å/s
    rate = v / z_r
    return {"rate_per_s": float(rate),
            "prefactor_per_s": float(rate * np.exp(b["barrier"] / kT)),
            "barrier": b["barrier"]}
