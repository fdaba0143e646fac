"""Pair potentials summed over the edges of a structure.

With a full neighbour list every pair appears twice (i→j and j→i), so the energy is
``½ Σ_edges φ(r)``. Edges beyond the cutoff (a Verlet skin) contribute exactly zero.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpot.potential import Potential, register
from jaxpot.system import System

__all__ = ["lennard_jones", "morse", "pair_energy"]


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


def _edge_terms(phi, cutoff, shift, params, positions, cell, senders, receivers, shifts):
    """Edge vectors, mask and distances shared by the energy and its JVP."""
    n = positions.shape[0]
    s = jnp.minimum(senders, n - 1)
    r_idx = jnp.minimum(receivers, n - 1)
    vec = positions[s] - positions[r_idx] + shifts @ cell
    r2 = jnp.sum(vec * vec, axis=-1)
    inside = (senders < n) & (receivers < n) & (r2 < cutoff * cutoff)
    r = jnp.sqrt(jnp.where(inside, r2, cutoff * cutoff))
    return vec, inside, r


def _edge_energy(phi, cutoff, shift, params, r):
    e = phi(r, params)
    if shift:
        e = e - phi(jnp.asarray(cutoff, r.dtype), params)
    return e


def _receiver_sum(values, receivers, inside, n):
    """``segment_sum(values, receivers, n)`` (values are 0 where not ``inside``).

    jaxpot's jitted lists give each atom a block of ``n_edges / n`` consecutive slots; then
    the sum is a dense reduction over each block, much cheaper than a scatter on CPU. The layout
    is checked at run time (one comparison per edge) and the general scatter used otherwise.
    """
    n_edges = receivers.shape[0]
    general = lambda: jax.ops.segment_sum(  # noqa: E731
        values, receivers, num_segments=n, indices_are_sorted=False)
    if n == 0 or n_edges == 0 or n_edges % n:
        return general()
    m = n_edges // n
    block = jax.lax.broadcasted_iota(jnp.int32, (n, m), 0).reshape(n_edges)
    dense = jnp.all((receivers == block) | ~inside)
    return jax.lax.cond(dense, lambda: values.reshape((n, m) + values.shape[1:]).sum(1), general)


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
    n = positions.shape[0]
    vec, inside, r = _edge_terms(phi, cutoff, shift, params, positions, cell, senders, receivers,
                                 shifts)
    e, de_dr = jax.jvp(lambda r_: _edge_energy(phi, cutoff, shift, params, r_), (r,),
                       (jnp.ones_like(r),))
    energy = 0.5 * jnp.sum(jnp.where(inside, e, 0.0))
    d_energy = jnp.zeros_like(energy)
    # g_e = ∂E/∂vec_e = ½ φ'(r_e) vec_e / r_e. With a symmetric list the sender terms of
    # ∂E/∂x equal the receiver terms, so ∂E/∂x_i = −2 Σ_{e: receiver i} g_e.
    g2 = jnp.where(inside, de_dr / r, 0.0)[:, None] * vec  # 2 g_e
    if not isinstance(d_positions, zero):
        grad_x = -_receiver_sum(g2, receivers, inside, n)
        d_energy = d_energy + jnp.sum(grad_x * d_positions)
    if not isinstance(d_cell, zero):
        d_energy = d_energy + 0.5 * jnp.sum((shifts.T @ g2) * d_cell)  # ∂E/∂cell_ab = Σ S_ea g_eb
    if any(not isinstance(t, zero) for t in jax.tree.leaves(
            d_params, is_leaf=lambda t: isinstance(t, zero))):
        d_params = jax.tree.map(
            lambda t, p: jnp.zeros_like(p) if isinstance(t, zero) else t, d_params, params,
            is_leaf=lambda t: isinstance(t, zero))
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


@register("lennard_jones")
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
        raise ValueError(f"lennard_jones: sigma and cutoff must be positive (got {sigma}, {cutoff})")

    def init(key, system):
        return {"sigma": jnp.asarray(sigma), "epsilon": jnp.asarray(epsilon)}

    def energy(params, system):
        s, eps = params["sigma"], params["epsilon"]

        return pair_energy(_lj_phi, system, cutoff, shift=shift, params=(s, eps))

    config = {"name": "lennard_jones",
              "kwargs": {"sigma": float(sigma), "epsilon": float(epsilon),
                         "cutoff": float(cutoff), "shift": bool(shift)}}
    return Potential(init, energy, float(cutoff), config)


@register("morse")
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

    config = {"name": "morse",
              "kwargs": {"D": float(D), "alpha": float(alpha), "r0": float(r0),
                         "cutoff": float(cutoff), "shift": bool(shift)}}
    return Potential(init, energy, float(cutoff), config)
