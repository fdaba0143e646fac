"""Relaxation of positions and the cell together under a target stress (jitted FIRE).

The degrees of freedom are those of ASE's ``FrechetCellFilter``: the positions ``X`` in the
reference (undeformed) cell and the matrix logarithm ``L`` of the deformation gradient
``F = expm(L)``, so that the current cell is ``cell₀ Fᵀ`` and the positions are ``X Fᵀ``
(rows are vectors, as everywhere in jaxpot). The generalised forces are the filter's:

* on atoms: ``f F`` (Cartesian forces pulled back to the reference frame);
* on the cell: the virial ``W = −V (σ − σ_target)`` (``σ`` the virial stress, ASE's sign, and
  ``σ_target = −p I`` for a scalar pressure), masked, turned into the gradient with respect to
  ``F`` (``W F⁻ᵀ``) and then to ``L`` through the adjoint of the Fréchet derivative of the
  matrix exponential (``jax.vjp`` of ``jax.scipy.linalg.expm``), divided by the number of
  atoms (ASE's ``exp_cell_factor``). Without a mask this is ``−∂H/∂L / N`` with the enthalpy
  ``H = E + pV``.

FIRE itself follows ASE's ``FIRE`` step for step (the same constants, the velocity mixing, the
restart on ``v·f ≤ 0``, a cap on the norm of the whole step), so that a relaxation here and
``FIRE(FrechetCellFilter(atoms))`` in ASE follow the same path. Convergence is ASE's test: the
largest row norm of the generalised forces (atoms and the three cell rows) below ``fmax``.

Why not JAX MD's ``fire_descent``: it works on positions only (no cell), its constants and
step cap differ from ASE's, and it has no convergence test; matching ASE's relaxed lattice
parameters to 1e-4 Å needs the same algorithm.

The loop runs jitted ``lax.while_loop`` segments. The neighbour list is rebuilt at every step
(the cell moves every step, so a position-only skin test would not be enough); a step whose
rebuilt list overflowed (capacity, or a cell deformed past the image shifts the list covers) is
discarded, the list is reallocated on the host at the last good state (cell included) and the
step is computed again: no step ever uses a list built for another cell.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot import neighbors as nb
from jaxpot import units
from jaxpot.md.blocks import NeighborKeeper, NeighborListError
from jaxpot.md.checks import check_params_finite
from jaxpot.potential import Potential, check_species, energy_forces_stress
from jaxpot.potentials.pair import shared_branch_axis
from jaxpot.system import System

__all__ = ["FireConfig", "RelaxState", "cell_mask", "current_system", "initial_state", "relax",
           "target_stress"]

_HI = jax.lax.Precision.HIGHEST


class FireConfig(NamedTuple):
    """FIRE constants (ASE's defaults and names, internal units with unit masses).

    Attributes:
      dt_start: initial time step.
      dt_max: largest time step.
      maxstep: largest norm of one whole step (all coordinates together), Å.
      n_min: steps with ``v·f > 0`` before the time step may grow.
      f_inc, f_dec: time-step growth and cut factors.
      alpha_start, f_alpha: velocity-mixing coefficient and its decay.
    """

    dt_start: float = 0.1
    dt_max: float = 1.0
    maxstep: float = 0.2
    n_min: int = 5
    f_inc: float = 1.1
    f_dec: float = 0.5
    alpha_start: float = 0.1
    f_alpha: float = 0.99


class RelaxState(NamedTuple):
    """State of a cell relaxation (a pytree; a leading axis batches replicas).

    Attributes:
      reference_positions: ``[n_atoms, 3]`` positions ``X`` in the reference cell, Å.
      log_deformation: ``[3, 3]`` ``N L`` (ASE's cell coordinate, ``N`` real atoms); the cell
        is ``cell₀ expm(L)ᵀ``.
      velocity: ``[n_atoms + 3, 3]`` FIRE velocity over atoms and the three cell rows.
      forces: ``[n_atoms + 3, 3]`` generalised forces at the current state.
      energy: potential energy, eV.
      stress: ``[3, 3]`` virial stress, eV/Å³ (ASE sign).
      dt, alpha: FIRE time step and mixing coefficient.
      n_positive: steps since the last restart (ASE's ``Nsteps``).
      started: False before the first step (ASE's ``vel is None``).
      steps: FIRE steps taken.
      evaluated: False until the forces of the starting structure are computed (the first
        iteration of a segment then evaluates instead of stepping).
      neighbors: the list, rebuilt at the current positions and cell.
    """

    reference_positions: jax.Array
    log_deformation: jax.Array
    velocity: jax.Array
    forces: jax.Array
    energy: jax.Array
    stress: jax.Array
    dt: jax.Array
    alpha: jax.Array
    n_positive: jax.Array
    started: jax.Array
    steps: jax.Array
    evaluated: jax.Array
    neighbors: nb.Neighbors


def target_stress(pressure_gpa: float = 0.0, stress_gpa=None) -> np.ndarray:
    """The target stress ``[3, 3]`` in eV/Å³ (ASE sign) from a pressure or a full tensor.

    Args:
      pressure_gpa: hydrostatic pressure, GPa (positive compresses); the target is ``−p I``.
      stress_gpa: optional full target stress, GPa, ASE's sign (negative under compression):
        a ``[3, 3]`` symmetric matrix or Voigt ``[6]`` (xx, yy, zz, yz, xz, xy). Excludes a
        non-zero ``pressure_gpa``.

    Raises:
      ValueError: a non-finite value, a wrong shape, an asymmetric tensor, or both given.
    """
    if not np.isfinite(pressure_gpa):
        raise ValueError(f"relax: pressure must be finite, got {pressure_gpa!r} GPa")
    if stress_gpa is None:
        return -float(pressure_gpa) * units.GPa * np.eye(3)
    if pressure_gpa != 0:
        raise ValueError("relax: give a pressure or a target stress tensor, not both")
    s = np.asarray(stress_gpa, np.float64)
    if s.shape == (6,):
        xx, yy, zz, yz, xz, xy = s
        s = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if s.shape != (3, 3) or not np.all(np.isfinite(s)) or not np.allclose(s, s.T):
        raise ValueError(f"relax: target stress must be a finite symmetric 3x3 or Voigt 6 "
                         f"array (GPa), got {np.asarray(stress_gpa).tolist()!r}")
    return s * units.GPa


def cell_mask(mask=None) -> np.ndarray:
    """A ``[3, 3]`` float mask of the strain components that may relax (1) or stay (0).

    Args:
      mask: None (all free), ASE's Voigt ``[6]`` booleans (xx, yy, zz, yz, xz, xy) or a
        ``[3, 3]`` boolean matrix.

    Raises:
      ValueError: any other shape.
    """
    if mask is None:
        return np.ones((3, 3))
    m = np.asarray(mask, bool)
    if m.shape == (6,):
        xx, yy, zz, yz, xz, xy = m
        m = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if m.shape != (3, 3):
        raise ValueError(f"relax: cell mask must have shape (6,) or (3, 3), got {m.shape}")
    return m.astype(np.float64)


def _expm(a: jax.Array) -> jax.Array:
    """Matrix exponential of a ``[3, 3]`` matrix: scaling by 2⁻¹⁰, Taylor to order 12, ten
    squarings. Relative error ~1e-15 for ``|a| < 10`` (log-strains are far smaller); a
    handful of unrolled 3x3 products compiles much faster than ``jax.scipy.linalg.expm``."""
    small = a / 1024.0
    term = jnp.eye(3, dtype=a.dtype)
    total = term
    for k in range(1, 13):
        term = jnp.matmul(term, small, precision=_HI) / k
        total = total + term
    for _ in range(10):
        total = jnp.matmul(total, total, precision=_HI)
    return total


def _deformation(log_deformation, mask):
    """``F`` from ``L``; masked components of ``F − I`` stay 0 (ASE's ``set_positions``)."""
    eye = jnp.eye(3, dtype=log_deformation.dtype)
    return eye + (_expm(log_deformation) - eye) * mask.T


def _evaluate(potential, params, ref, state_xl, nbrs, opts, hydrostatic):
    """Energy, generalised forces ``[n+3, 3]``, stress and the list at ``(X, L)``.

    ``opts`` holds the traced ``mask`` and ``target`` stress (``[3, 3]`` each)."""
    x_ref, log_f = state_xl
    mask, target = opts["mask"], opts["target"]
    n_real = jnp.sum(ref.atom_mask).astype(log_f.dtype)
    f_mat = _deformation(log_f, mask)
    system = ref.replace(positions=jnp.matmul(x_ref, f_mat.T, precision=_HI),
                         cell=jnp.matmul(ref.cell, f_mat.T, precision=_HI))
    nbrs = nb.rebuild(nbrs, system)
    e, f, sigma = energy_forces_stress(potential)(params, nbrs.attach(system))
    volume = system.volume
    virial = -volume * (sigma - target)
    if hydrostatic:
        virial = jnp.eye(3, dtype=virial.dtype) * jnp.trace(virial) / 3.0
    virial = virial * mask
    grad_f = jnp.linalg.solve(f_mat, virial.T).T  # W F^-T
    _, vjp = jax.vjp(_expm, log_f)
    cell_force = vjp(grad_f)[0] * mask / n_real
    gen = jnp.concatenate([jnp.matmul(f, f_mat, precision=_HI), cell_force], axis=0)
    return e, gen, sigma, nbrs


def _fire_step(state: RelaxState, cfg: FireConfig):
    """ASE's FIRE update of the velocity and the coordinates (no force evaluation)."""
    g = state.forces
    v = jnp.where(state.started, state.velocity, 0.0)
    vf, g2, v2 = jnp.vdot(g, v), jnp.vdot(g, g), jnp.vdot(v, v)
    downhill = state.started & (vf > 0.0)
    mixed = (1.0 - state.alpha) * v + state.alpha * g / jnp.sqrt(
        jnp.where(g2 > 0, g2, 1.0)) * jnp.sqrt(v2)
    grow = downhill & (state.n_positive > cfg.n_min)
    restart = state.started & ~downhill
    dt = jnp.where(grow, jnp.minimum(state.dt * cfg.f_inc, cfg.dt_max),
                   jnp.where(restart, state.dt * cfg.f_dec, state.dt))
    alpha = jnp.where(grow, state.alpha * cfg.f_alpha,
                      jnp.where(restart, cfg.alpha_start, state.alpha))
    n_pos = jnp.where(downhill, state.n_positive + 1, jnp.where(restart, 0, state.n_positive))
    v = jnp.where(downhill, mixed, 0.0) + dt * g
    dr = dt * v
    norm = jnp.sqrt(jnp.vdot(dr, dr))
    dr = jnp.where(norm > cfg.maxstep, dr * cfg.maxstep / jnp.where(norm > 0, norm, 1.0), dr)
    n = state.reference_positions.shape[0]
    return state._replace(reference_positions=state.reference_positions + dr[:n],
                          log_deformation=state.log_deformation + dr[n:], velocity=v, dt=dt,
                          alpha=alpha, n_positive=n_pos, started=jnp.ones((), bool),
                          steps=state.steps + 1)


def _max_force(state: RelaxState) -> jax.Array:
    return jnp.sqrt(jnp.max(jnp.sum(state.forces * state.forces, axis=-1)))


def _make_segment(potential, hydrostatic: bool, cfg: FireConfig):
    """``(params, ref, opts, state, stop_at, fmax) -> (state, overflowed)``: FIRE steps until
    converged, ``stop_at`` steps, or a step whose list overflowed (that step is dropped)."""

    def advance(params, ref, opts, state):
        moved = jax.tree.map(lambda a, b: jnp.where(state.evaluated, a, b),
                             _fire_step(state, cfg), state)
        # Evaluated in the ASE DOF of the cell, L = N log F, divided back here.
        n_real = jnp.sum(ref.atom_mask).astype(moved.log_deformation.dtype)
        xl = (moved.reference_positions, moved.log_deformation / n_real)
        e, gen, sigma, nbrs = _evaluate(potential, params, ref, xl, state.neighbors, opts,
                                        hydrostatic)
        return moved._replace(forces=gen, energy=e, stress=sigma, neighbors=nbrs,
                              evaluated=jnp.ones((), bool))

    def segment(params, ref, opts, state, stop_at, fmax):
        def cond(c):
            st, bad = c
            going = (st.steps < stop_at) & (_max_force(st) >= fmax)
            return (~bad) & (going | ~st.evaluated)

        def body(c):
            st, _ = c
            new = advance(params, ref, opts, st)
            bad = new.neighbors.overflow
            keep = jax.tree.map(lambda a, b: jnp.where(bad, a, b), st._replace(
                neighbors=new.neighbors), new)
            return keep, bad

        return jax.lax.while_loop(cond, body, (state, jnp.zeros((), bool)))

    return segment


def initial_state(system: System, neighbors: nb.Neighbors,
                  fire: FireConfig | None = None) -> RelaxState:
    """The state before the first evaluation (host side, no compilation).

    Args:
      system: the starting structure (its cell is the reference cell).
      neighbors: a list allocated for it.
      fire: the FIRE constants.
    """
    fire = fire or FireConfig()
    dtype = system.positions.dtype
    n = system.positions.shape[0]
    zeros = jnp.zeros((n + 3, 3), dtype)
    return RelaxState(
        reference_positions=jnp.asarray(system.positions), log_deformation=jnp.zeros((3, 3), dtype),
        velocity=zeros, forces=zeros, energy=jnp.zeros((), dtype),
        stress=jnp.zeros((3, 3), dtype), dt=jnp.asarray(fire.dt_start, dtype),
        alpha=jnp.asarray(fire.alpha_start, dtype), n_positive=jnp.zeros((), jnp.int32),
        started=jnp.zeros((), bool), steps=jnp.zeros((), jnp.int32),
        evaluated=jnp.zeros((), bool), neighbors=neighbors)


def current_system(ref: System, state: RelaxState, mask) -> System:
    """The structure ``(X Fᵀ, cell₀ Fᵀ)`` of ``state`` (edges from its list)."""
    n_real = jnp.sum(ref.atom_mask).astype(state.log_deformation.dtype)
    f_mat = _deformation(state.log_deformation / n_real, jnp.asarray(mask, ref.positions.dtype))
    system = ref.replace(positions=jnp.matmul(state.reference_positions, f_mat.T, precision=_HI),
                         cell=jnp.matmul(ref.cell, f_mat.T, precision=_HI))
    return state.neighbors.attach(system)


def relax(
    potential: Potential,
    params,
    system: System,
    *,
    cell: bool = True,
    fmax: float = 0.05,
    pressure_gpa: float = 0.0,
    stress_gpa=None,
    mask=None,
    hydrostatic: bool = False,
    max_steps: int = 1000,
    fire: FireConfig | None = None,
    skin: float = 0.5,
    check_every: int = 100,
) -> tuple[System, dict]:
    """Relax positions (and with ``cell=True`` the cell) with FIRE until converged.

    The jitted counterpart of ``FIRE(FrechetCellFilter(atoms, mask, hydrostatic_strain,
    scalar_pressure=p)).run(fmax)`` in ASE (see the module docstring for the coordinates and
    forces). With ``cell=False`` it is ASE's ``FIRE(atoms)``.

    Args:
      potential, params: the potential and its parameters.
      system: starting structure (unbatched; periodic along every direction when
        ``cell=True``).
      cell: relax the cell too.
      fmax: convergence threshold on the largest generalised force, eV/Å (the cell rows are
        ``−∂H/∂L / N``, as in ASE).
      pressure_gpa: target hydrostatic pressure, GPa.
      stress_gpa: target stress tensor instead, GPa (ASE sign; see :func:`target_stress`).
      mask: which strain components relax (see :func:`cell_mask`); masked ones keep their
        starting value.
      hydrostatic: only isotropic deformations (ASE's ``hydrostatic_strain``).
      max_steps: largest number of FIRE steps.
      fire: FIRE constants (:class:`FireConfig`; default ASE's).
      skin: Verlet skin of the list, Å (head-room for the cell and the atoms moving between
        reallocations; the list itself is rebuilt every step).
      check_every: FIRE steps per jitted segment between host checks.

    Returns:
      ``(relaxed, info)``: the relaxed :class:`~jaxpot.System` (positions, cell, edges) and a
      dict with ``energy`` (eV), ``enthalpy`` (``E + pV``, eV), ``stress`` (``[3, 3]`` eV/Å³),
      ``fmax`` (eV/Å), ``steps``, ``converged`` and ``n_reallocations``.

    Raises:
      ValueError: bad options, an element unknown to the model, non-finite parameters or
        positions, or a non-periodic structure with ``cell=True``.
      NeighborListError: the list keeps overflowing at the same step.
    """
    fire = fire or FireConfig()
    opts = _check_relax_inputs(potential, params, system, cell=cell, fmax=fmax,
                               pressure_gpa=pressure_gpa, stress_gpa=stress_gpa, mask=mask,
                               max_steps=max_steps, check_every=check_every)
    ref = _stripped(system)
    keeper = NeighborKeeper(potential.cutoff, skin, max_attempts=8)
    nbrs = keeper.allocate(system)
    hydrostatic = bool(hydrostatic) and cell
    segment = _program(potential, hydrostatic, fire)
    state = initial_state(system, nbrs, fire)
    state = _drive(segment, params, ref, opts, state, keeper, fmax=fmax, max_steps=max_steps,
                   check_every=check_every)
    final = current_system(ref, state, opts["mask"])
    volume = float(np.abs(np.linalg.det(np.asarray(final.cell))))
    p = -float(np.trace(np.asarray(opts["target"]))) / 3.0
    f_max = float(_max_force(state))
    info = {"energy": float(state.energy), "enthalpy": float(state.energy) + p * volume,
            "stress": np.asarray(state.stress), "fmax": f_max, "steps": int(state.steps),
            "converged": f_max < fmax, "n_reallocations": keeper.n_reallocations}
    return final, info


_PROGRAMS: dict = {}
_AXIS = "relax_replica"  # vmapped replica axis of batched relaxation


def _program(potential: Potential, hydrostatic: bool, fire: FireConfig, *, batched=False):
    """The jitted segment, cached per potential (by the identity of its energy function) and
    options, so repeated relaxations with one model compile once per shape and list spec;
    ``batched``: vmapped over replicas (``ref``, ``opts``, ``state``, ``stop_at``)."""
    key = (potential.energy, potential.cutoff, hydrostatic, tuple(fire), batched)
    if key not in _PROGRAMS:
        if len(_PROGRAMS) >= 16:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        segment = _make_segment(potential, hydrostatic, fire)
        if batched:
            segment = _shared_branches(segment)
        _PROGRAMS[key] = jax.jit(segment)
    return _PROGRAMS[key]


def _shared_branches(segment):
    """``segment`` vmapped over replicas with the pair kernel's layout test shared by the
    batch (see ``potentials.pair.shared_branch_axis``), so ``vmap`` keeps a real branch."""
    def one(*args):
        with shared_branch_axis(_AXIS):
            return segment(*args)

    return jax.vmap(one, in_axes=(None, 0, 0, 0, 0, None), axis_name=_AXIS)


def _drive(segment, params, ref, opts, state, keeper, *, fmax, max_steps, check_every):
    """Host loop over jitted segments; a dropped (overflowed) step is redone on a new list."""
    attempts = 0
    while not bool(state.evaluated) or (float(_max_force(state)) >= fmax
                                        and int(state.steps) < max_steps):
        stop_at = min(int(state.steps) + check_every, max_steps)
        before = int(state.steps)
        state, bad = segment(params, ref, opts, state, jnp.asarray(stop_at, jnp.int32),
                             jnp.asarray(fmax, state.energy.dtype))
        if not bool(bad):
            continue
        attempts = attempts + 1 if int(state.steps) == before else 1
        if attempts > keeper.max_attempts:
            raise NeighborListError(
                f"relax: the neighbour list still overflows after {keeper.max_attempts} "
                f"reallocations at step {int(state.steps)} (max_neighbors="
                f"{state.neighbors.spec.max_neighbors}); atoms collapsing or a cell "
                "collapsing?")
        here = current_system(ref, state, opts["mask"])
        state = state._replace(neighbors=keeper.regrow(here, state.neighbors))
    return state


def _stripped(system: System) -> System:
    return system.replace(senders=jnp.zeros((0,), jnp.int32),
                          receivers=jnp.zeros((0,), jnp.int32),
                          shifts=jnp.zeros((0, 3), system.positions.dtype))


def _check_relax_inputs(potential, params, system, *, cell, fmax, pressure_gpa, stress_gpa,
                        mask, max_steps, check_every) -> dict:
    """Refuse bad options and structures before any compilation; the traced options."""
    if not (np.isfinite(fmax) and fmax > 0):
        raise ValueError(f"relax: fmax must be a finite number > 0 eV/Å, got {fmax!r}")
    if int(max_steps) != max_steps or max_steps < 0:
        raise ValueError(f"relax: max_steps must be an integer ≥ 0, got {max_steps!r}")
    if int(check_every) != check_every or check_every < 1:
        raise ValueError(f"relax: check_every must be an integer ≥ 1, got {check_every!r}")
    if np.ndim(system.positions) != 2:
        raise ValueError("relax works on one structure; use jaxpot.md.relax_replicas for a batch")
    atom_mask = np.asarray(system.atom_mask, bool)
    positions = np.asarray(system.positions, np.float64)
    bad = np.flatnonzero(atom_mask & ~np.all(np.isfinite(positions), axis=-1))
    if bad.size:
        raise ValueError(f"relax: structure: atom {int(bad[0])} has a non-finite position")
    if not atom_mask.any():
        raise ValueError("relax: structure has no atoms")
    if cell and not np.all(np.asarray(system.pbc, bool)):
        raise ValueError(f"relax: cell relaxation needs a periodic cell along every direction "
                         f"(pbc={np.asarray(system.pbc).tolist()}); use cell=False")
    check_species(potential, np.asarray(system.species)[atom_mask], where="relax: structure")
    check_params_finite(params, where=f"relax: model {potential.config.get('name')!r}")
    dtype = system.positions.dtype
    m = cell_mask(mask) if cell else np.zeros((3, 3))
    return {"mask": jnp.asarray(m, dtype),
            "target": jnp.asarray(target_stress(pressure_gpa, stress_gpa), dtype)}
