"""Martyna–Tobias–Klein isotropic NPT with Nosé–Hoover chains on the particles and the cell.

The extended system (Martyna, Tobias & Klein 1994; the reversible splitting of Tuckerman et
al. 2006) adds the logarithmic cell coordinate ``ε = ln(V)/3``, its momentum ``p_ε`` with mass
``W = (N_f + 3) kT τ_p²``, and a thermostat chain on the particles (period ``τ``) and another
on ``p_ε`` (period ``τ_p``)::

    ṙ = p/m + (p_ε/W) r           ṗ = F − (1 + 3/N_f)(p_ε/W) p − (p_ξ/Q) p
    V̇ = 3V p_ε/W                  ṗ_ε = 3V (P_int − P₀) + (3/N_f) Σ p²/m − (p_η/Q_η) p_ε

with ``P_int`` the instantaneous pressure (virial + kinetic). One step: chains ½dt (JAX MD's
``nose_hoover_chain``), ``p_ε`` ½dt, ``p`` ½dt (exact in the friction), ``r`` and the cell dt,
neighbours for the new positions and cell, force and virial, ``p`` ½dt, ``p_ε`` ½dt, chains
½dt. The conserved quantity

    H = K + U + p_ε²/(2W) + P₀V + Σ_chains [Σ_j p_j²/(2Q_j) + kT (N_j ξ_1 + Σ_{j≥2} ξ_j)]

(``N_j``: the chain's degrees of freedom, N_f for the particles, 1 for the cell) is logged as
``conserved_ev``; its drift measures the integration error.

References:
  G. J. Martyna, D. J. Tobias, M. L. Klein, J. Chem. Phys. 101, 4177 (1994).
  M. E. Tuckerman et al., J. Phys. A 39, 5629 (2006).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax_md import simulate as jmd_simulate

from jaxpot.md.forces import ForceProvider, provider
from jaxpot.md.integrators import (
    Integrator,
    NVEState,
    _dof_traced,
    _fields,
    _initial_state,
    degrees_of_freedom,
    kinetic_energy,
)
from jaxpot.potential import Potential

__all__ = ["MTKState", "mtk", "mtk_conserved"]


@struct.dataclass
class MTKState(NVEState):
    """:class:`~jaxpot.md.NVEState` plus the particle ``chain``, the cell's ``baro_chain`` and
    the cell momentum ``box_momentum`` (``p_ε``, eV·t)."""

    chain: Any
    baro_chain: Any
    box_momentum: jax.Array


def _sinhc(x):
    small = jnp.abs(x) < 1e-4
    safe = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 + x * x / 6.0, jnp.sinh(safe) / safe)


def _box_force(state, ke, volume):
    """``G_ε = 3V(P_int − P₀) + (3/N_f)·2K`` with ``3V P_int = 2K − V tr σ``."""
    n_f = _dof_traced(state.system.atom_mask)
    virial = -jnp.trace(state.stress) * volume
    return (1.0 + 3.0 / n_f) * 2.0 * ke + virial - 3.0 * volume * state.pressure


def _chain_energy(c, dof, kT):
    return (jnp.sum(c.momentum**2 / (2.0 * c.mass))
            + kT * (dof * c.position[0] + jnp.sum(c.position[1:])))


def _box_mass(state, tau_p):
    return (_dof_traced(state.system.atom_mask) + 3.0) * state.kT * tau_p**2


def mtk_conserved(state: MTKState, tau_p: float) -> jax.Array:
    """The extended-system energy ``H`` (eV) of an :class:`MTKState` (see the module doc)."""
    sysm = state.system
    ke = kinetic_energy(state.momenta, sysm.masses, sysm.atom_mask)
    volume = jnp.abs(jnp.linalg.det(sysm.cell))
    w = _box_mass(state, tau_p)
    n_f = _dof_traced(sysm.atom_mask)
    return (state.energy + ke + state.box_momentum**2 / (2.0 * w) + state.pressure * volume
            + _chain_energy(state.chain, n_f, state.kT)
            + _chain_energy(state.baro_chain, 1.0, state.kT))


def mtk(potential: Potential | ForceProvider, params: Any, dt: float, kT: float,
        pressure: float, tau: float, tau_p: float, *, chain_length: int = 3,
        chain_steps: int = 2, sy_steps: int = 3) -> Integrator:
    """Isotropic MTK barostat with Nosé–Hoover chains (NPT).

    Args:
      potential, params: the potential and its parameters (or a ForceProvider and None).
      dt: time step, internal units.
      kT: bath temperature, eV (the step reads ``state.kT``).
      pressure: target pressure, eV/Å³ (the step reads ``state.pressure``).
      tau: particle thermostat period, internal units (~100 dt).
      tau_p: barostat period, internal units (~1000 dt): sets the cell mass ``W``.
      chain_length, chain_steps, sy_steps: as :func:`jaxpot.md.nose_hoover`.

    Returns:
      ``Integrator(init, step)`` with :class:`MTKState`; ``init`` runs on the host.
    """
    force = provider(potential, params)
    chain = jmd_simulate.nose_hoover_chain(dt, chain_length, chain_steps, sy_steps, tau)
    bchain = jmd_simulate.nose_hoover_chain(dt, chain_length, chain_steps, sy_steps, tau_p)
    bath_kT, target_p = kT, pressure

    def init_fn(key, system, neighbors, *, kT=None, momenta=None):
        state = _initial_state(force, key, system, neighbors, bath_kT if kT is None else kT,
                               momenta, pressure=target_p)
        state = state.replace(kT=jnp.asarray(bath_kT, state.kT.dtype))
        dof = degrees_of_freedom(state.system.atom_mask)
        ke = kinetic_energy(state.momenta, state.system.masses, state.system.atom_mask)
        c = chain.initialize(dof, ke, bath_kT).set(tau=jnp.asarray(tau, ke.dtype))
        b = bchain.initialize(1, jnp.zeros_like(ke), bath_kT).set(
            tau=jnp.asarray(tau_p, ke.dtype))
        return MTKState(**_fields(state), chain=c, baro_chain=b,
                        box_momentum=jnp.zeros_like(ke))

    def thermostats(state, p, p_eps):
        sysm = state.system
        c, b = state.chain, state.baro_chain
        c = c.set(kinetic_energy=kinetic_energy(p, sysm.masses, sysm.atom_mask))
        c = c.set(mass=chain.update_mass(c, state.kT).mass.astype(c.mass.dtype))
        b = b.set(kinetic_energy=p_eps**2 / (2.0 * _box_mass(state, tau_p)))
        b = b.set(mass=bchain.update_mass(b, state.kT).mass.astype(b.mass.dtype))
        p, c = chain.half_step(p, c, state.kT)
        p_eps, b = bchain.half_step(p_eps, b, state.kT)
        return state.replace(chain=c, baro_chain=b), p, p_eps

    def kick(state, p, p_eps, forces, half):
        n_f = _dof_traced(state.system.atom_mask)
        v = p_eps / _box_mass(state, tau_p) * (1.0 + 3.0 / n_f) * half
        return p * jnp.exp(-v) + half * forces * jnp.exp(-0.5 * v) * _sinhc(0.5 * v)

    def step_fn(state, *, stress: bool = True):
        del stress  # always computed
        sysm = state.system
        mask, masses = sysm.atom_mask, sysm.masses
        state, p, p_eps = thermostats(state, state.momenta, state.box_momentum)
        volume = jnp.abs(jnp.linalg.det(sysm.cell))
        p_eps = p_eps + 0.5 * dt * _box_force(
            state, kinetic_energy(p, masses, mask), volume)
        p = kick(state, p, p_eps, state.forces, 0.5 * dt)
        v = p_eps / _box_mass(state, tau_p) * dt
        x = (sysm.positions * jnp.exp(v)
             + dt * p / masses[:, None] * jnp.exp(0.5 * v) * _sinhc(0.5 * v))
        x = jnp.where(mask[:, None], x, sysm.positions)
        moved = sysm.replace(cell=sysm.cell * jnp.exp(v))
        out = force(moved, state.neighbors, x, stress=True)
        state = state.replace(system=moved.replace(positions=x), forces=out.forces,
                              energy=out.energy, stress=out.stress, neighbors=out.neighbors)
        p = kick(state, p, p_eps, out.forces, 0.5 * dt)
        volume = jnp.abs(jnp.linalg.det(moved.cell))
        p_eps = p_eps + 0.5 * dt * _box_force(state, kinetic_energy(p, masses, mask), volume)
        state, p, p_eps = thermostats(state, p, p_eps)
        return state.replace(momenta=p, box_momentum=p_eps)

    return Integrator(init_fn, step_fn)
