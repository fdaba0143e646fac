"""Chirality-aware pseudoscalar features from signed volumes of neighbour triplets.

ACSF and SOAP are invariant under all of O(3), so they give identical values for the two
enantiomers of a chiral molecule. The features here are invariant under proper rotations,
translations and permutations of like atoms but change sign under a reflection.

For centre ``i`` and radial channels ``p = (Z, a)`` (neighbour element ``Z``, radial Gaussian
``φ_a(r) = exp(−η_a (r − R_a)²)``) the weighted signed-volume sum over neighbour triplets is::

    χ_{pqs}(i) = Σ_{j ∈ Z_p} Σ_{k ∈ Z_q} Σ_{l ∈ Z_s} (r_ij × r_ik) · r_il
                 w_p(r_ij) w_q(r_ik) w_s(r_il),        w_p(r) = φ_{a_p}(r) f_c(r)

Because the triple product is trilinear, this equals ``det[m_p, m_q, m_s]`` with the vector
moments ``m_p = Σ_{j ∈ Z_p} w_p(r_ij) r_ij`` (units Å), so every triplet of every atom is summed
in ``O(K)`` work per atom instead of ``O(K³)``. Triplets with a repeated neighbour have zero
volume, so nothing needs excluding; the sum is antisymmetric in ``(p, q, s)``, so only
``p < q < s`` channel triplets are kept. Values are in Å³.

Feature layout: channels ordered element-major (``p = z·n_radial + a``), then all
``p < q < s`` in lexicographic order; ``n_features = C(n_elements·n_radial, 3)``.

References:
  J. Behler, J. Chem. Phys. 134, 074106 (2011) (cutoff functions, radial Gaussians).
  The signed-volume (triple product) construction is the lowest-order pseudoscalar of a
  neighbour density; see e.g. M. J. Willatt, F. Musil, M. Ceriotti, J. Chem. Phys. 150,
  154110 (2019) on the λ-SOAP / pseudotensor hierarchy.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.descriptors.cutoff import cosine_cutoff
from jaxpot.descriptors.environment import (
    dense_jacobian,
    environment,
    map_atoms,
    species_index,
)
from jaxpot.descriptors.environment import (
    max_neighbors as _max_neighbors,
)
from jaxpot.system import System

__all__ = ["ChiralParams", "chiral_params", "chiral", "chiral_atom", "chiral_jacobian"]


@dataclasses.dataclass(frozen=True)
class ChiralParams:
    """Configuration of the pseudoscalar features.

    Attributes:
      r_cut: cutoff radius, Å (cosine cutoff).
      species: sorted atomic numbers.
      etas: ``[n_radial]`` Gaussian widths η, Å⁻².
      centers: ``[n_radial]`` Gaussian centres, Å.
    """

    r_cut: float
    species: tuple[int, ...]
    etas: tuple[float, ...]
    centers: tuple[float, ...]

    @property
    def n_channels(self) -> int:
        return len(self.species) * len(self.etas)

    @property
    def n_features(self) -> int:
        c = self.n_channels
        return c * (c - 1) * (c - 2) // 6

    def triplets(self) -> np.ndarray:
        """``[n_features, 3]`` channel indices ``p < q < s`` in output order."""
        return np.asarray(list(itertools.combinations(range(self.n_channels), 3)),
                          np.int64).reshape(-1, 3)


def chiral_params(r_cut: float, species: Sequence[int | str], *, n_radial: int = 1,
                  r_min: float = 0.8) -> ChiralParams:
    """Pseudoscalar configuration with ``n_radial`` evenly spaced radial Gaussians.

    Args:
      r_cut: cutoff radius, Å.
      species: atomic numbers or symbols.
      n_radial: Gaussians per element; ``1`` means a single flat channel (``φ = 1``).
      r_min: first Gaussian centre, Å (centres evenly spaced on ``[r_min, r_cut]``, widths
        ``η = 1/(2 Δ²)`` from the spacing ``Δ``).
    """
    from ase.data import atomic_numbers

    numbers = tuple(sorted({atomic_numbers[s] if isinstance(s, str) else int(s)
                            for s in species}))
    if not r_cut > 0 or n_radial < 1:
        raise ValueError(f"chiral: need r_cut > 0 and n_radial >= 1, got {r_cut}, {n_radial}")
    if len(numbers) * n_radial < 3:
        raise ValueError("chiral features need at least 3 channels (elements × n_radial)")
    if n_radial == 1:
        etas, centers = (0.0,), (0.0,)
    else:
        c = np.linspace(r_min, r_cut, n_radial)
        eta = 1.0 / (2.0 * (c[1] - c[0]) ** 2)
        etas, centers = tuple([float(eta)] * n_radial), tuple(float(x) for x in c)
    return ChiralParams(float(r_cut), numbers, etas, centers)


def chiral_atom(params: ChiralParams, vectors: jax.Array, mask: jax.Array,
                species: jax.Array) -> jax.Array:
    """Pseudoscalars of one atom.

    Args:
      params: configuration.
      vectors: ``[K, 3]`` neighbour vectors, Å.
      mask: ``[K]`` filled slots.
      species: ``[K]`` neighbour atomic numbers.

    Returns:
      ``[params.n_features]`` signed volumes, Å³.
    """
    r2 = jnp.sum(vectors * vectors, axis=-1)
    inside = mask & (r2 < params.r_cut**2)
    ok = inside & (r2 > 0)
    r = jnp.where(ok, jnp.sqrt(jnp.where(ok, r2, 1.0)), 0.0)
    fc = jnp.where(inside, cosine_cutoff(r, params.r_cut), 0.0)
    eta, cen = np.asarray(params.etas), np.asarray(params.centers)
    radial = jnp.exp(-eta * (r[:, None] - cen) ** 2) * fc[:, None]  # [K, R]
    n_el = len(params.species)
    onehot = (species_index(species, params.species)[:, None] == jnp.arange(n_el))
    w = (onehot.astype(vectors.dtype)[:, :, None] * radial[:, None, :]).reshape(r.shape[0], -1)
    moments = w.T @ vectors  # [C, 3]
    t = params.triplets()
    a, b, c = moments[t[:, 0]], moments[t[:, 1]], moments[t[:, 2]]
    return jnp.sum(jnp.cross(a, b) * c, axis=-1)


def chiral(system: System, params: ChiralParams, *, max_neighbors: int | None = None,
           positions: jax.Array | None = None, batch_size: int | None = None) -> jax.Array:
    """Pseudoscalar features of every atom.

    Args:
      system: one unbatched structure with edges for a cutoff ``>= params.r_cut``.
      params: configuration from :func:`chiral_params`.
      max_neighbors: static per-atom capacity (default: measured on the host).
      positions: optional ``[n_atoms, 3]`` positions overriding ``system.positions``.
      batch_size: atoms per chunk (see :func:`~jaxpot.descriptors.environment.map_atoms`).

    Returns:
      ``[n_atoms, params.n_features]`` Å³; padding rows 0; all NaN on capacity overflow.
    """
    if max_neighbors is None:
        max_neighbors = _max_neighbors(system, params.r_cut)
    env = environment(system, max_neighbors, cutoff=params.r_cut, positions=positions)
    feats = map_atoms(lambda a: chiral_atom(params, *a), (env.vectors, env.mask, env.species),
                      batch_size)
    feats = jnp.where(system.atom_mask[:, None], feats, 0.0)
    return jnp.where(env.overflow, jnp.nan, feats)


def chiral_jacobian(system: System, params: ChiralParams, *, max_neighbors: int | None = None,
                    positions: jax.Array | None = None, batch_size: int | None = 8):
    """Values ``[n_atoms, F]`` and dense Jacobian ``[n_atoms, n_atoms, 3, F]`` (dscribe layout).
    """
    if max_neighbors is None:
        max_neighbors = _max_neighbors(system, params.r_cut)
    env = environment(system, max_neighbors, cutoff=params.r_cut, positions=positions)

    def one(v, m, s):
        f = lambda vv: chiral_atom(params, vv, m, s)  # noqa: E731
        return f(v), jnp.moveaxis(jax.jacfwd(f)(v), 0, -1)

    vals, local = map_atoms(lambda a: one(*a), (env.vectors, env.mask, env.species),
                            batch_size)
    amask = system.atom_mask
    vals = jnp.where(env.overflow, jnp.nan, jnp.where(amask[:, None], vals, 0.0))
    local = jnp.where(amask[:, None, None, None] & env.mask[..., None, None], local, 0.0)
    return vals, dense_jacobian(local, env)
