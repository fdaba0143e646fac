"""Pair potentials summed over the edges of a structure.

With a full neighbour list every pair appears twice (i→j and j→i), so the energy is
``½ Σ_edges φ(r)``. Edges beyond the cutoff (a Verlet skin) contribute exactly zero.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpot.potential import Potential, register
from jaxpot.system import System

__all__ = ["lennard_jones", "morse", "pair_energy", "pair_atomic_energies"]


def pair_energy(
    phi: Callable[..., jax.Array],
    system: System,
    cutoff: float,
    *,
    shift: bool,
    params=None,
) -> jax.Array:
    """``½ Σ_e [φ(r_e) − φ(r_c)]`` over real edges with ``r_e < cutoff`` (eV).

    Args:
      phi: pair energy as a function of distance (Å → eV), elementwise: ``phi(r)``, or
        ``phi(r, params)`` when ``params`` is given.
      system: one unbatched structure with a full (symmetric) list of edges, as every jaxpot
        neighbour list is: each pair appears as i→j and j→i.
      cutoff: Å.
      shift: subtract ``φ(cutoff)`` so the energy is continuous at the cutoff.
      params: optional pytree passed to ``phi``. With it, derivatives go through a custom JVP
        that uses the symmetry of the list, ``∂E/∂x_i = −Σ_{e: receiver i} φ'(r_e) r̂_e``, so
        forces need one sum over each atom's own slots and no scatter onto senders (several
        times faster on CPU). ``jax.grad``, ``jax.hessian``, ``jax.vmap`` and derivatives with
        respect to ``params`` and the cell (stress) all still apply. Without ``params``, plain
        autodiff is used (no symmetry assumed).
    """
    if params is not None:
        return _pair_energy_sym(phi, float(cutoff), bool(shift), params, system.positions,
                                system.cell, system.senders, system.receivers, system.shifts)
    vec = system.edge_vectors()
    r2 = jnp.sum(vec * vec, axis=-1)
    inside = system.edge_mask & (r2 < cutoff * cutoff)
    r = jnp.sqrt(jnp.where(inside, r2, cutoff * cutoff))  # safe: no sqrt(0) gradients
    e = phi(r)
    if shift:
        e = e - phi(jnp.asarray(cutoff, r.dtype))
    return 0.5 * jnp.sum(jnp.where(inside, e, 0.0))


def pair_atomic_energies(phi, system: System, cutoff: float, *, shift: bool, params) -> jax.Array:
    """Per-atom energies ``½ Σ_{e: receiver i} [φ(r_e) − φ(r_c)]``, ``[n_atoms]`` eV.

    They sum to :func:`pair_energy` (with ``params``) for a symmetric list; padding atoms get 0.
    """
    _, inside, r = _edge_terms(phi, float(cutoff), bool(shift), params, system.positions,
                               system.cell, system.senders, system.receivers, system.shifts)
    e = 0.5 * jnp.where(inside, _edge_energy(phi, float(cutoff), bool(shift), params, r), 0.0)
    return jax.ops.segment_sum(e, system.receivers, num_segments=system.positions.shape[0])


def _edge_terms(phi, cutoff, shift, params, positions, cell, senders, receivers, shifts):
    """Edge vector components ``[vx, vy, vz]`` (each ``[n_edges]``), mask and distances.

    Components are kept as separate arrays (structure of arrays): XLA on CPU vectorises along
    the last axis, and ``[n_edges, 3]`` arrays run about ten times slower.
    """
    n = positions.shape[0]
    s = jnp.minimum(senders, n - 1)
    r_idx = jnp.minimum(receivers, n - 1)
    xt = positions.T
    vec = []
    for c in range(3):
        offset = shifts[:, 0] * cell[0, c] + shifts[:, 1] * cell[1, c] + shifts[:, 2] * cell[2, c]
        vec.append((xt[c][s] - xt[c][r_idx]) + offset)
    r2 = vec[0] * vec[0] + vec[1] * vec[1] + vec[2] * vec[2]
    inside = (senders < n) & (receivers < n) & (r2 < cutoff * cutoff)
    r = jnp.sqrt(jnp.where(inside, r2, cutoff * cutoff))
    return vec, inside, r


def _edge_energy(phi, cutoff, shift, params, r):
    e = phi(r, params)
    if shift:
        e = e - phi(jnp.asarray(cutoff, r.dtype), params)
    return e


def _edge_grads(phi, cutoff, shift, params, vec, inside, r):
    """Energy sum and ``2 ∂E/∂vec_e`` by component for edges ``vec`` (any shape)."""
    e, de_dr = jax.jvp(lambda r_: _edge_energy(phi, cutoff, shift, params, r_), (r,),
                       (jnp.ones_like(r),))
    energy = 0.5 * jnp.sum(jnp.where(inside, e, 0.0))
    coef = jnp.where(inside, de_dr / r, 0.0)
    return energy, [coef * v for v in vec]


def _cell_grad(shift_cols, g2):
    """``∂E/∂cell_ab = Σ_e S_ea g_eb`` from the shift columns and ``2 g`` by component."""
    return jnp.stack([jnp.stack([0.5 * jnp.sum(shift_cols[a] * g2[b]) for b in range(3)])
                      for a in range(3)])


_BLOCK_EDGES = 1 << 16  # edges per block of the blocked path (cache-sized working set)


def _grads_blocked(phi, cutoff, shift, params, positions, cell, senders, shifts, with_cell):
    """Energy, ∂E/∂x and ∂E/∂cell for a list whose slot block ``i`` belongs to atom ``i``.

    Works through blocks of atoms with ``lax.scan`` so that every intermediate stays in cache;
    forces are a sum over each atom's own slots (no scatter).
    """
    n = positions.shape[0]
    m = senders.shape[0] // n
    dtype = positions.dtype
    b = max(1, min(n, _BLOCK_EDGES // max(m, 1)))
    n_blocks = -(-n // b)
    pad = n_blocks * b - n
    snd = jnp.pad(senders.reshape(n, m), ((0, pad), (0, 0)), constant_values=n)
    shf = jnp.pad(shifts.reshape(n, m, 3), ((0, pad), (0, 0), (0, 0)))
    rows = jnp.arange(n_blocks * b, dtype=jnp.int32)
    xt = positions.T

    def body(carry, blk):
        s_b, sh_b, rows_b = blk  # [b, m], [b, m, 3], [b]
        s_c = jnp.minimum(s_b, n - 1)
        r_c = jnp.minimum(rows_b, n - 1)
        shift_cols = [sh_b[..., a] for a in range(3)]
        vec = []
        for c in range(3):
            offset = (shift_cols[0] * cell[0, c] + shift_cols[1] * cell[1, c]
                      + shift_cols[2] * cell[2, c])
            vec.append((xt[c][s_c] - xt[c][r_c][:, None]) + offset)
        r2 = vec[0] * vec[0] + vec[1] * vec[1] + vec[2] * vec[2]
        inside = (s_b < n) & (rows_b < n)[:, None] & (r2 < cutoff * cutoff)
        r = jnp.sqrt(jnp.where(inside, r2, cutoff * cutoff))
        energy, g2 = _edge_grads(phi, cutoff, shift, params, vec, inside, r)
        grad_x = -jnp.stack([g.sum(axis=1) for g in g2], axis=-1)
        e_acc, cell_acc = carry
        if with_cell:
            cell_acc = cell_acc + _cell_grad(shift_cols, g2)
        return (e_acc + energy, cell_acc), grad_x

    zero = (jnp.zeros((), dtype), jnp.zeros((3, 3), dtype))
    (energy, grad_cell), grad_x = jax.lax.scan(
        body, zero, (snd.reshape(n_blocks, b, m), shf.reshape(n_blocks, b, m, 3),
                     rows.reshape(n_blocks, b)))
    return energy, grad_x.reshape(n_blocks * b, 3)[:n], grad_cell


def _grads_general(phi, cutoff, shift, params, positions, cell, senders, receivers, shifts,
                   with_cell):
    """Energy, ∂E/∂x and ∂E/∂cell for any symmetric list (segment sum over receivers)."""
    n = positions.shape[0]
    vec, inside, r = _edge_terms(phi, cutoff, shift, params, positions, cell, senders, receivers,
                                 shifts)
    energy, g2 = _edge_grads(phi, cutoff, shift, params, vec, inside, r)
    grad_x = -jax.ops.segment_sum(jnp.stack(g2, axis=-1), receivers, num_segments=n)
    grad_cell = (_cell_grad([shifts[:, a] for a in range(3)], g2) if with_cell
                 else jnp.zeros((3, 3), positions.dtype))
    return energy, grad_x, grad_cell


_SHARED_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jaxpot_pair_shared_axis", default=None)


@contextlib.contextmanager
def shared_branch_axis(axis: str):
    """While tracing inside ``vmap(..., axis_name=axis)``, make the pair kernel's layout test
    one decision for the whole batch (all replicas take the blocked path only if every list
    has the blocked layout), so ``vmap`` keeps a real branch instead of evaluating both."""
    token = _SHARED_AXIS.set(axis)
    try:
        yield
    finally:
        _SHARED_AXIS.reset(token)


def _batch_all(pred: jax.Array) -> jax.Array:
    axis = _SHARED_AXIS.get()
    if axis is None:
        return pred
    return jax.lax.psum(jnp.logical_not(pred).astype(jnp.int32), axis) == 0


def _grads(phi, cutoff, shift, params, positions, cell, senders, receivers, shifts, with_cell):
    """Energy, ∂E/∂x [n, 3] and ∂E/∂cell [3, 3] using the symmetry of the list.

    g_e = ∂E/∂vec_e = ½ φ'(r_e) vec_e / r_e. With a symmetric list the sender terms of ∂E/∂x
    equal the receiver terms, so ∂E/∂x_i = −2 Σ_{e: receiver i} g_e. jaxpot's jitted lists give
    each atom a block of ``n_edges / n`` consecutive slots; then that sum is a reduction over
    each block (blocked path), much cheaper than a scatter on CPU. The layout is checked at run
    time (one comparison per edge) and the general path used otherwise.
    """
    n = positions.shape[0]
    n_edges = senders.shape[0]
    args = (phi, cutoff, shift, params, positions, cell, senders)
    general = functools.partial(_grads_general, *args, receivers, shifts, with_cell)
    if n == 0 or n_edges == 0 or n_edges % n:
        return general()
    m = n_edges // n
    block = jax.lax.broadcasted_iota(jnp.int32, (n, m), 0).reshape(n_edges)
    dense = _batch_all(jnp.all((receivers == block) | (senders >= n)))
    return jax.lax.cond(dense, functools.partial(_grads_blocked, *args, shifts, with_cell),
                        general)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _pair_energy_sym(phi, cutoff, shift, params, positions, cell, senders, receivers, shifts):
    _, inside, r = _edge_terms(phi, cutoff, shift, params, positions, cell, senders, receivers,
                               shifts)
    e = _edge_energy(phi, cutoff, shift, params, r)
    return 0.5 * jnp.sum(jnp.where(inside, e, 0.0))


def _pair_energy_sym_jvp(phi, cutoff, shift, primals, tangents):
    params, positions, cell, senders, receivers, shifts = primals
    d_params, d_positions, d_cell = tangents[:3]
    zero = jax.custom_derivatives.SymbolicZero
    with_cell = not isinstance(d_cell, zero)
    energy, grad_x, grad_cell = _grads(phi, cutoff, shift, params, positions, cell, senders,
                                       receivers, shifts, with_cell)
    d_energy = jnp.zeros_like(energy)
    if not isinstance(d_positions, zero):
        d_energy = d_energy + jnp.sum(grad_x * d_positions)
    if with_cell:
        d_energy = d_energy + jnp.sum(grad_cell * d_cell)
    if any(not isinstance(t, zero) for t in jax.tree.leaves(
            d_params, is_leaf=lambda t: isinstance(t, zero))):
        d_params = jax.tree.map(
            lambda t, p: jnp.zeros_like(p) if isinstance(t, zero) else t, d_params, params,
            is_leaf=lambda t: isinstance(t, zero))
        _, inside, r = _edge_terms(phi, cutoff, shift, params, positions, cell, senders,
                                   receivers, shifts)
        _, d_e_params = jax.jvp(
            lambda p: 0.5 * jnp.sum(jnp.where(inside, _edge_energy(phi, cutoff, shift, p, r), 0.0)),
            (params,), (d_params,))
        d_energy = d_energy + d_e_params
    return energy, d_energy


_pair_energy_sym.defjvp(_pair_energy_sym_jvp, symbolic_zeros=True)


def _lj_phi(r, params):
    s, eps = params
    x6 = (s / r) ** 6
    return 4.0 * eps * (x6 * x6 - x6)


def _morse_phi(r, params):
    d, a, r_eq = params
    x = jnp.exp(-a * (r - r_eq))
    return d * ((1.0 - x) ** 2 - 1.0)


@register("lennard_jones", data_options=("cutoff",))
def lennard_jones(sigma: float, epsilon: float, cutoff: float, *, shift: bool = True) -> Potential:
    """Lennard-Jones: ``Σ_pairs 4ε[(σ/r)¹² − (σ/r)⁶]`` within ``cutoff``.

    With ``shift=True`` the pair energy at the cutoff is subtracted (as ASE's
    ``LennardJones(smooth=False)`` does), so E is continuous but the force jumps at r_c.

    Args:
      sigma: Å. epsilon: eV. cutoff: Å.

    Returns:
      A :class:`~jaxpot.Potential` with params ``{"sigma", "epsilon"}`` (scalars, fittable).

    Example:
      >>> pot = lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
      >>> sorted(pot.init(None, None))
      ['epsilon', 'sigma']
    """
    if cutoff <= 0 or sigma <= 0:
        raise ValueError(
            f"lennard_jones: sigma and cutoff must be positive (got {sigma}, {cutoff})"
        )

    def init(key, system):
        return {"sigma": jnp.asarray(sigma), "epsilon": jnp.asarray(epsilon)}

    def energy(params, system):
        s, eps = params["sigma"], params["epsilon"]

        return pair_energy(_lj_phi, system, cutoff, shift=shift, params=(s, eps))

    def atomic(params, system):
        p = (params["sigma"], params["epsilon"])
        return {"energy": pair_atomic_energies(_lj_phi, system, cutoff, shift=shift, params=p)}

    config = {"name": "lennard_jones",
              "kwargs": {"sigma": float(sigma), "epsilon": float(epsilon),
                         "cutoff": float(cutoff), "shift": bool(shift)}}
    return Potential(init, energy, float(cutoff), config, atomic=atomic, outputs=("energy",))


@register("morse", data_options=("cutoff",))
def morse(D: float, alpha: float, r0: float, cutoff: float, *, shift: bool = True) -> Potential:
    """Morse: ``Σ_pairs D[(1 − e^{−α(r−r0)})² − 1]`` within ``cutoff``, shifted like LJ.

    Args:
      D: well depth, eV. alpha: 1/Å. r0: equilibrium distance, Å. cutoff: Å.

    Returns:
      A :class:`~jaxpot.Potential` with params ``{"D", "alpha", "r0"}``.
    """
    if cutoff <= 0:
        raise ValueError(f"morse: cutoff must be positive (got {cutoff})")

    def init(key, system):
        return {"D": jnp.asarray(D), "alpha": jnp.asarray(alpha), "r0": jnp.asarray(r0)}

    def energy(params, system):
        d, a, r_eq = params["D"], params["alpha"], params["r0"]

        return pair_energy(_morse_phi, system, cutoff, shift=shift, params=(d, a, r_eq))

    def atomic(params, system):
        p = (params["D"], params["alpha"], params["r0"])
        return {"energy": pair_atomic_energies(_morse_phi, system, cutoff, shift=shift, params=p)}

    config = {"name": "morse",
              "kwargs": {"D": float(D), "alpha": float(alpha), "r0": float(r0),
                         "cutoff": float(cutoff), "shift": bool(shift)}}
    return Potential(init, energy, float(cutoff), config, atomic=atomic, outputs=("energy",))
