"""Constant pressure: stochastic cell rescaling (Bernetti & Bussi) on top of BAOAB Langevin.

One step of :func:`c_rescale` is the BAOAB Langevin step of :func:`jaxpot.md.langevin` with a
cell move between the last drift and the force evaluation::

    p ← p + ½dt F;  x ← x + ½dt p/m;  O (Ornstein–Uhlenbeck, exact);  x ← x + ½dt p/m
    P ← −σ_virial + Σ p pᵀ/(m V)       (pressure tensor of the state at the start of the step)
    dε ← −(β_T/τ_p)(P₀ − P − kT/V) dt + √(2 kT β_T dt/(V τ_p)) ξ      (per moving component)
    x ← x μ;  p ← p μ⁻ᵀ;  cell ← cell μ;  μ = exp(dε)                   (rows are vectors)
    neighbours updated for (x, cell);  F, E, σ at (x, cell);  p ← p + ½dt F

``ε`` is the logarithmic strain; isotropically ``dε`` is the change of ``ln V`` shared by the
moving axes. The ``kT/V`` term is the Jacobian of ``ε = ln V`` (Bernetti & Bussi 2020, eq. 5):
with it the volume samples the isothermal–isobaric distribution ``∝ V^N exp(−β(U + P₀V))``. The
virial stress of the previous force evaluation drives the move (GROMACS does the same), so one
force evaluation per step suffices. The barostat time constant ``τ_p`` sets how fast the volume
relaxes (not its distribution); ``β_T`` (the compressibility guess) only scales the mobility
together with ``τ_p``.

Cell degrees of freedom (``cell_dof``):

* ``"iso"``: one strain shared by the free axes (all three unless ``mask`` fixes some);
* ``"aniso"``: each diagonal component on its own (orthorhombic boxes);
* ``"full"``: the symmetric strain tensor (triclinic cells; shear stress relaxes to zero).

``mask`` (three booleans) fixes lattice directions, e.g. ``(True, True, False)`` keeps the
vacuum of a slab along z: no strain component involving a fixed axis moves.

Why not JAX MD's ``npt_nose_hoover``: it integrates fractional coordinates in its own
``space.periodic_general`` box, while jaxpot's potentials take Cartesian positions and a cell
and its neighbour list carries its own reference cell (``jaxpot.neighbors.update`` rebuilds
when a strain could bring a left-out pair within the cutoff, and flags ``overflow`` when the
bins no longer cover the cell). Stochastic cell rescaling is first order, needs no extended
Hamiltonian and samples the correct volume distribution; it is a few lines here.

References:
  M. Bernetti, G. Bussi, J. Chem. Phys. 153, 114107 (2020).
  V. Del Tatto, P. Raiteri, M. Bernetti, G. Bussi, Appl. Sci. 12, 1139 (2022).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax_md import simulate as jmd_simulate

from jaxpot.md.forces import ForceProvider, provider
from jaxpot.md.integrators import (
    Integrator,
    LangevinState,
    _fields,
    _initial_state,
    remove_net_momentum,
)
from jaxpot.potential import Potential

__all__ = ["NPTState", "CELL_DOF", "BAROSTATS", "c_rescale", "cell_mask", "pressure_tensor"]

CELL_DOF = ("iso", "aniso", "full")
BAROSTATS = ("c-rescale", "mtk")
_HI = jax.lax.Precision.HIGHEST


@struct.dataclass
class NPTState(LangevinState):
    """:class:`~jaxpot.md.LangevinState` whose ``system.cell`` moves; ``pressure`` is the
    target P₀ in eV/Å³ (a driver may ramp it) and ``stress`` is refreshed every step."""


def cell_mask(cell_dof: str, mask=(True, True, True)) -> np.ndarray:
    """``[3, 3]`` bool: which strain components move for ``cell_dof`` and the axis ``mask``.

    Raises:
      ValueError: unknown ``cell_dof``, a mask that is not three booleans, or one that fixes
        every axis.
    """
    if cell_dof not in CELL_DOF:
        raise ValueError(f"npt: cell_dof must be one of {CELL_DOF}, got {cell_dof!r}")
    m = np.asarray(mask)
    if m.shape != (3,) or m.dtype != bool:
        raise ValueError(f"npt: mask must be three booleans (free lattice directions), got "
                         f"{mask!r}")
    if not m.any():
        raise ValueError("npt: mask fixes every lattice direction; use NVT instead")
    free = np.outer(m, m)
    return free if cell_dof == "full" else free & np.eye(3, dtype=bool)


def pressure_tensor(stress: jax.Array, momenta: jax.Array, masses: jax.Array,
                    atom_mask: jax.Array, volume: jax.Array) -> jax.Array:
    """``[3, 3]`` instantaneous pressure tensor, eV/Å³: ``−σ_virial + Σ p pᵀ / (m V)``."""
    p = jnp.where(atom_mask[:, None], momenta, 0.0)
    kin = jnp.einsum("ia,ib->ab", p / masses[:, None], p, precision=_HI)
    return -stress + kin / volume


def _strain_increment(key, p_tensor, target, kT, volume, dt, tau, beta_t, free, iso):
    """Logarithmic strain increment ``dε`` ``[3, 3]`` (symmetric, zero where not ``free``)."""
    free = jnp.asarray(free)
    diag = jnp.diagonal(free)
    n_free = jnp.sum(diag)
    eye = jnp.eye(3, dtype=p_tensor.dtype)
    if iso:  # one strain for the free axes: dε_V on the free volume, split evenly
        mob = beta_t * n_free / 3.0
        p_free = jnp.sum(jnp.where(diag, jnp.diagonal(p_tensor), 0.0)) / n_free
        d_ln_v = (-(mob / tau) * (target - p_free - kT / volume) * dt
                  + jnp.sqrt(2.0 * kT * mob * dt / (volume * tau)) * jax.random.normal(key))
        return jnp.where(free, eye * d_ln_v / n_free, 0.0)
    mob = beta_t / 3.0
    xi = jax.random.normal(key, (3, 3), p_tensor.dtype)
    # symmetric noise: an off-diagonal strain is one variable driven from both entries (twice
    # the force), so fluctuation–dissipation gives it half the variance of a diagonal one
    xi = jnp.where(eye > 0, xi, 0.5 * (xi + xi.T))
    drive = -(mob / tau) * (target * eye - 0.5 * (p_tensor + p_tensor.T) - eye * kT / volume)
    de = drive * dt + jnp.sqrt(2.0 * kT * mob * dt / (volume * tau)) * xi
    return jnp.where(free, de, 0.0)


def _expm_sym(a: jax.Array) -> jax.Array:
    w, v = jnp.linalg.eigh(a)
    return jnp.matmul(v * jnp.exp(w)[None, :], v.T, precision=_HI)


def c_rescale(potential: Potential | ForceProvider, params: Any, dt: float, kT: float,
              friction: float, pressure: float, tau_p: float, *, compressibility: float,
              cell_dof: str = "iso", mask=(True, True, True)) -> Integrator:
    """Stochastic cell rescaling barostat with a BAOAB Langevin thermostat (NPT).

    Args:
      potential, params: the potential and its parameters (or a ForceProvider and None).
      dt: time step, internal units.
      kT: bath temperature, eV (initial ``state.kT``; the step reads ``state.kT``).
      friction: Langevin γ, 1/internal time.
      pressure: target pressure P₀, eV/Å³ (initial ``state.pressure``).
      tau_p: barostat relaxation time, internal units (~100–1000 dt).
      compressibility: isothermal compressibility guess β_T, Å³/eV (1/(eV/Å³)); only the ratio
        ``β_T/τ_p`` matters (the speed of the volume relaxation).
      cell_dof: ``"iso"``, ``"aniso"`` or ``"full"`` (see the module docstring).
      mask: three booleans, the lattice directions allowed to move.

    Returns:
      ``Integrator(init, step)``; the state is an :class:`NPTState` whose ``system.cell``
      changes every step; ``step`` always computes the stress (the barostat needs it).
    """
    force = provider(potential, params)
    free = cell_mask(cell_dof, mask)
    iso = cell_dof == "iso"
    bath_kT, target_p = kT, pressure

    def init_fn(key, system, neighbors, *, kT=None, momenta=None):
        key, sub = jax.random.split(key)
        state = _initial_state(force, sub, system, neighbors, bath_kT if kT is None else kT,
                               momenta, pressure=target_p)
        state = state.replace(kT=jnp.asarray(bath_kT, state.kT.dtype))
        return NPTState(**_fields(state), key=key)

    def step_fn(state, *, stress: bool = True):
        del stress  # always computed
        system = state.system
        masses, mask_a = system.masses, system.atom_mask
        inv_m = (1.0 / masses)[:, None]
        key, k_ou, k_cell = jax.random.split(state.key, 3)
        volume = jnp.abs(jnp.linalg.det(system.cell))
        p_tensor = pressure_tensor(state.stress, state.momenta, masses, mask_a, volume)
        p = state.momenta + 0.5 * dt * state.forces
        x = system.positions + 0.5 * dt * p * inv_m
        ou = jmd_simulate.NVTLangevinState(x, p, state.forces, masses[:, None], k_ou)
        p = remove_net_momentum(jmd_simulate.stochastic_step(ou, dt, state.kT, friction).momentum,
                                masses, mask_a)
        x = x + 0.5 * dt * p * inv_m
        de = _strain_increment(k_cell, p_tensor, state.pressure, state.kT, volume, dt, tau_p,
                               compressibility, free, iso)
        mu = _expm_sym(de)
        x = jnp.where(mask_a[:, None], jnp.matmul(x, mu, precision=_HI), x)
        p = jnp.matmul(p, jnp.linalg.inv(mu).T, precision=_HI)
        moved = system.replace(cell=jnp.matmul(system.cell, mu, precision=_HI))
        out = force(moved, state.neighbors, x, stress=True)
        p = p + 0.5 * dt * out.forces
        return state.replace(system=moved.replace(positions=x), momenta=p, forces=out.forces,
                             energy=out.energy, stress=out.stress, neighbors=out.neighbors,
                             key=key)

    return Integrator(init_fn, step_fn)


def check_npt_options(system, *, pressure_gpa, barostat, cell_dof, mask, tau_p_fs,
                      compressibility_per_gpa, friction_per_fs) -> None:
    """Refuse NPT options that cannot work, naming the option (host side).

    Raises:
      ValueError: a non-periodic cell, an unknown barostat or ``cell_dof``, a bad mask, or a
        non-finite / non-positive time constant, compressibility or friction.
    """
    if not bool(np.all(np.asarray(system.pbc))):
        pbc = np.asarray(system.pbc).tolist()
        raise ValueError(f"simulate: NPT needs a fully periodic cell (pbc={pbc}); put a "
                         "slab's vacuum inside the cell and fix that direction with cell_mask")
    if barostat not in BAROSTATS:
        raise ValueError(f"simulate: barostat must be one of {BAROSTATS}, got {barostat!r}")
    cell_mask(cell_dof, mask)
    if barostat == "mtk" and (cell_dof != "iso" or not all(bool(m) for m in mask)):
        raise ValueError(f"simulate: the MTK barostat is isotropic only here (cell_dof "
                         f"{cell_dof!r}, mask {tuple(mask)}); use barostat='c-rescale' for "
                         "anisotropic, full-cell or masked NPT")
    for name, v in (("pressure_gpa", pressure_gpa),):
        if not np.isfinite(float(v)):
            raise ValueError(f"simulate: {name} must be finite, got {v!r}")
    for name, v in (("tau_p_fs (barostat time)", tau_p_fs),
                    ("compressibility_per_gpa", compressibility_per_gpa),
                    ("friction_per_fs (Langevin friction)", friction_per_fs)):
        if not (np.isfinite(float(v)) and float(v) > 0):
            raise ValueError(f"simulate: {name} must be a finite number > 0, got {v!r}")
