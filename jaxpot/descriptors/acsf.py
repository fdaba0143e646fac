"""Atom-centred symmetry functions (Behler): radial G1, G2, G3 and angular G4, G5.

Definitions (``f_c`` is :func:`~jaxpot.descriptors.cutoff.cosine_cutoff`, ``r_ij`` the length of
edge ``i → j``, ``θ_ijk`` the angle between ``r_ij`` and ``r_ik``)::

    G1_i = Σ_j f_c(r_ij)
    G2_i = Σ_j exp(−η (r_ij − R_s)²) f_c(r_ij)
    G3_i = Σ_j cos(κ r_ij) f_c(r_ij)
    G4_i = 2^{1−ζ} Σ_{j<k} (1 + λ cos θ_ijk)^ζ exp(−η (r_ij² + r_ik² + r_jk²))
                                               f_c(r_ij) f_c(r_ik) f_c(r_jk)
    G5_i = 2^{1−ζ} Σ_{j<k} (1 + λ cos θ_ijk)^ζ exp(−η (r_ij² + r_ik²)) f_c(r_ij) f_c(r_ik)

Sums run over neighbour images (edges), so periodic cells of any size work. Each unordered pair
of neighbours is counted once (``j < k``), exactly as in dscribe; Behler's papers write the
sum over all ``j ≠ k``, which is twice these values.

Element resolution and feature layout (identical to dscribe's ``ACSF``, so outputs can be
compared column by column): for each neighbour element ``Z`` in ``species`` a radial block
``[G1, G2 (one per (η, R_s)), G3 (one per κ)]``; then, for each unordered element pair
``(Z_a, Z_b)``, ``a ≤ b``, ordered by ``b`` then ``a`` (``(0,0), (0,1), (1,1), (0,2), …``),
an angular block ``[G4 (one per (η, ζ, λ)), G5 (one per (η, ζ, λ))]``. The centre's own element
is not encoded (as in dscribe: train one network per centre element, or concatenate a one-hot).

Triplets: angular terms use the dense per-atom neighbour table of
:mod:`jaxpot.descriptors.environment` (``max_neighbors`` slots per atom, built inside ``jit``);
a triplet ``(i, j, k)`` is a pair of slots of atom ``i``, so the cost is
``O(n_atoms · K² · n_angular)`` and no triplet list is stored.

References:
  J. Behler, "Atom-centered symmetry functions for constructing high-dimensional neural
  network potentials", J. Chem. Phys. 134, 074106 (2011).
  G. Imbalzano et al., "Automatic selection of atomic fingerprints and reference
  configurations for machine-learning potentials", J. Chem. Phys. 148, 241730 (2018) (grids).
  L. Himanen et al., "DScribe: Library of descriptors for machine learning in materials
  science", Comput. Phys. Commun. 247, 106949 (2020).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.descriptors.cutoff import cosine_cutoff
from jaxpot.descriptors.environment import (
    Environment,
    dense_jacobian,
    environment,
    map_atoms,
    species_index,
)
from jaxpot.descriptors.environment import (
    max_neighbors as _max_neighbors,
)
from jaxpot.system import System

__all__ = ["ACSFParams", "acsf_params", "grid", "acsf", "acsf_atom", "acsf_jacobian"]


def _tuple2(rows, width: int, name: str) -> tuple[tuple[float, ...], ...]:
    if rows is None:
        return ()
    arr = np.asarray(rows, np.float64)
    if arr.size == 0:
        return ()
    arr = arr.reshape(-1, width) if width > 1 else arr.reshape(-1, 1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"ACSF {name} parameters must be finite, got {arr.tolist()}")
    return tuple(tuple(float(v) for v in row) for row in arr)


@dataclasses.dataclass(frozen=True)
class ACSFParams:
    """Static ACSF configuration (hashable; safe to close over or mark static in ``jit``).

    Attributes:
      r_cut: cutoff radius, Å.
      species: sorted atomic numbers resolved by the descriptor.
      g2: ``((η [Å⁻²], R_s [Å]), ...)``.
      g3: ``((κ [Å⁻¹],), ...)``.
      g4: ``((η [Å⁻²], ζ, λ), ...)``, ``λ = ±1``, ``ζ ≥ 1``.
      g5: ``((η [Å⁻²], ζ, λ), ...)``.
    """

    r_cut: float
    species: tuple[int, ...]
    g2: tuple[tuple[float, ...], ...] = ()
    g3: tuple[tuple[float, ...], ...] = ()
    g4: tuple[tuple[float, ...], ...] = ()
    g5: tuple[tuple[float, ...], ...] = ()

    @property
    def n_radial(self) -> int:
        """Radial features per neighbour element (G1 + G2 + G3)."""
        return 1 + len(self.g2) + len(self.g3)

    @property
    def n_angular(self) -> int:
        """Angular features per element pair (G4 + G5)."""
        return len(self.g4) + len(self.g5)

    @property
    def n_features(self) -> int:
        """Total number of features per atom."""
        n = len(self.species)
        return n * self.n_radial + n * (n + 1) // 2 * self.n_angular

    def pairs(self) -> list[tuple[int, int]]:
        """Element-index pairs ``(a, b)``, ``a ≤ b``, in output order."""
        n = len(self.species)
        return [(a, b) for b in range(n) for a in range(b + 1)]


def acsf_params(
    r_cut: float,
    species: Sequence[int | str],
    *,
    g2=None,
    g3=None,
    g4=None,
    g5=None,
) -> ACSFParams:
    """Build :class:`ACSFParams` with validation (dscribe's argument conventions).

    Args:
      r_cut: cutoff radius, Å.
      species: atomic numbers or chemical symbols.
      g2: ``[n, 2]`` rows ``(η, R_s)``.
      g3: ``[n]`` values ``κ``.
      g4: ``[n, 3]`` rows ``(η, ζ, λ)``.
      g5: ``[n, 3]`` rows ``(η, ζ, λ)``.

    Raises:
      ValueError: non-positive cutoff, unknown element, ``ζ < 1`` or ``|λ| ≠ 1``.
    """
    from ase.data import atomic_numbers

    if not r_cut > 0:
        raise ValueError(f"ACSF r_cut must be positive, got {r_cut}")
    numbers = []
    for s in species:
        if isinstance(s, str):
            if s not in atomic_numbers:
                raise ValueError(f"ACSF: unknown chemical symbol {s!r}")
            numbers.append(atomic_numbers[s])
        else:
            numbers.append(int(s))
    if not numbers or min(numbers) < 1:
        raise ValueError(f"ACSF species must be atomic numbers >= 1, got {list(species)}")
    g4t, g5t = _tuple2(g4, 3, "g4"), _tuple2(g5, 3, "g5")
    for name, rows in (("g4", g4t), ("g5", g5t)):
        for _, zeta, lam in rows:
            if zeta < 1 or abs(abs(lam) - 1) > 1e-12:
                raise ValueError(f"ACSF {name}: need ζ >= 1 and λ = ±1, got ζ={zeta}, λ={lam}")
    return ACSFParams(
        float(r_cut), tuple(sorted(set(numbers))), _tuple2(g2, 2, "g2"), _tuple2(g3, 1, "g3"),
        g4t, g5t,
    )


def grid(
    r_cut: float,
    species: Sequence[int | str],
    *,
    n_radial: int = 8,
    n_angular: int = 4,
    zetas: Sequence[float] = (1.0, 4.0),
    lambdas: Sequence[float] = (-1.0, 1.0),
    r_min: float = 0.5,
    mode: str = "shifted",
    g4: bool = True,
    g5: bool = True,
) -> ACSFParams:
    """The usual η / R_s / ζ / λ grids for a cutoff and feature counts.

    Radial (G2), ``mode="shifted"``: ``R_s`` evenly spaced on ``[r_min, r_cut]``, one width
    ``η = 1 / (2 ΔR²)`` with ``ΔR`` the spacing; ``mode="centered"``: ``R_s = 0`` and widths
    ``σ_k`` evenly spaced on ``[r_min, r_cut]``, ``η_k = 1 / (2 σ_k²)`` (Imbalzano et al. 2018).
    Angular (G4/G5): ``n_angular`` centred widths ``η_k = 1 / (2 σ_k²)``, ``σ_k`` evenly spaced
    on ``[r_min, r_cut]``, crossed with every ``ζ`` and ``λ`` (order: η, then ζ, then λ).

    Args:
      r_cut: cutoff radius, Å.
      species: atomic numbers or symbols.
      n_radial: number of G2 functions per element.
      n_angular: number of angular widths.
      zetas: angular exponents ζ ≥ 1.
      lambdas: ``±1``.
      r_min: smallest centre / width, Å.
      mode: ``"shifted"`` or ``"centered"`` radial grid.
      g4, g5: include G4 / G5 functions.

    Returns:
      :class:`ACSFParams` with ``n_radial`` G2 and ``n_angular·len(zetas)·len(lambdas)``
      G4 and G5 functions.
    """
    if mode == "shifted":
        rs = np.linspace(r_min, r_cut, n_radial)
        dr = (rs[1] - rs[0]) if n_radial > 1 else r_cut
        g2 = [(1.0 / (2.0 * dr**2), float(r)) for r in rs]
    elif mode == "centered":
        sig = np.linspace(r_min, r_cut, n_radial)
        g2 = [(1.0 / (2.0 * s**2), 0.0) for s in sig]
    else:
        raise ValueError(f"ACSF grid mode must be 'shifted' or 'centered', got {mode!r}")
    sig = np.linspace(r_min, r_cut, n_angular) if n_angular > 1 else np.array([r_cut / 2])
    ang = [(1.0 / (2.0 * s**2), float(z), float(lam)) for s in sig for z in zetas
           for lam in lambdas] if n_angular > 0 else []
    return acsf_params(r_cut, species, g2=g2, g4=ang if g4 else None, g5=ang if g5 else None)


def _safe_norm(sq: jax.Array, mask: jax.Array) -> jax.Array:
    """``sqrt(sq)`` where ``mask``, else 0, with finite gradients (double where)."""
    ok = mask & (sq > 0)
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)


def _pow(base: jax.Array, zeta: float) -> jax.Array:
    """``base**zeta`` for ``base >= 0`` with finite gradients (integer ζ: repeated products)."""
    if float(zeta).is_integer():
        return jax.lax.integer_pow(base, int(zeta))
    ok = base > 0
    return jnp.where(ok, jnp.where(ok, base, 1.0) ** zeta, 0.0)


def acsf_atom(params: ACSFParams, vectors: jax.Array, mask: jax.Array,
              species: jax.Array) -> jax.Array:
    """ACSF of one atom from its neighbour table.

    Args:
      params: configuration.
      vectors: ``[K, 3]`` neighbour vectors ``r_ij``, Å (anything on empty slots).
      mask: ``[K]`` bool, filled slots.
      species: ``[K]`` atomic numbers of the neighbours.

    Returns:
      ``[params.n_features]`` features (dscribe layout, see the module docstring).
    """
    rc = params.r_cut
    n_el = len(params.species)
    dtype = vectors.dtype
    r2 = jnp.sum(vectors * vectors, axis=-1)
    inside = mask & (r2 < rc * rc)
    r = _safe_norm(r2, inside)
    fc = jnp.where(inside, cosine_cutoff(r, rc), 0.0)
    onehot = (species_index(species, params.species)[:, None] == jnp.arange(n_el)).astype(dtype)
    onehot = onehot * inside[:, None]

    radial = [fc[:, None]]
    if params.g2:
        g2 = np.asarray(params.g2)
        radial.append(jnp.exp(-g2[:, 0] * (r[:, None] - g2[:, 1]) ** 2) * fc[:, None])
    if params.g3:
        kappa = np.asarray(params.g3)[:, 0]
        radial.append(jnp.cos(kappa * r[:, None]) * fc[:, None])
    radial = jnp.concatenate(radial, axis=1)  # [K, n_radial]
    out = [(onehot.T @ radial).reshape(-1)]

    if params.n_angular:
        pair_mask = inside[:, None] & inside[None, :] & ~jnp.eye(r.shape[0], dtype=bool)
        diff = vectors[None, :, :] - vectors[:, None, :]
        rjk2 = jnp.sum(diff * diff, axis=-1)
        rjk = _safe_norm(rjk2, pair_mask)
        fcjk = jnp.where(pair_mask, cosine_cutoff(rjk, rc), 0.0)
        rr = jnp.where(inside, r, 1.0)
        cos = (vectors @ vectors.T) / (rr[:, None] * rr[None, :])
        fcfc = jnp.where(pair_mask, fc[:, None] * fc[None, :], 0.0)
        s2 = r2[:, None] + r2[None, :]
        # Transcendentals only for the distinct η (radial part) and (ζ, λ) (angular part);
        # the sum over neighbour pairs of each (η, ζ, λ, element pair) is then one batched
        # matrix product per atom: X[e, f, η, ζλ] = Σ_ab oh[a,e] oh[b,f] rad[a,b,η] ang[a,b,ζλ].
        n_k = r.shape[0]
        feats = []
        for rows, with_jk in ((params.g4, True), (params.g5, False)):
            if not rows:
                continue
            p = np.asarray(rows)
            etas, eta_idx = np.unique(p[:, 0], return_inverse=True)
            zl, zl_idx = np.unique(p[:, 1:], axis=0, return_inverse=True)
            if with_jk:
                weight = fcfc * fcjk
                rad = jnp.stack([jnp.exp(-e * (s2 + rjk2)) * weight for e in etas], axis=-1)
            else:  # exp(−η(r_a² + r_b²)) factorises: K exponentials instead of K²
                ea = jnp.exp(-etas * r2[:, None]) * fc[:, None]  # [K, H]
                rad = jnp.where(pair_mask[..., None], ea[:, None, :] * ea[None, :, :], 0.0)
            ang = jnp.stack([_pow(1.0 + lam * cos, zeta) * 2.0 ** (1.0 - zeta)
                             for zeta, lam in zl], axis=-1)  # [K, K, Z]
            angf = (ang[:, :, None, :] * onehot[None, :, :, None]).reshape(n_k, n_k, -1)
            y = jnp.einsum("abh,abz->ahz", rad, angf)  # [K, H, E·Z]
            x = jnp.einsum("ae,ahz->ehz", onehot, y).reshape(n_el, len(etas), n_el, len(zl))
            feats.append(x[:, eta_idx.reshape(-1), :, zl_idx.reshape(-1)])  # [G, E, E]
        full = jnp.concatenate(feats, axis=0)  # [n_angular, E, E]: ordered pairs, j ≠ k
        blocks = []
        for a, b in params.pairs():
            blocks.append(full[:, a, b] * (0.5 if a == b else 1.0))
        out.append(jnp.stack(blocks).reshape(-1))
    return jnp.concatenate(out)


def _env(system: System, params: ACSFParams, max_neighbors: int | None,
         positions: jax.Array | None) -> Environment:
    if max_neighbors is None:
        max_neighbors = _max_neighbors(system, params.r_cut)
    return environment(system, max_neighbors, cutoff=params.r_cut, positions=positions)


def acsf(
    system: System,
    params: ACSFParams,
    *,
    max_neighbors: int | None = None,
    positions: jax.Array | None = None,
    batch_size: int | None = None,
) -> jax.Array:
    """ACSF of every atom of one structure.

    Args:
      system: one unbatched structure with edges built for a cutoff ``>= params.r_cut``.
      params: configuration (:func:`acsf_params` or :func:`grid`).
      max_neighbors: static neighbour capacity per atom; default: measured on the host with
        :func:`~jaxpot.descriptors.environment.max_neighbors` (pass it explicitly under
        ``jit``/``vmap``).
      positions: optional ``[n_atoms, 3]`` positions (Å) overriding ``system.positions``.
      batch_size: atoms per chunk (see :func:`~jaxpot.descriptors.environment.map_atoms`).

    Returns:
      ``[n_atoms, params.n_features]``; rows of padding atoms are 0; every entry is NaN if
      some atom has more than ``max_neighbors`` neighbours within ``r_cut``.
    """
    env = _env(system, params, max_neighbors, positions)
    feats = map_atoms(lambda a: acsf_atom(params, *a), (env.vectors, env.mask, env.species),
                      batch_size)
    feats = jnp.where(system.atom_mask[:, None], feats, 0.0)
    return jnp.where(env.overflow, jnp.nan, feats)


def acsf_jacobian(
    system: System,
    params: ACSFParams,
    *,
    max_neighbors: int | None = None,
    positions: jax.Array | None = None,
    dense: bool = True,
    batch_size: int | None = 8,
) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, Environment]:
    """ACSF values and their derivatives with respect to positions.

    Each atom's features depend only on its ``K`` neighbour vectors, so the Jacobian is built
    per atom with ``jax.jacfwd`` (``3K`` tangents) or ``jax.jacrev`` (``F`` cotangents),
    whichever is fewer, and scattered onto
    the atoms: no ``[n_atoms·n_features, n_atoms·3]`` reverse pass.

    Args:
      system, params, max_neighbors, positions, batch_size: as in :func:`acsf`.
      dense: return dscribe's dense layout; otherwise the per-slot derivatives and the
        environment.

    Returns:
      ``(values, jacobian)`` with ``values`` ``[n_atoms, F]`` and ``jacobian``
      ``[n_atoms, n_atoms, 3, F]`` (entry ``[i, j, c, f] = ∂G_{i,f} / ∂x_{j,c}``, dscribe's
      ``derivatives`` layout), or, with ``dense=False``, ``(values, local, env)`` with
      ``local`` ``[n_atoms, K, 3, F]`` = ``∂G_i / ∂r_{ia}``.
    """
    env = _env(system, params, max_neighbors, positions)

    # forward mode needs 3K tangents, reverse mode F cotangents: take the cheaper one
    jac = jax.jacrev if params.n_features < 3 * env.vectors.shape[1] else jax.jacfwd

    def one(v, m, s):
        f = lambda vv: acsf_atom(params, vv, m, s)  # noqa: E731
        return f(v), jnp.moveaxis(jac(f)(v), 0, -1)  # [F], [K, 3, F]

    vals, local = map_atoms(lambda a: one(*a), (env.vectors, env.mask, env.species),
                            batch_size)
    amask = system.atom_mask
    vals = jnp.where(amask[:, None], vals, 0.0)
    local = jnp.where(amask[:, None, None, None] & env.mask[..., None, None], local, 0.0)
    vals = jnp.where(env.overflow, jnp.nan, vals)
    if not dense:
        return vals, local, env
    return vals, dense_jacobian(local, env)


