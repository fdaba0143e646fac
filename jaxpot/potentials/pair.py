"""Pair potentials summed over the edges of a structure.

With a full neighbour list every pair appears twice (i→j and j→i), so the energy is
``½ Σ_edges φ(r)``. Edges beyond the cutoff (a Verlet skin) contribute exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpot.potential import Potential, register
from jaxpot.system import System

__all__ = ["lennard_jones", "morse", "pair_energy"]


def pair_energy(
    phi: Callable[[jax.Array], jax.Array], system: System, cutoff: float, *, shift: bool
) -> jax.Array:
    """``½ Σ_e [φ(r_e) − φ(r_c)]`` over real edges with ``r_e < cutoff`` (eV).

    Args:
      phi: pair energy as a function of distance (Å → eV), elementwise.
      system: one unbatched structure with edges.
      cutoff: Å.
      shift: subtract ``φ(cutoff)`` so the energy is continuous at the cutoff.
    """
    vec = system.edge_vectors()
    r2 = jnp.sum(vec * vec, axis=-1)
    inside = system.edge_mask & (r2 < cutoff * cutoff)
    r = jnp.sqrt(jnp.where(inside, r2, cutoff * cutoff))  # safe: no sqrt(0) gradients
    e = phi(r)
    if shift:
        e = e - phi(jnp.asarray(cutoff, r.dtype))
    return 0.5 * jnp.sum(jnp.where(inside, e, 0.0))


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

        def phi(r):
            x6 = (s / r) ** 6
            return 4.0 * eps * (x6 * x6 - x6)

        return pair_energy(phi, system, cutoff, shift=shift)

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

        def phi(r):
            x = jnp.exp(-a * (r - r_eq))
            return d * ((1.0 - x) ** 2 - 1.0)

        return pair_energy(phi, system, cutoff, shift=shift)

    config = {"name": "morse",
              "kwargs": {"D": float(D), "alpha": float(alpha), "r0": float(r0),
                         "cutoff": float(cutoff), "shift": bool(shift)}}
    return Potential(init, energy, float(cutoff), config)
