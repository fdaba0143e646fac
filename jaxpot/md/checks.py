"""MD input checks (host side, before any jitted call) and blow-up detection between blocks.

Two kinds of failure must never pass quietly:

* **Bad input**: an element the model does not know, NaN or infinite parameters, masses that
  are zero, negative or NaN, a non-positive time step, friction or thermostat period, negative
  step counts or temperatures. :func:`check_inputs` refuses them with a ``ValueError`` that names
  the atom, parameter path or option, before anything is compiled (a NaN from inside ``jit``
  would say nothing about its cause).
* **A run that blows up with finite numbers**: velocity Verlet at a time step far too large for
  the fastest motion heats the system without bound (LJ argon at dt = 100 fs: total energy
  −6.7 eV → +455 eV, T → 10⁵ K) while every number stays finite. :class:`StabilityMonitor`
  looks at each block's log on the host and raises :class:`SimulationUnstable`.

Thresholds (:class:`StabilityMonitor`):

* NVE: ``max |E_tot(t) − E_tot(0)| / N`` above ``max(5 meV, 0.75 kT_ref)`` (half the mean
  kinetic energy per atom at the reference temperature, at least 5 meV). A healthy
  velocity-Verlet run keeps this error at O((ω dt)²) kT per atom, 10⁻⁶–10⁻³ eV/atom at the
  usual time steps; an error of half the thermal energy per atom means the trajectory no
  longer samples the ensemble it claims, and a blow-up crosses it within a block. The 5 meV
  floor keeps runs started near 0 K (whose kT_ref is tiny) from failing on rounding.
* Thermostatted runs: a kinetic temperature above ``max(20 T_ref, T_ref + 2000 K)``. For the
  canonical distribution with 3N − 3 ≥ 3 degrees of freedom the chance that the instantaneous
  temperature exceeds 20 times its mean is below 10⁻¹², so this is never a fluctuation. (NVE
  runs are judged by their energy only: a structure far from equilibrium may legitimately heat
  up a lot while conserving energy.)
* Any non-finite energy.

``T_ref`` is the largest of the bath temperatures of the run, the initial kinetic temperature
and 10 K.
"""

from __future__ import annotations

import math
import numbers

import jax
import numpy as np

from jaxpot import units
from jaxpot.potential import Potential, check_species

__all__ = ["SimulationUnstable", "StabilityMonitor", "check_inputs", "check_params_finite"]

# A stable MD step moves a thermal atom by well under this (1-2 % of a bond length), Å.
_SAFE_STEP_ANG = 0.05


class SimulationUnstable(ValueError):
    """The simulation blew up (energies exploding or non-finite); the message gives the cause.

    Attributes:
      step: the last logged step at which the run still looked sane (the blow-up happened
        after it, within the block that ends at ``step_failed``).
      step_failed: the first logged step at which the instability was detected.
      dt_suspect: True when the time step is the plausible cause.
    """

    exit_code = 3  # the CLI's code for a run that failed on valid input

    def __init__(self, message: str, *, step: int, step_failed: int, dt_suspect: bool):
        super().__init__(message)
        self.step, self.step_failed, self.dt_suspect = step, step_failed, dt_suspect


# ---------------------------------------------------------------------------------- inputs


