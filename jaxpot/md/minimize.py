"""Structure relaxation: FIRE (JAX MD's ``minimize.fire_descent``) with a jitted neighbour list."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import minimize as jmd_minimize
from jax_md import space as jmd_space

from jaxpot import neighbors as nb
from jaxpot.md.blocks import NeighborKeeper, run_checked
from jaxpot.md.checks import check_params_finite
from jaxpot.potential import Potential, check_species, energy_and_forces
from jaxpot.system import System

__all__ = ["fire"]


def fire(
    potential: Potential,
    params,
    system: System,
    *,
    fmax: float = 0.05,
    max_steps: int = 1000,
    dt_start: float = 0.1,
    dt_max: float = 0.4,
    maxstep: float = 0.2,
    skin: float = 0.5,
    check_every: int = 50,
) -> tuple[System, dict]:
    """Relax atomic positions (fixed cell) with FIRE until every force is below ``fmax``.

    The FIRE update is JAX MD's ``minimize.fire_descent`` (Bitzek et al. 2006) on unwrapped
    positions, with unit masses. Its shift function is JAX MD's ``space.free()`` shift with the
    step scaled down so that no atom moves more than ``maxstep`` (as ASE's FIRE does; JAX MD's
    has no cap, and with stiff forces its first steps would throw atoms into each other).
    Its force function refreshes the jaxpot
    neighbour list at the positions it is called with; the loop runs jitted ``lax.while_loop``
    segments of up to ``check_every`` steps; a segment whose list overflowed is thrown away and
    redone with a bigger list (:func:`jaxpot.md.blocks.run_checked`).

    Args:
      potential, params: the potential and its parameters.
      system: starting structure (unbatched).
      fmax: convergence threshold on the largest per-atom force norm, eV/Å.
      max_steps: maximum number of FIRE steps.
      dt_start, dt_max: FIRE time steps, internal units (with unit masses).
      maxstep: largest displacement of any atom in one step, Å.
      skin: Verlet skin of the neighbour list, Å.
      check_every: FIRE steps per jitted segment between host checks.

    Returns:
      ``(relaxed_system, info)``: the relaxed :class:`~jaxpot.System` (edges from the final
      neighbour list) and a dict with ``energy`` (eV), ``fmax`` (eV/Å), ``steps``,
      ``converged`` and ``n_reallocations``.

    Raises:
      ValueError: an element unknown to the model, non-finite parameters or positions, or a
        non-positive ``fmax``/``check_every`` or negative ``max_steps`` (checked before any
        compilation).

    References:
      E. Bitzek, P. Koskinen, F. Gähler, M. Moseler, P. Gumbsch, PRL 97, 170201 (2006).
    """
    _check_fire_inputs(potential, params, system, fmax=fmax, max_steps=max_steps,
                       check_every=check_every)
    ef = energy_and_forces(potential)
    mask = system.atom_mask
    _, free_shift = jmd_space.free()

    def shift(x, dx, **kwargs):
        longest = jnp.sqrt(jnp.max(jnp.sum(dx * dx, axis=-1)))
        scale = jnp.minimum(1.0, maxstep / jnp.maximum(longest, 1e-30))
        return free_shift(x, dx * scale, **kwargs)

    def forces(params, stripped, nbrs, x):
        moved = stripped.replace(positions=x)
        return ef(params, nb.update(nbrs, moved).attach(moved))

    def fmax_of(f, mask):
        return jnp.sqrt(jnp.max(jnp.where(mask, jnp.sum(f * f, axis=-1), 0.0)))

    def make(params, stripped):
        def force_fn(x, neighbor):
            return forces(params, stripped, neighbor, x)[1]

        return jmd_minimize.fire_descent(force_fn, shift, dt_start=dt_start, dt_max=dt_max)

    def start(params, stripped, nbrs):  # eager: one force call, no extra compile
        init_fn, _ = make(params, stripped)
        return init_fn(stripped.positions, neighbor=nbrs)

    @jax.jit
    def segment(params, stripped, state, nbrs, n_done):
        _, apply_fn = make(params, stripped)

        def cond(c):
            st, nbrs, k = c
            return (k < jnp.minimum(n_done + check_every, max_steps)) & (
                fmax_of(st.force, stripped.atom_mask) > fmax) & ~nbrs.overflow

        def body(c):
            st, nbrs, k = c
            new = apply_fn(st, neighbor=nbrs)
            return new, nb.update(nbrs, stripped.replace(positions=new.position)), k + 1

        return jax.lax.while_loop(cond, body, (state, nbrs, n_done))

    stripped = system.replace(senders=jnp.zeros((0,), jnp.int32),
                              receivers=jnp.zeros((0,), jnp.int32),
                              shifts=jnp.zeros((0, 3), system.positions.dtype))
    keeper = NeighborKeeper(potential.cutoff, skin, max_attempts=20)
    carry = (None, keeper.allocate(system), jnp.zeros((), jnp.int32))
    carry = (start(params, stripped, carry[1]), carry[1], carry[2])
    while True:
        # A segment whose list overflowed is redone from its start with a bigger list.
        _, carry = run_checked(
            lambda c: segment(params, stripped, *c), carry, keeper,
            neighbors_of=lambda out: out[1],
            system_of=lambda c: stripped.replace(positions=c[0].position),
            with_neighbors=lambda c, n: (c[0], n, c[2]), where="during fire")
        state, nbrs, n_done = carry
        if float(fmax_of(state.force, mask)) <= fmax or int(n_done) >= max_steps:
            break
    final = stripped.replace(positions=state.position)
    relaxed = nbrs.attach(final)  # the loop keeps the list updated at the current positions
    e, f = ef(params, relaxed)  # eager: one call, no extra compile
    f_max = float(np.sqrt(np.max(np.where(np.asarray(mask), np.sum(np.asarray(f) ** 2, -1), 0))))
    info = {"energy": float(e), "fmax": f_max, "steps": int(n_done),
            "converged": f_max <= fmax, "n_reallocations": keeper.n_reallocations}
    return relaxed, info


def _check_fire_inputs(potential, params, system, *, fmax, max_steps, check_every) -> None:
    if not (np.isfinite(fmax) and fmax > 0):
        raise ValueError(f"fire: fmax must be a finite number > 0 eV/Å, got {fmax!r}")
    if int(max_steps) != max_steps or max_steps < 0:
        raise ValueError(f"fire: max_steps must be an integer ≥ 0, got {max_steps!r}")
    if int(check_every) != check_every or check_every < 1:
        raise ValueError(f"fire: check_every must be an integer ≥ 1, got {check_every!r}")
    mask = np.asarray(system.atom_mask, bool)
    positions = np.asarray(system.positions, np.float64)
    bad = np.flatnonzero(mask & ~np.all(np.isfinite(positions), axis=-1))
    if bad.size:
        raise ValueError(f"fire: structure: atom {int(bad[0])} has a non-finite position")
    check_species(potential, np.asarray(system.species)[mask], where="fire: structure")
    check_params_finite(params, where=f"fire: model {potential.config.get('name')!r}")
