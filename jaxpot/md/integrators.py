"""Integrators as ``Integrator(init, step)`` pairs whose state carries a neighbour list.

Every integrator here is velocity Verlet (NVE), BAOAB Langevin or velocity Verlet wrapped in a
Nosé–Hoover chain, written around one force evaluation per step::

    x ← drift(x, p)                       # positions stay unwrapped (JAX MD's space.free())
    nbrs ← neighbors.update(nbrs, x)      # Verlet skin: rebuilds only when an atom moved skin/2
    E, F ← energy_and_forces(potential)(params, nbrs.attach(system.replace(positions=x)))

Why jaxpot composes the step itself instead of calling ``jax_md.simulate.nve(...)[1]``:
JAX MD's ``apply_fn`` evaluates the force inside ``velocity_verlet`` at the drifted positions,
with no hook to refresh the neighbour list *at those positions* first (JAX MD's recipe updates
the list at the previous positions, one step behind) and no way to return the energy that the
same backward pass computes. The state must carry both, so the kick/drift lines (one line each)
are written here, while the non-trivial parts come from JAX MD: the Nosé–Hoover chain
(``jax_md.simulate.nose_hoover_chain``, Martyna–Tuckerman–Klein with Suzuki–Yoshida
substeps) and the Ornstein–Uhlenbeck "O" step of BAOAB (``jax_md.simulate.stochastic_step``).

Degrees of freedom: momenta start with zero total momentum and every integrator keeps it zero
(the Langevin noise is projected onto the zero-momentum subspace), so a system of N real atoms
has ``3N − 3`` kinetic degrees of freedom; temperatures use that count.

Padding atoms (``atom_mask == False``) have zero momenta, zero forces, and never move.

Units (ASE): positions Å, momenta amu·Å/t, forces eV/Å, energies eV, ``dt`` in the internal
time unit t ≈ 10.18 fs (pass ``dt_fs * units.fs``), ``kT`` in eV, ``friction`` in 1/t,
``tau`` in t.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax_md import simulate as jmd_simulate

from jaxpot import neighbors as nb
from jaxpot.md.forces import ForceProvider, provider
from jaxpot.neighbors import Neighbors
from jaxpot.potential import Potential
from jaxpot.system import System

__all__ = [
    "Integrator",
    "NVEState",
    "LangevinState",
    "NoseHooverState",
    "maxwell_boltzmann",
    "kinetic_energy",
    "temperature",
    "degrees_of_freedom",
    "remove_net_momentum",
    "nve",
    "langevin",
    "nose_hoover",
]

Params = Any


class Integrator(NamedTuple):
    """A pair of functions ``(init, step)``.

    Attributes:
      init: ``(key, system, neighbors, *, kT=None, momenta=None) -> state`` (host side).
      step: ``(state, *, stress=False) -> state`` (jittable; one time step). With
        ``stress=True`` the force evaluation of this step also fills ``state.stress``.
    """

    init: Callable[..., Any]
    step: Callable[..., Any]


@struct.dataclass
class NVEState:
    """State of a velocity-Verlet simulation.

    Attributes:
      system: the structure at the current positions (``system.positions``: ``[n, 3]`` Å,
        unwrapped); its own edge arrays are empty, the edges live in ``neighbors``.
      momenta: ``[n, 3]`` amu·Å/t; 0 on padding, total momentum 0.
      forces: ``[n, 3]`` eV/Å at ``system.positions``.
      energy: scalar potential energy, eV, at ``system.positions``.
      stress: ``[3, 3]`` virial stress, eV/Å³ (ASE sign, no kinetic part), from the last force
        evaluation that asked for it (``init`` and ``step(state, stress=True)``).
      neighbors: the :class:`~jaxpot.neighbors.Neighbors` list, updated every step.
      kT: scalar bath temperature as kT, eV. Thermostats read it every step, so a driver may
        change it between steps (a temperature ramp); velocity Verlet ignores it.
      pressure: scalar target pressure, eV/Å³. A placeholder for barostats (no integrator here
        reads it yet); it travels with the state so that NPT can ramp it like ``kT``.
    """

    system: System
    momenta: jax.Array
    forces: jax.Array
    energy: jax.Array
    stress: jax.Array
    neighbors: Neighbors
    kT: jax.Array
    pressure: jax.Array

    @property
    def positions(self) -> jax.Array:
        """``[n, 3]`` current positions, Å."""
        return self.system.positions


@struct.dataclass
class LangevinState(NVEState):
    """:class:`NVEState` plus the PRNG ``key`` of the Langevin noise."""

    key: jax.Array


@struct.dataclass
class NoseHooverState(NVEState):
    """:class:`NVEState` plus the JAX MD ``NoseHooverChain`` thermostat variables ``chain``."""

    chain: Any


# ------------------------------------------------------------------------------ observables


def degrees_of_freedom(atom_mask) -> int:
    """``3N − 3`` for N real atoms (at least 1); host side (needs a concrete mask)."""
    try:
        n = int(np.asarray(atom_mask).sum())
    except jax.errors.TracerArrayConversionError:
        raise ValueError(
            "degrees_of_freedom needs a concrete atom_mask (call integrator init on the host, "
            "outside jit)"
        ) from None
    return max(3 * n - 3, 1)


def _dof_traced(atom_mask: jax.Array) -> jax.Array:
    return jnp.maximum(3 * jnp.sum(atom_mask) - 3, 1)


def kinetic_energy(momenta: jax.Array, masses: jax.Array, atom_mask: jax.Array) -> jax.Array:
    """``Σ p²/2m`` over real atoms, eV.

    Args:
      momenta: ``[n, 3]`` amu·Å/t. masses: ``[n]`` amu. atom_mask: ``[n]`` bool.
    """
    ke = jnp.sum(momenta * momenta, axis=-1) / masses
    return 0.5 * jnp.sum(jnp.where(atom_mask, ke, 0.0))


def temperature(momenta: jax.Array, masses: jax.Array, atom_mask: jax.Array) -> jax.Array:
    """Instantaneous ``kT = 2K / (3N − 3)`` in eV (divide by ``units.kB`` for kelvin).

    The ``3N − 3`` degrees of freedom count N real atoms with zero total momentum.
    """
    return 2.0 * kinetic_energy(momenta, masses, atom_mask) / _dof_traced(atom_mask)


def remove_net_momentum(momenta: jax.Array, masses: jax.Array, atom_mask: jax.Array) -> jax.Array:
    """Subtract ``m_i P / M`` so the total momentum of the real atoms is zero; padding → 0.

    This is the projection onto ``Σ p = 0`` in the metric ``M⁻¹``; applied to Gaussian momenta
    with covariance ``kT·m`` it gives exactly the canonical distribution on that subspace.
    """
    m = jnp.where(atom_mask, masses, 0.0)[:, None]
    p = jnp.where(atom_mask[:, None], momenta, 0.0)
    total = jnp.sum(p, axis=0)
    return jnp.where(atom_mask[:, None], p - m * total / jnp.sum(m), 0.0)


def maxwell_boltzmann(key, masses, kT, atom_mask, *, force_temperature: bool = False):
    """Draw momenta from the Maxwell–Boltzmann distribution with zero total momentum.

    Args:
      key: a JAX PRNG key.
      masses: ``[n]`` amu.
      kT: target temperature as kT, eV.
      atom_mask: ``[n]`` bool; padding rows get zero momenta.
      force_temperature: rescale so the instantaneous ``2K/(3N−3)`` equals ``kT`` exactly.

    Returns:
      ``[n, 3]`` momenta, amu·Å/t, with ``Σ p = 0`` over real atoms; their kinetic energy
      follows the canonical distribution with ``3N − 3`` degrees of freedom.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = maxwell_boltzmann(jax.random.key(0), jnp.ones(4), 0.1, jnp.ones(4, bool))
      >>> bool(jnp.allclose(p.sum(0), 0.0, atol=1e-6))
      True
    """
    masses = jnp.asarray(masses)
    atom_mask = jnp.asarray(atom_mask, bool)
    xi = jax.random.normal(key, masses.shape + (3,), dtype=masses.dtype)
    p = jnp.sqrt(masses * kT)[:, None] * xi
    p = remove_net_momentum(p, masses, atom_mask)
    if force_temperature:
        t = temperature(p, masses, atom_mask)
        p = p * jnp.sqrt(kT / jnp.where(t > 0, t, 1.0))
    return p


# ------------------------------------------------------------------------------ force calls


def _strip_edges(system: System) -> System:
    dtype = system.positions.dtype
    return system.replace(
        senders=jnp.zeros((0,), jnp.int32),
        receivers=jnp.zeros((0,), jnp.int32),
        shifts=jnp.zeros((0, 3), dtype),
    )


def _initial_state(force: ForceProvider, key, system, neighbors, kT, momenta,
                   pressure=0.0) -> NVEState:
    """Momenta, first force/energy/stress evaluation (jitted), edges stripped."""
    system = _strip_edges(system)
    dtype = system.positions.dtype
    if momenta is None:
        if kT is None:
            momenta = jnp.zeros_like(system.positions)
        else:
            momenta = maxwell_boltzmann(key, system.masses, kT, system.atom_mask)
    momenta = jnp.where(system.atom_mask[:, None], jnp.asarray(momenta, dtype), 0)

    # A list from ``allocate`` is fresh at these positions; refresh (eagerly) only if stale, so
    # that this jitted first evaluation holds no copy of the rebuild code (faster compiles).
    if bool(nb.needs_rebuild(neighbors, system.positions, system.atom_mask, system.cell)):
        neighbors = nb.rebuild(neighbors, system)
    if bool(neighbors.overflow):
        raise ValueError(
            f"neighbour list overflowed (max_neighbors={neighbors.spec.max_neighbors}, "
            f"needed {int(neighbors.max_count)}); allocate it again for this structure"
        )
    # type(force): a provider subclass's own evaluation also gives the step-0 forces.
    first = jax.jit(lambda params, s: type(force)(force.potential, params).evaluate(s))
    e, f, sigma = first(force.params, neighbors.attach(system))
    return NVEState(system=system, momenta=momenta, forces=f, energy=e, stress=sigma,
                    neighbors=neighbors, kT=jnp.asarray(0.0 if kT is None else kT, dtype),
                    pressure=jnp.asarray(pressure, dtype))


def _kick_drift_kick(force: ForceProvider, state, dt, with_stress, drift):
    """Velocity Verlet around ``drift(x, p) -> (x, p, extra)`` (the A[O]A part)."""
    system = state.system
    inv_m = (1.0 / system.masses)[:, None]
    p = state.momenta + 0.5 * dt * state.forces
    x, p, extra = drift(system.positions, p, inv_m)
    out = force(system, state.neighbors, x, stress=with_stress)
    p = p + 0.5 * dt * out.forces
    sigma = state.stress if out.stress is None else out.stress
    new = state.replace(system=system.replace(positions=x), momenta=p, forces=out.forces,
                        energy=out.energy, neighbors=out.neighbors, stress=sigma)
    return new, extra


# ------------------------------------------------------------------------------ integrators


def nve(potential: Potential | ForceProvider, params: Params, dt: float) -> Integrator:
    """Velocity Verlet in the microcanonical (NVE) ensemble.

    Args:
      potential: the :class:`~jaxpot.Potential`, or a :class:`~jaxpot.md.ForceProvider`
        (then ``params`` is None).
      params: its parameters.
      dt: time step in internal units (``dt_fs * units.fs``).

    Returns:
      ``Integrator(init, step)``. ``init(key, system, neighbors, *, kT=None, momenta=None)``
      draws Maxwell–Boltzmann momenta at ``kT`` (eV) unless ``momenta`` ``[n, 3]`` are given
      (zero momenta if neither); ``neighbors`` comes from ``jaxpot.neighbors.allocate`` with a
      skin. ``step(state, *, stress=False)`` advances one step (jittable).

    Example:
      >>> from jaxpot import md, neighbors, potentials, units, System
      >>> pot = potentials.lennard_jones(3.4, 0.0104, 8.5)
      >>> # init, step = md.nve(pot, pot.init(None, None), 2 * units.fs)
    """
    force = provider(potential, params)

    def init_fn(key, system, neighbors, *, kT=None, momenta=None):
        return _initial_state(force, key, system, neighbors, kT, momenta)

    def drift(x, p, inv_m):
        return x + dt * p * inv_m, p, None

    def step_fn(state, *, stress: bool = False):
        return _kick_drift_kick(force, state, dt, stress, drift)[0]

    return Integrator(init_fn, step_fn)


def langevin(potential: Potential | ForceProvider, params: Params, dt: float, kT: float,
             friction: float) -> Integrator:
    """BAOAB Langevin dynamics in the canonical (NVT) ensemble.

    The splitting is JAX MD's ``nvt_langevin`` (Davidchack, Ouldridge & Tretyakov 2015): half
    kick, half drift, an exact Ornstein–Uhlenbeck step of length ``dt`` (JAX MD's
    ``stochastic_step``), half drift, neighbour update + force, half kick. jaxpot then projects
    the noise onto zero total momentum (mass-weighted, :func:`remove_net_momentum`) and keeps
    padding at rest, so the stationary kinetic energy is canonical with ``3N − 3`` degrees of
    freedom, matching :func:`temperature`.

    Like every BAOAB integrator, its configurations are sampled very accurately but the momenta
    at full steps (after the last half kick) carry an O(dt²) bias: their kinetic temperature is
    low by about ``dt²⟨ω²⟩/4`` (⟨ω²⟩ the mean squared Einstein frequency), e.g. ~1 % for a
    Lennard-Jones liquid at dt* = 0.01 (0.25 % at dt* = 0.005).

    Args:
      potential, params: the potential and its parameters (or a ForceProvider and None).
      dt: time step, internal units.
      kT: bath temperature, eV: the initial ``state.kT``; the step reads ``state.kT``, so a
        driver can ramp it.
      friction: γ, 1/internal time (``friction_per_fs / units.fs``).

    Returns:
      ``Integrator(init, step)``; ``init(key, system, neighbors, *, kT=None, momenta=None)``
      draws momenta at the bath ``kT`` by default and keeps a split of ``key`` for the noise.

    References:
      R. L. Davidchack, T. E. Ouldridge, M. V. Tretyakov, J. Chem. Phys. 142, 144114 (2015).
      B. Leimkuhler, C. Matthews, Appl. Math. Res. Express 2013, 34 (2013).
    """
    force = provider(potential, params)
    bath_kT = kT

    def init_fn(key, system, neighbors, *, kT=None, momenta=None):
        key, sub = jax.random.split(key)
        state = _initial_state(force, sub, system, neighbors,
                               bath_kT if kT is None else kT, momenta)
        state = state.replace(kT=jnp.asarray(bath_kT, state.kT.dtype))
        return LangevinState(**_fields(state), key=key)

    def step_fn(state, *, stress: bool = False):
        system = state.system
        masses, mask = system.masses, system.atom_mask

        def drift(x, p, inv_m):
            x = x + 0.5 * dt * p * inv_m
            ou = jmd_simulate.NVTLangevinState(x, p, state.forces, masses[:, None], state.key)
            ou = jmd_simulate.stochastic_step(ou, dt, state.kT, friction)
            p = remove_net_momentum(ou.momentum, masses, mask)
            x = x + 0.5 * dt * p * inv_m
            return x, p, ou.rng

        new, key = _kick_drift_kick(force, state, dt, stress, drift)
        return new.replace(key=key)

    return Integrator(init_fn, step_fn)


def nose_hoover(potential: Potential | ForceProvider, params: Params, dt: float, kT: float,
                tau: float, *, chain_length: int = 3, chain_steps: int = 2,
                sy_steps: int = 3) -> Integrator:
    """Nosé–Hoover chain thermostat (NVT), as JAX MD's ``nvt_nose_hoover``.

    Each step is: chain masses for the current ``state.kT`` (JAX MD's ``update_mass``), chain
    half step (JAX MD's ``nose_hoover_chain``, which rescales the momenta), velocity Verlet with
    the neighbour update, chain half step. The chain is coupled to ``3N − 3`` degrees of
    freedom (zero total momentum is preserved by the uniform rescaling), so ⟨2K⟩ = (3N − 3) kT.

    Args:
      potential, params: the potential and its parameters (or a ForceProvider and None).
      dt: time step, internal units.
      kT: bath temperature, eV (the initial ``state.kT``; the step reads ``state.kT``).
      tau: thermostat period, internal time units (``tau_fs * units.fs``; ~100 dt is typical).
      chain_length: number of thermostats in the chain.
      chain_steps: outer substeps per half step.
      sy_steps: Suzuki–Yoshida order (1, 3, 5 or 7).

    Returns:
      ``Integrator(init, step)``; ``init`` must run on the host (it counts the real atoms).

    References:
      G. J. Martyna, M. L. Klein, M. Tuckerman, J. Chem. Phys. 97, 2635 (1992).
      M. E. Tuckerman et al., J. Phys. A 39, 5629 (2006).
    """
    force = provider(potential, params)
    chain = jmd_simulate.nose_hoover_chain(dt, chain_length, chain_steps, sy_steps, tau)
    bath_kT = kT

    def init_fn(key, system, neighbors, *, kT=None, momenta=None):
        state = _initial_state(force, key, system, neighbors,
                               bath_kT if kT is None else kT, momenta)
        state = state.replace(kT=jnp.asarray(bath_kT, state.kT.dtype))
        dof = degrees_of_freedom(state.system.atom_mask)
        ke = kinetic_energy(state.momenta, state.system.masses, state.system.atom_mask)
        c = chain.initialize(dof, ke, bath_kT)
        c = c.set(tau=jnp.asarray(tau, ke.dtype))
        return NoseHooverState(**_fields(state), chain=c)

    def step_fn(state, *, stress: bool = False):
        system = state.system
        c = state.chain
        c = c.set(mass=chain.update_mass(c, state.kT).mass.astype(c.mass.dtype))
        p, c = chain.half_step(state.momenta, c, state.kT)
        state = state.replace(momenta=p)

        def drift(x, p, inv_m):
            return x + dt * p * inv_m, p, None

        state, _ = _kick_drift_kick(force, state, dt, stress, drift)
        c = c.set(kinetic_energy=kinetic_energy(state.momenta, system.masses, system.atom_mask))
        p, c = chain.half_step(state.momenta, c, state.kT)
        return state.replace(momenta=p, chain=c)

    return Integrator(init_fn, step_fn)


def _fields(state: NVEState) -> dict:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(NVEState)}
