"""Structure relaxation: FIRE (JAX MD's ``minimize.fire_descent``) with a jitted neighbour list."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import minimize as jmd_minimize
from jax_md import space as jmd_space

from jaxpot import neighbors as nb
from jaxpot.potential import Potential, energy_and_forces
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
    segments of up to ``check_every`` steps, and on the host it reallocates the list if it
    overflowed (the overflowing step is discarded and redone with the bigger list).

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

    References:
      E. Bitzek, P. Koskinen, F. Gähler, M. Moseler, P. Gumbsch, PRL 97, 170201 (2006).
    """
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
            st, nbrs, k, over = c
            return (k < jnp.minimum(n_done + check_every, max_steps)) & (
                fmax_of(st.force, stripped.atom_mask) > fmax) & ~over

        def body(c):
            st, nbrs, k, _ = c
            new = apply_fn(st, neighbor=nbrs)
            new_nbrs = nb.update(nbrs, stripped.replace(positions=new.position))
            over = new_nbrs.overflow
            keep = jax.tree.map(lambda a, b: jnp.where(over, a, b), (st, nbrs), (new, new_nbrs))
            return keep[0], keep[1], jnp.where(over, k, k + 1), over

        return jax.lax.while_loop(cond, body, (state, nbrs, n_done, jnp.zeros((), bool)))

    stripped = system.replace(senders=jnp.zeros((0,), jnp.int32),
                              receivers=jnp.zeros((0,), jnp.int32),
                              shifts=jnp.zeros((0, 3), system.positions.dtype))
    mult = 1.25
    nbrs = nb.allocate(system, potential.cutoff, skin=skin, capacity_multiplier=mult)
    state = start(params, stripped, nbrs)
    n_done = jnp.zeros((), jnp.int32)
    n_realloc = 0
    while True:
        state, nbrs, n_done, over = segment(params, stripped, state, nbrs, n_done)
        if bool(over):
            n_realloc += 1
            if n_realloc > 20:
                raise ValueError("fire: neighbour list keeps overflowing; atoms are collapsing")
            mult *= 1.5
            nbrs = nb.allocate(stripped.replace(positions=state.position), potential.cutoff,
                               skin=skin, capacity_multiplier=mult,
                               min_capacity=int(math.ceil(nbrs.spec.max_neighbors * 1.5)))
            continue
        if float(fmax_of(state.force, mask)) <= fmax or int(n_done) >= max_steps:
            break
    final = stripped.replace(positions=state.position)
    relaxed = nbrs.attach(final)  # the loop keeps the list updated at the current positions
    e, f = ef(params, relaxed)  # eager: one call, no extra compile
    f_max = float(np.sqrt(np.max(np.where(np.asarray(mask), np.sum(np.asarray(f) ** 2, -1), 0))))
    info = {"energy": float(e), "fmax": f_max, "steps": int(n_done),
            "converged": f_max <= fmax, "n_reallocations": n_realloc}
    return relaxed, info