def _positive(name: str, value, *, zero_ok: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"simulate: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        need = "a finite number ≥ 0" if zero_ok else "a finite number > 0"
        raise ValueError(f"simulate: {name} must be {need}, got {value!r}")
    return v


def _count(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral | np.integer):
        if not (isinstance(value, float) and value.is_integer()):
            raise ValueError(f"simulate: {name} must be an integer, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"simulate: {name} must be ≥ {minimum}, got {value!r}")
    return v


def check_params_finite(params, *, where: str = "model parameters") -> None:
    """Refuse NaN or infinite entries in a parameter pytree, naming the parameter path."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    for path, leaf in leaves:
        arr = np.asarray(leaf)
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.isfinite(arr).sum())
            name = jax.tree_util.keystr(path) or "(root)"
            raise ValueError(f"{where}: parameter {name} has {bad} non-finite value(s) "
                             f"(NaN or inf) out of {arr.size}; the model file is corrupt or "
                             "training diverged")


def _check_atoms(system, momenta, where: str) -> None:
    mask = np.asarray(system.atom_mask, bool)
    masses = np.asarray(system.masses, np.float64)
    numbers_ = np.asarray(system.species)
    bad = np.flatnonzero(mask & ~(np.isfinite(masses) & (masses > 0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: atom {i} (Z={int(numbers_[i])}) has mass {float(masses[i])!r} "
                         f"amu; masses must be finite and > 0 ({bad.size} bad atom(s))")
    positions = np.asarray(system.positions, np.float64)
    bad = np.flatnonzero(mask & ~np.all(np.isfinite(positions), axis=-1))
    if bad.size:
        raise ValueError(f"{where}: atom {int(bad[0])} has non-finite position "
                         f"{positions[bad[0]].tolist()} ({bad.size} bad atom(s))")
    if momenta is not None:
        p = np.asarray(momenta, np.float64)
        if p.shape != positions.shape:
            raise ValueError(f"{where}: momenta have shape {p.shape}, expected "
                             f"{positions.shape} (one row per atom slot)")
        bad = np.flatnonzero(mask & ~np.all(np.isfinite(p), axis=-1))
        if bad.size:
            raise ValueError(f"{where}: atom {int(bad[0])} has non-finite momentum")


def check_inputs(potential: Potential, params, system, *, ensemble: str, dt_fs, steps,
                 log_every, trajectory_every, friction_per_fs, tau_fs, momenta=None,
                 where: str = "simulate") -> tuple[float, int, int, int | None]:
    """Validate everything :func:`jaxpot.md.simulate` is given, on the host.

    Returns:
      ``(dt_fs, steps, log_every, trajectory_every)`` as clean Python numbers.

    Raises:
      ValueError: naming the option, atom, element or parameter path that is wrong.
    """
    dt_fs = _positive("dt_fs (the time step)", dt_fs)
    steps = _count("steps", steps, minimum=0)
    log_every = _count("log_every", log_every, minimum=1)
    if trajectory_every is not None:
        trajectory_every = _count("trajectory_every", trajectory_every, minimum=1)
        if trajectory_every % log_every:
            raise ValueError(f"simulate: trajectory_every ({trajectory_every}) must be a "
                             f"multiple of log_every ({log_every}): frames are taken at log "
                             "points")
    if ensemble == "langevin":
        _positive("friction_per_fs (Langevin friction)", friction_per_fs)
    if ensemble == "nose-hoover":
        _positive("tau_fs (Nosé–Hoover period)", tau_fs)
    if np.ndim(system.positions) != 2:
        raise ValueError(f"{where} runs one unbatched system, got positions of shape "
                         f"{np.shape(system.positions)}")
    _check_atoms(system, momenta, f"{where}: structure")
    mask = np.asarray(system.atom_mask, bool)
    check_species(potential, np.asarray(system.species)[mask], where=f"{where}: structure")
    check_params_finite(params, where=f"{where}: model {potential.config.get('name')!r}")
    return dt_fs, steps, log_every, trajectory_every


# ------------------------------------------------------------------------------- blow-ups


class StabilityMonitor:
    """Host-side check of each block's log; raises :class:`SimulationUnstable`.

    Args:
      ensemble: ``"nve"``, ``"langevin"`` or ``"nose-hoover"``.
      n_atoms: real atoms.
      dt_fs: the time step, fs.
      e0: total energy at step 0, eV.
      kT_ref: reference temperature as kT, eV (see the module docstring).
      min_mass: lightest real atom, amu (for the displacement per step).
      max_energy_error_per_atom: NVE tolerance, eV/atom; None for the default
        ``max(0.005, 0.75 kT_ref)``, ``inf`` to switch the energy check off.
    """

    def __init__(self, ensemble: str, n_atoms: int, dt_fs: float, e0: float, kT_ref: float,
                 min_mass: float, max_energy_error_per_atom: float | None = None):
        self.ensemble, self.n, self.dt_fs, self.e0 = ensemble, max(n_atoms, 1), dt_fs, e0
        self.kT_ref = max(kT_ref, 10.0 * units.kB)
        self.min_mass = min_mass
        self.tol = (max(0.005, 0.75 * self.kT_ref) if max_energy_error_per_atom is None
                    else float(max_energy_error_per_atom))
        t_ref = self.kT_ref / units.kB
        self.t_max = max(20.0 * t_ref, t_ref + 2000.0)
        self.pe0 = None
        self.last_good = 0

    def thermal_step(self) -> float:
        """Distance a thermal atom of the lightest mass moves in one step at ``T_ref``, Å."""
        v = math.sqrt(3.0 * self.kT_ref / self.min_mass)  # Å per internal time unit
        return v * self.dt_fs * units.fs

    def check(self, steps, pe, ke) -> None:
        """Check log rows ``steps [k]``, ``pe [k]``, ``ke [k]`` (eV) of one block."""
        steps, pe, ke = (np.asarray(a, np.float64) for a in (steps, pe, ke))
        if self.pe0 is None and pe.size:
            self.pe0 = float(pe[0])
        t_k = 2.0 * ke / (max(3 * self.n - 3, 1) * units.kB)
        bad = ~np.isfinite(pe) | ~np.isfinite(ke)
        what = np.where(bad, "non-finite energy", "")
        if self.ensemble == "nve":
            err = np.abs(pe + ke - self.e0) / self.n
            hot = ~bad & (err > self.tol)
            what = np.where(hot, "total energy not conserved", what)
            bad |= hot
        if self.ensemble != "nve":  # NVE: a hot but energy-conserving run is legitimate
            hot = ~bad & (t_k > self.t_max)
            what = np.where(hot, "temperature exploded", what)
            bad |= hot
        if not bad.any():
            if steps.size:
                self.last_good = int(steps[-1])
            return
        k = int(np.argmax(bad))
        if k > 0:
            self.last_good = int(steps[k - 1])
        raise self._error(str(what[k]), int(steps[k]), float(pe[k]), float(ke[k]), t_k[k])

    def _error(self, what, step, pe, ke, t_k) -> SimulationUnstable:
        moved = self.thermal_step()
        dt_suspect = moved > _SAFE_STEP_ANG
        e_tot = pe + ke
        facts = (f"{what} between steps {self.last_good} and {step} of a {self.ensemble} run "
                 f"at dt = {self.dt_fs:g} fs: total energy {self.e0:.6g} eV at step 0, "
                 f"{e_tot:.6g} eV at step {step} ({(e_tot - self.e0) / self.n:+.3g} eV/atom, "
                 f"{self.n} atoms), temperature {t_k:.4g} K")
        if self.ensemble == "nve" and what == "total energy not conserved":
            facts += f" (tolerance {self.tol:.3g} eV/atom)"
        dpe = (pe - self.pe0) / self.n if self.pe0 is not None else 0.0
        if dt_suspect:
            cause = (f"likely cause: the time step is too large: an atom of "
                     f"{self.min_mass:.3g} amu at {self.kT_ref / units.kB:.4g} K moves "
                     f"{moved:.3g} Å per step, stable runs move < {_SAFE_STEP_ANG} Å; "
                     f"try a smaller dt (at most ≈ {self.dt_fs * _SAFE_STEP_ANG / moved:.2g} fs)")
        elif math.isfinite(dpe) and dpe < -max(0.05, 5.0 * self.kT_ref):
            cause = (f"likely cause: the potential energy fell by {-dpe:.3g} eV/atom: atoms "
                     "collapse into a region where the model is unphysical (a hole, typical "
                     "of an ML potential far from its training data) or the starting "
                     "structure was far from equilibrium; not the time step")
        else:
            cause = (f"the time step does not look too large (thermal atoms move {moved:.2g} Å "
                     "per step); likely causes: forces that are not the gradient of the "
                     "energy, overlapping atoms in the starting structure, or a model that "
                     "is unstable for this structure")
        return SimulationUnstable(f"simulation unstable: {facts}; {cause}", step=self.last_good,
                                  step_failed=step, dt_suspect=dt_suspect)
