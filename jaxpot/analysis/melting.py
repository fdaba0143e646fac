"""Melting points: solid–liquid coexistence (interface velocity) and a heating curve.

The coexistence protocol (Morris et al., PRB 49, 3109 (1994), in its interface-velocity form):

1. :func:`half_melted_cell`: an elongated crystal; the atoms of one half are tethered to their
   lattice sites by a stiff harmonic restraint while the other half melts at a high
   temperature, then the whole cell is brought to a temperature near the expected melting point
   (restraint still on). Atoms are labelled solid or liquid by their number of solid-like
   bonds (:func:`jaxpot.analysis.order.solid_mask`; check it first with
   :func:`classifier_check`); the cell also records a Q̄6 cut between the two halves' medians,
   the older criterion (``threshold=`` in :func:`coexistence`).
2. :func:`coexistence`: from that cell (restraint off) one run per temperature, in the NPT
   ensemble by default (``ensemble="npt"``; ``"langevin"`` runs at the fixed volume of the cell
   instead), with the solid fraction computed inside the jitted loop at every log point
   (:func:`solid_fraction_observer`). Above T_m the interfaces advance into the crystal (the
   solid fraction falls), below it they recede.
3. :func:`melting_point`: the rate of change of the solid fraction (its slope, fitted while the
   fraction stays between 10 % and 90 %) against T; a weighted straight line; T_m is its zero,
   with the error propagated from the fit (and scaled up by the scatter when χ²/dof > 1).

:func:`heating_curve` ramps a perfect crystal's temperature and reports where its solid
fraction collapses: the superheating limit, an upper bound on T_m (a crystal without a surface
melts only well above T_m, typically 1.2 T_m), which shows why coexistence is needed.

Units: K, fs, Å, eV; rates in 1/ps (fraction of atoms per picosecond).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxpot import md
from jaxpot.analysis.order import solid_mask, steinhardt_q
from jaxpot.potential import Potential, sum_potentials
from jaxpot.system import System

__all__ = ["tether", "crystal_at", "half_melted_cell", "HalfMeltedCell", "solid_fraction_observer",
           "classifier_check",
           "coexistence", "CoexistenceResult", "melting_point", "interface_rate",
           "heating_curve", "HeatingCurve"]


def tether(reference_positions, mask, k: float) -> Potential:
    """Harmonic restraint ``½ k Σ_{i ∈ mask} |x_i − x_i⁰|²`` (eV; ``k`` in eV/Å²).

    Positions are compared as given (MD keeps them unwrapped), so it suits fixed-cell runs.
    """
    x0 = jnp.asarray(np.asarray(reference_positions, np.float64))
    m = jnp.asarray(np.asarray(mask, bool))

    def energy(params, system):
        d = system.positions - x0.astype(system.positions.dtype)
        return 0.5 * k * jnp.sum(jnp.where(m[:, None], d * d, 0.0))

    return Potential(lambda key, system: {}, energy, 0.0,
                     {"name": "tether", "kwargs": {"k": float(k)}})


def solid_fraction_observer(*, cutoff: float, threshold: float | None = None, l: int = 6,
                            dot_threshold: float = 0.7, min_bonds: int = 7):
    """An MD observer: ``{"solid_fraction": scalar, "q6_mean": scalar}`` at each log point.

    Args:
      cutoff: Steinhardt neighbour cutoff, Å (at most the potential's cutoff).
      threshold: ``None`` (default): an atom is solid when it has at least ``min_bonds``
        solid-like bonds (:func:`jaxpot.analysis.order.solid_mask`, robust near T_m). A
        number: the older scalar criterion, neighbour-averaged Q̄_l above ``threshold``.
      l: degree of the order parameter.
      dot_threshold, min_bonds: the bond criterion's parameters.
    """

    def observe(state, output):
        system = output.neighbors.attach(state.system)
        q = steinhardt_q(system, l=l, cutoff=cutoff)
        mask = system.atom_mask
        n = jnp.sum(mask)
        if threshold is None:
            solid = jnp.sum(solid_mask(system, l=l, cutoff=cutoff, dot_threshold=dot_threshold,
                                       min_bonds=min_bonds))
        else:
            solid = jnp.sum(jnp.where(mask, q > threshold, False))
        return {"solid_fraction": solid / n, "q6_mean": jnp.sum(jnp.where(mask, q, 0.0)) / n}

    return observe


def classifier_check(potential: Potential, params, crystal: System, *,
                     temperature_kelvin: float, steps: int, melt_temperature_kelvin: float = 2500.0,
                     melt_steps: int | None = None, dt_fs: float = 2.0, q_cutoff: float = 3.1,
                     seed: int = 0, **md_options) -> tuple[float, float]:
    """Solid fractions of a free crystal and of the liquid, both run at ``temperature_kelvin``.

    The check to pass before a coexistence study: the crystal (no restraint) and the melt (the
    same cell molten at ``melt_temperature_kelvin`` for ``melt_steps``, then quenched), each
    run ``steps`` steps (NPT at 0 GPa unless ``md_options`` names an ``ensemble``), must read
    ~1 and ~0 with the bond criterion of :func:`solid_fraction_observer`.

    Returns:
      ``(crystal_fraction, liquid_fraction)``: means over the second half of each run.
    """
    options = md_options if "ensemble" in md_options else dict(
        ensemble="npt", pressure_gpa=0.0, cell_dof="aniso") | md_options
    observer = solid_fraction_observer(cutoff=q_cutoff)
    melt = md.simulate(potential, params, crystal, ensemble="langevin", dt_fs=dt_fs,
                       temperature_kelvin=melt_temperature_kelvin,
                       steps=melt_steps or steps, log_every=max(1, (melt_steps or steps) // 4),
                       seed=seed + 1)
    out = []
    for k, start in enumerate((crystal, melt.final_system)):
        res = md.simulate(potential, params, start, dt_fs=dt_fs,
                          temperature_kelvin=temperature_kelvin, steps=steps,
                          log_every=max(1, steps // 20), seed=seed + 2 + k, observers=observer,
                          **options)
        f = np.asarray(res.log["solid_fraction"], np.float64)
        out.append(float(f[f.size // 2:].mean()))
    return out[0], out[1]


@dataclasses.dataclass
class HalfMeltedCell:
    """Output of :func:`half_melted_cell`.

    Attributes:
      system: the coexisting cell (positions of the last frame, no edges).
      momenta: ``[n, 3]`` amu·Å/t at the end of the preparation.
      solid_mask: ``[n]`` bool, the tethered (crystal) half.
      threshold: Q̄6 value separating the two halves (solid above).
      q6: ``[n]`` Q̄6 of each atom at the end.
      wall_s: seconds spent (compilation included).
    """

    system: System
    momenta: np.ndarray
    solid_mask: np.ndarray
    threshold: float
    q6: np.ndarray
    wall_s: float


def crystal_at(potential: Potential, params, crystal: System, *, temperature_kelvin: float,
               steps: int, dt_fs: float = 2.0, pressure_gpa: float = 0.0,
               isotropic: bool = True, seed: int = 0) -> System:
    """``crystal`` scaled to its mean NPT cell at ``temperature_kelvin`` (and pressure).

    Build the half-melted cell from this, not from the 0 K lattice: at the 0 K lattice the
    molten half is compressed by the crystal's thermal expansion (about 3 % in length for Cu
    near T_m) and recrystallises. NPT with each cell length free (stochastic cell rescaling,
    τ_p 400 fs) after 0.4 ps of Langevin; the cell lengths are averaged over the second half.

    Args:
      potential, params: the model.
      crystal: a periodic crystal (edges ignored).
      temperature_kelvin: where its density is wanted (the middle of the coexistence window).
      steps: NPT steps (a few ps is enough for a crystal).
      dt_fs: time step, fs.
      pressure_gpa: target pressure, GPa.
      isotropic: scale all three lengths by one factor (the mean volume), as for a cubic
        crystal; False keeps the three factors.
      seed: seed of the momenta and noise.

    Returns:
      The scaled :class:`~jaxpot.System` (positions scaled with the cell).
    """
    res = md.simulate(potential, params, crystal, ensemble="npt", dt_fs=dt_fs,
                      temperature_kelvin=temperature_kelvin, steps=steps,
                      log_every=max(1, min(10, steps // 20)), seed=seed,
                      pressure_gpa=pressure_gpa, cell_dof="aniso", thermalize_ps=0.4,
                      tau_p_fs=400.0, compressibility_per_gpa=0.01)
    half = len(res.log["cell_a"]) // 2
    lengths = np.array([res.log[k][half:].mean() for k in ("cell_a", "cell_b", "cell_c")])
    cell = np.asarray(crystal.cell, np.float64)
    scale = lengths / np.linalg.norm(cell, axis=1)
    if isotropic:
        scale = np.full(3, np.cbrt(np.prod(scale)))
    dtype = np.asarray(crystal.positions).dtype
    return crystal.replace(
        positions=jnp.asarray(np.asarray(crystal.positions, np.float64) * scale, dtype),
        cell=jnp.asarray(cell * scale[:, None], dtype))


def half_melted_cell(potential: Potential, params, system: System, *,
                     melt_temperature_kelvin: float, temperature_kelvin: float,
                     melt_steps: int, steps: int, dt_fs: float = 2.0, axis: int = 2,
                     k: float = 5.0, q_cutoff: float = 3.1, seed: int = 0) -> HalfMeltedCell:
    """Melt half of a crystal along ``axis`` with the other half tethered (fixed cell, Langevin).

    Args:
      potential, params: the model.
      system: a periodic crystal elongated along ``axis`` (edges ignored).
      melt_temperature_kelvin: where the free half melts (well above T_m).
      temperature_kelvin: where the cell is brought afterwards (near the expected T_m).
      melt_steps, steps: steps of the two stages.
      dt_fs: time step, fs.
      axis: the long axis; atoms with fractional coordinate ≥ 0.5 along it melt.
      k: tether stiffness, eV/Å².
      q_cutoff: Steinhardt neighbour cutoff, Å.
      seed: seed of the momenta and noise.
    """
    t0 = time.perf_counter()
    if not bool(np.all(np.asarray(system.pbc))):
        raise ValueError("half_melted_cell: the crystal must be periodic in all directions")
    if melt_temperature_kelvin <= temperature_kelvin:
        raise ValueError(f"half_melted_cell: melt_temperature_kelvin "
                         f"({melt_temperature_kelvin}) must exceed temperature_kelvin "
                         f"({temperature_kelvin})")
    positions = np.asarray(system.positions, np.float64)
    frac = np.linalg.solve(np.asarray(system.cell, np.float64).T, positions.T).T
    solid = (np.mod(frac[:, axis], 1.0) < 0.5) & np.asarray(system.atom_mask, bool)
    tethered = sum_potentials(potential, tether(positions, solid, k))
    tp = {"term0": params, "term1": {}}
    hot = md.simulate(tethered, tp, system, ensemble="langevin", dt_fs=dt_fs,
                      temperature_kelvin=melt_temperature_kelvin, steps=melt_steps,
                      log_every=max(1, melt_steps // 4), seed=seed)
    cool = md.simulate(tethered, tp, hot.final_system, ensemble="langevin", dt_fs=dt_fs,
                       temperature_kelvin=(melt_temperature_kelvin, temperature_kelvin),
                       steps=steps, log_every=max(1, steps // 4), seed=seed + 1,
                       momenta=hot.final_state.momenta)
    final = cool.final_system  # edges reach the potential's cutoff (≥ q_cutoff)
    q = np.asarray(steinhardt_q(final, cutoff=q_cutoff))
    real = np.asarray(final.atom_mask, bool)
    # Midpoint of the two halves' medians: robust to the liquid atoms that recrystallise on
    # the tethered crystal during the ramp (a fewest-misclassified cut would move up to exclude
    # them and then count a free crystal at T as liquid).
    q_solid, q_liquid = q[solid & real], q[~solid & real]
    if np.median(q_liquid) >= np.median(q_solid):
        raise ValueError(f"half_melted_cell: the free half did not melt (median Q6 "
                         f"{np.median(q_liquid):.3f} vs {np.median(q_solid):.3f} tethered); "
                         f"raise melt_temperature_kelvin or melt_steps")
    threshold = 0.5 * float(np.median(q_solid) + np.median(q_liquid))
    return HalfMeltedCell(final, np.asarray(cool.final_state.momenta), solid, threshold, q,
                          time.perf_counter() - t0)


def interface_rate(times_ps, fractions, *, low: float = 0.1, high: float = 0.9):
    """Slope of the solid fraction (1/ps) and its standard error, while it lies in (low, high).

    The window runs from the start to the first point outside ``(low, high)``. The error is
    the least-squares one, inflated by √g where g is the statistical inefficiency of the
    residuals (successive points are correlated).

    Returns:
      ``(rate, error, n_points)``; ``(nan, nan, n)`` with fewer than 4 points in the window.
    """
    from jaxpot.analysis.stats import statistical_inefficiency

    t = np.asarray(times_ps, np.float64)
    f = np.asarray(fractions, np.float64)
    outside = np.flatnonzero((f <= low) | (f >= high))
    end = int(outside[0]) if outside.size else f.size
    if end < 4:
        return float("nan"), float("nan"), end
    t, f = t[:end], f[:end]
    coef, cov = np.polyfit(t, f, 1, cov="unscaled")
    resid = f - np.polyval(coef, t)
    dof = max(end - 2, 1)
    var = float(resid @ resid) / dof
    try:
        g = max(1.0, float(statistical_inefficiency(resid))) if end >= 16 else 1.0
    except ValueError:
        g = 1.0
    return float(coef[0]), float(np.sqrt(cov[0, 0] * var * g)), end


def melting_point(temperatures, rates, errors) -> tuple[float, float]:
    """T_m (K) and its standard error from the zero of a weighted line ``rate(T)``.

    Args:
      temperatures: K. rates: d(solid fraction)/dt, 1/ps. errors: their standard errors.
        Non-finite entries are dropped; at least two points must remain, with rates of both
        signs or a clear trend.

    Raises:
      ValueError: fewer than two usable points, or a rate that does not fall with T.
    """
    t, r, e = (np.asarray(x, np.float64) for x in (temperatures, rates, errors))
    ok = np.isfinite(t) & np.isfinite(r) & np.isfinite(e) & (e > 0)
    t, r, e = t[ok], r[ok], e[ok]
    if t.size < 2:
        raise ValueError(f"melting_point: need at least two temperatures with a finite rate, "
                         f"got {t.size}")
    w = 1.0 / e**2
    a = np.stack([np.ones_like(t), t - t.mean()], axis=1)
    cov = np.linalg.inv(a.T @ (w[:, None] * a))
    b0, b1 = cov @ (a.T @ (w * r))
    if b1 >= 0:
        raise ValueError(f"melting_point: the solid fraction's rate does not fall with T "
                         f"(slope {b1:.3g} /ps/K); widen the temperature range or run longer")
    chi2 = float(np.sum(w * (r - b0 - b1 * (t - t.mean())) ** 2))
    if t.size > 2:
        cov = cov * max(1.0, chi2 / (t.size - 2))
    tm = t.mean() - b0 / b1
    grad = np.array([-1.0 / b1, b0 / b1**2])
    return float(tm), float(np.sqrt(grad @ cov @ grad))


@dataclasses.dataclass
class CoexistenceResult:
    """Output of :func:`coexistence`.

    Attributes:
      temperatures: ``[k]`` K.
      times_ps: ``[n_log]`` ps, the log points of every run.
      fractions: ``[k, n_log]`` solid fraction of each run over time.
      rates: ``[k]`` d(fraction)/dt, 1/ps (NaN when the window was too short).
      rate_errors: ``[k]`` standard errors, 1/ps.
      melting_point: T_m, K (NaN when the rates do not bracket a usable fit).
      melting_point_error: its standard error, K.
      wall_s: seconds spent in the runs (compilation included).
      logs: the MD log of each run (volume, pressure, energies, ...).
    """

    temperatures: np.ndarray
    times_ps: np.ndarray
    fractions: np.ndarray
    rates: np.ndarray
    rate_errors: np.ndarray
    melting_point: float
    melting_point_error: float
    wall_s: float
    logs: list


def coexistence(potential: Potential, params, cell: HalfMeltedCell,
                temperatures: Sequence[float], *, steps: int, ensemble: str = "npt",
                dt_fs: float = 2.0, log_every: int = 50, q_cutoff: float = 3.1,
                threshold: float | None = None, seed: int = 0,
                **md_options) -> CoexistenceResult:
    """Run the half-melted cell at each temperature and fit where the interface stands still.

    Args:
      potential, params: the model (no restraint).
      cell: from :func:`half_melted_cell`.
      temperatures: K, bracketing the expected T_m.
      steps: MD steps per temperature.
      ensemble: ``"npt"`` (default; pass ``pressure_gpa``, ``cell_dof`` ... through
        ``md_options``) or a fixed-volume one (``"langevin"``, ``"nose-hoover"``).
      dt_fs: time step, fs. log_every: steps between solid-fraction samples.
      q_cutoff: Steinhardt neighbour cutoff, Å.
      threshold: ``None`` (default) for the solid-like-bond criterion; a number for a cut on
        Q̄6 (e.g. ``cell.threshold``; see :func:`solid_fraction_observer`).
      seed: seed of run ``i`` is ``seed + i``.
      **md_options: passed to :func:`jaxpot.md.simulate`.
    """
    temps = np.asarray(temperatures, np.float64).reshape(-1)
    if temps.size < 2:
        raise ValueError("coexistence: give at least two temperatures")
    observer = solid_fraction_observer(cutoff=q_cutoff, threshold=threshold)
    t0 = time.perf_counter()
    fractions, rates, errors, logs = [], [], [], []
    times = None
    for i, temp in enumerate(temps):
        res = md.simulate(potential, params, cell.system, ensemble=ensemble, dt_fs=dt_fs,
                          temperature_kelvin=float(temp), steps=steps, log_every=log_every,
                          seed=seed + i, observers=observer, **md_options)
        times = res.log["time_fs"] / 1000.0
        frac = np.asarray(res.log["solid_fraction"], np.float64)
        rate, err, _ = interface_rate(times, frac)
        fractions.append(frac)
        rates.append(rate)
        errors.append(err)
        logs.append(res.log)
    try:
        tm, tm_err = melting_point(temps, rates, errors)
    except ValueError:
        tm, tm_err = float("nan"), float("nan")
    return CoexistenceResult(temps, times, np.stack(fractions), np.asarray(rates),
                             np.asarray(errors), tm, tm_err, time.perf_counter() - t0, logs)


@dataclasses.dataclass
class HeatingCurve:
    """Output of :func:`heating_curve`.

    Attributes:
      temperatures: ``[n_log]`` bath temperature at each log point, K.
      potential_energy: ``[n_log]`` eV per atom.
      fractions: ``[n_log]`` solid fraction.
      superheating: bath temperature where the solid fraction first falls below ½, K (NaN if
        it never does).
      wall_s: seconds spent (compilation included).
    """

    temperatures: np.ndarray
    potential_energy: np.ndarray
    fractions: np.ndarray
    superheating: float
    wall_s: float


def heating_curve(potential: Potential, params, system: System, *, t_start: float,
                  t_end: float, steps: int, threshold: float | None = None,
                  ensemble: str = "npt",
                  dt_fs: float = 2.0, log_every: int = 50, q_cutoff: float = 3.1,
                  seed: int = 0, **md_options) -> HeatingCurve:
    """Heat a perfect crystal linearly from ``t_start`` to ``t_end`` K and find where it melts.

    Args:
      potential, params: the model.
      system: a periodic perfect crystal.
      t_start, t_end: K. steps: length of the ramp.
      threshold: ``None`` (default) for the solid-like-bond criterion, or a Q̄6 cut.
      ensemble, dt_fs, log_every, q_cutoff, seed, md_options: as in :func:`coexistence`.
    """
    t0 = time.perf_counter()
    observer = solid_fraction_observer(cutoff=q_cutoff, threshold=threshold)
    res = md.simulate(potential, params, system, ensemble=ensemble, dt_fs=dt_fs,
                      temperature_kelvin=(float(t_start), float(t_end)), steps=steps,
                      log_every=log_every, seed=seed, observers=observer, **md_options)
    n = int(np.asarray(system.atom_mask).sum())
    temps = np.asarray(res.log["target_temperature_k"], np.float64)
    frac = np.asarray(res.log["solid_fraction"], np.float64)
    below = np.flatnonzero(frac < 0.5)
    sh = float(temps[below[0]]) if below.size else float("nan")
    return HeatingCurve(temps, np.asarray(res.log["potential_energy_ev"]) / n, frac, sh,
                        time.perf_counter() - t0)
