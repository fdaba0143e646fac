"""Smooth Overlap of Atomic Positions (SOAP) power spectrum, dscribe-compatible GTO basis.

The neighbour density of atom ``i`` for element ``Z`` is a sum of unnormalised Gaussians
``ρ_i^Z(r) = Σ_{j ∈ Z} exp(−|r − r_ij|² / (2σ²))`` over neighbours (all periodic images) within
``r_cut + padding`` **and the centre atom itself** (``r_ii = 0``, dscribe's convention). It is
expanded as ``c^Z_{nlm} = ∫ d³r g_{nl}(r) Y_{lm}(r̂) ρ_i^Z(r)`` over all space, with real
orthonormal spherical harmonics ``Y_{lm}`` and dscribe's orthonormalised Gaussian-type radial
functions ``g_{nl}(r) = Σ_{n'} β^l_{nn'} r^l exp(−α_{ln'} r²)``:

* ``α_{ln} = −ln(10⁻³ / a_n^l) / a_n²`` with ``a_n`` evenly spaced on ``[1, r_cut]`` Å;
* ``β^l = S_l^{−1/2}`` (Löwdin), ``S_l[n, n'] = ½ Γ(l + 3/2) (α_{ln} + α_{ln'})^{−l−3/2}``.

The integral is analytic (no quadrature). With ``p = α + 1/(2σ²)`` and the solid harmonic
``R_{lm}(r) = r^l Y_{lm}(r̂)``, one Gaussian at ``r_j`` contributes

``Σ_{n'} β^l_{nn'} · 4π √π / (2^{l+2} σ^{2l} p^{l+3/2}) · exp(−α r_j² / (2σ² p)) · R_{lm}(r_j)``

which depends on ``r_j`` only through ``r_j²`` and a polynomial: no square roots, so it is
smooth everywhere, including at ``r_j = 0``.

Power spectrum (dscribe's normalisation): ``p^{ZZ'}_{nn'l} = π √(8/(2l+1)) Σ_m c^Z_{nlm}
c^{Z'}_{n'lm}``. Feature layout (``compression="off"``, identical to dscribe): element-pair blocks
``(Z_a, Z_b)``, ``a ≤ b`` in row-major order (``(0,0), (0,1), …, (1,1), …``); inside a block
``l`` is the outer index, then ``n``, then ``n'`` (``n' ≥ n`` on diagonal blocks). Compression
modes ``"crossover"`` (only ``Z = Z'`` blocks), ``"mu2"`` (densities summed over elements) and
``"mu1nu1"`` (``Σ_m c^Z_{nlm} Σ_{Z'} c^{Z'}_{n'lm}``) follow dscribe (Darby et al. 2022).

Differences from dscribe (documented, by design): the neighbour cut is applied to the System's
edges; build them with ``cutoff >= params.neighbor_cutoff`` (``r_cut`` plus dscribe's padding
``σ √(2 ln 1000)``), edges longer than that contribute exactly 0. As in dscribe, this hard cut is
not smooth (the contribution of a neighbour at the padded cutoff is ≈10⁻³ of a close one); pass
``smooth=True`` to multiply each neighbour's density by
:func:`~jaxpot.descriptors.cutoff.polynomial_cutoff` over ``[0, neighbor_cutoff]`` for MD-grade
smoothness (then the values no longer match dscribe). ``normalize=True`` divides each atom's
feature vector by its Euclidean norm. Only ``rbf="gto"``, ``weighting=None`` and
``average="off"`` are implemented.

References:
  A. P. Bartók, R. Kondor, G. Csányi, "On representing chemical environments", Phys. Rev. B
  87, 184115 (2013).
  L. Himanen et al., "DScribe: Library of descriptors for machine learning in materials
  science", Comput. Phys. Commun. 247, 106949 (2020).
  J. P. Darby et al., "Compressing local atomic neighbourhood descriptors", npj Comput. Mater.
  8, 166 (2022).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.descriptors.cutoff import polynomial_cutoff
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

__all__ = ["SOAPParams", "soap_params", "gto_basis", "soap", "soap_atom", "soap_jacobian",
           "coefficients", "solid_harmonics"]

_COMPRESSIONS = ("off", "crossover", "mu2", "mu1nu1")


def gto_basis(r_cut: float, n_max: int, l_max: int) -> tuple[np.ndarray, np.ndarray]:
    """dscribe's orthonormalised GTO radial basis parameters.

    Args:
      r_cut: radial cutoff, Å.
      n_max: number of radial functions.
      l_max: largest angular momentum.

    Returns:
      ``(alphas, betas)``: ``[l_max+1, n_max]`` exponents (Å⁻²) and ``[l_max+1, n_max, n_max]``
      Löwdin coefficients.

    Raises:
      ValueError: if an overlap matrix is not positive definite (lower ``n_max`` or raise
        ``r_cut``, as dscribe advises).
    """
    a = np.linspace(1.0, r_cut, n_max)
    alphas = np.zeros((l_max + 1, n_max))
    betas = np.zeros((l_max + 1, n_max, n_max))
    for l in range(l_max + 1):
        alpha = -np.log(1e-3 / a**l) / a**2
        s = 0.5 * math.gamma(l + 1.5) * (alpha[:, None] + alpha[None, :]) ** (-l - 1.5)
        w, v = np.linalg.eigh(s)
        if w.min() <= 0:
            raise ValueError(
                f"SOAP GTO basis: overlap matrix for l={l} is not positive definite "
                f"(r_cut={r_cut}, n_max={n_max}); lower n_max or raise r_cut"
            )
        alphas[l] = alpha
        betas[l] = (v / np.sqrt(w)) @ v.T
    return alphas, betas


@dataclasses.dataclass(frozen=True, eq=False)
class SOAPParams:
    """SOAP configuration (hashable by identity; close over it in ``jit``).

    Attributes:
      r_cut: basis cutoff, Å (dscribe's ``r_cut``).
      n_max, l_max: radial and angular resolution.
      sigma: Gaussian width σ, Å.
      species: sorted atomic numbers.
      compression: ``"off"``, ``"crossover"``, ``"mu2"`` or ``"mu1nu1"``.
      cutoff_padding: extra neighbour range beyond ``r_cut``, Å (dscribe: ``σ √(2 ln 1000)``).
      smooth: multiply densities by a C³ polynomial cutoff (not dscribe-compatible).
      normalize: divide each feature vector by its norm.
      alphas, betas: GTO parameters from :func:`gto_basis`.
    """

    r_cut: float
    n_max: int
    l_max: int
    sigma: float
    species: tuple[int, ...]
    compression: str
    cutoff_padding: float
    smooth: bool
    normalize: bool
    alphas: np.ndarray
    betas: np.ndarray

    @property
    def neighbor_cutoff(self) -> float:
        """Neighbours closer than this contribute (Å); build edges at least this long."""
        return self.r_cut + self.cutoff_padding

    @property
    def n_features(self) -> int:
        """Features per atom (dscribe's ``get_number_of_features``)."""
        return len(_layout(self))


def soap_params(
    r_cut: float,
    n_max: int,
    l_max: int,
    species: Sequence[int | str],
    *,
    sigma: float = 1.0,
    compression: str = "off",
    cutoff_padding: float | None = None,
    smooth: bool = False,
    normalize: bool = False,
) -> SOAPParams:
    """Build :class:`SOAPParams` (dscribe's ``SOAP(r_cut, n_max, l_max, sigma, species)``).

    Args:
      r_cut: basis cutoff, Å.
      n_max: radial basis size (≥ 1).
      l_max: largest angular momentum (≥ 0).
      species: atomic numbers or symbols.
      sigma: Gaussian width, Å.
      compression: ``"off"`` (default), ``"crossover"``, ``"mu2"`` or ``"mu1nu1"``.
      cutoff_padding: neighbour range beyond ``r_cut`` (default dscribe's ``σ √(2 ln 1000)``).
      smooth: apply a smooth cutoff to the densities (breaks dscribe agreement).
      normalize: L2-normalise each atom's feature vector.
    """
    from ase.data import atomic_numbers

    if not (r_cut > 1.0 and n_max >= 1 and l_max >= 0 and sigma > 0):
        raise ValueError(
            f"SOAP needs r_cut > 1 Å, n_max >= 1, l_max >= 0, sigma > 0; got r_cut={r_cut}, "
            f"n_max={n_max}, l_max={l_max}, sigma={sigma}"
        )
    if compression not in _COMPRESSIONS:
        raise ValueError(f"SOAP compression must be one of {_COMPRESSIONS}, got {compression!r}")
    numbers = sorted({atomic_numbers[s] if isinstance(s, str) else int(s) for s in species})
    if not numbers or numbers[0] < 1:
        raise ValueError(f"SOAP species must be atomic numbers >= 1, got {list(species)}")
    if cutoff_padding is None:
        cutoff_padding = sigma * math.sqrt(-2.0 * math.log(1e-3))
    alphas, betas = gto_basis(r_cut, n_max, l_max)
    return SOAPParams(float(r_cut), int(n_max), int(l_max), float(sigma), tuple(numbers),
                      compression, float(cutoff_padding), bool(smooth), bool(normalize),
                      alphas, betas)


def _layout(params: SOAPParams) -> np.ndarray:
    """Flat indices into the ``[E, E, n, n, L]`` (or ``[1, E, n, n, L]``) spectrum."""
    n_el, n, n_l = len(params.species), params.n_max, params.l_max + 1
    mode = params.compression
    idx = []

    def flat(a, b, n1, n2, l):
        return (((a * n_el + b) * n + n1) * n + n2) * n_l + l

    if mode == "off":
        for a in range(n_el):
            for b in range(a, n_el):
                for l in range(n_l):
                    for n1 in range(n):
                        for n2 in range(n1 if a == b else 0, n):
                            idx.append(flat(a, b, n1, n2, l))
    elif mode == "crossover":
        for a in range(n_el):
            for l in range(n_l):
                for n1 in range(n):
                    for n2 in range(n1, n):
                        idx.append(flat(a, a, n1, n2, l))
    elif mode == "mu2":
        for l in range(n_l):
            for n1 in range(n):
                for n2 in range(n1, n):
                    idx.append(flat(0, 0, n1, n2, l))
    else:  # mu1nu1: spectrum stored as [E, 1→E slot 0, n, n, L]
        for a in range(n_el):
            for l in range(n_l):
                for n1 in range(n):
                    for n2 in range(n):
                        idx.append(flat(a, 0, n1, n2, l))
    return np.asarray(idx, np.int64)


def _primitives(params: SOAPParams, r2: jax.Array) -> jax.Array:
    """``[..., L, n']`` radial integrals of the primitive (not orthonormalised) GTOs."""
    s2 = params.sigma**2
    ls = np.arange(params.l_max + 1)[:, None]
    p = params.alphas + 1.0 / (2.0 * s2)  # [L, n']
    pref = 4.0 * math.pi * math.sqrt(math.pi) / (2.0 ** (ls + 2) * s2**ls * p ** (ls + 1.5))
    decay = params.alphas / (2.0 * s2 * p)  # [L, n']
    return pref * jnp.exp(-decay * r2[..., None, None])


def _radial(params: SOAPParams, r2: jax.Array) -> jax.Array:
    """``[..., L, n]`` orthonormalised radial integrals (without the solid harmonic)."""
    return jnp.einsum("lmk,...lk->...lm", params.betas, _primitives(params, r2))


def _lm_of(params: SOAPParams) -> np.ndarray:
    return np.concatenate([np.full(2 * l + 1, l) for l in range(params.l_max + 1)])


def solid_harmonics(vectors: jax.Array, l_max: int) -> jax.Array:
    """Real regular solid harmonics ``R_{lm}(r) = r^l Y_{lm}(r̂)``, orthonormal ``Y_{lm}``.

    Polynomials in ``x, y, z`` (no square root of ``r``, no division by it: smooth at
    ``r = 0``), built by the associated-Legendre recurrence in ``z`` and ``r²`` times
    ``Re/Im (x + iy)^m``. Inside each ``l`` the order is ``m = −l … l``: ``m < 0`` carries
    ``sin(|m|φ)``, ``m > 0`` ``cos(mφ)``; no Condon–Shortley phase. Any other real orthonormal
    convention (e3nn's, for instance) differs by an orthogonal matrix per ``l``, which the
    power spectrum does not see.

    Args:
      vectors: ``[..., 3]``.
      l_max: largest ``l``.

    Returns:
      ``[..., (l_max+1)²]``.
    """
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    r2 = x * x + y * y + z * z
    re, im = [jnp.ones_like(x)], [jnp.zeros_like(x)]  # Re, Im of (x + iy)^m
    for m in range(l_max):
        re.append(x * re[m] - y * im[m])
        im.append(x * im[m] + y * re[m])
    out = []
    leg: dict[tuple[int, int], jax.Array | float] = {}  # r^l P_l^m(z/r) / ρ^m, unsigned
    for m in range(l_max + 1):
        leg[m, m] = float(np.prod(np.arange(2 * m - 1, 0, -2.0)))
        if m < l_max:
            leg[m + 1, m] = (2 * m + 1) * leg[m, m] * z
        for l in range(m + 2, l_max + 1):
            leg[l, m] = ((2 * l - 1) * z * leg[l - 1, m] - (l + m - 1) * r2 * leg[l - 2, m]) / (
                l - m)
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            a = abs(m)
            norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - a)
                             / math.factorial(l + a))
            if m == 0:
                out.append(norm * leg[l, 0] * jnp.ones_like(x))
            else:
                out.append(math.sqrt(2.0) * norm * leg[l, a] * (re[a] if m > 0 else im[a]))
    return jnp.stack(out, axis=-1)


def _neighbor_coeffs(params: SOAPParams, vectors: jax.Array) -> jax.Array:
    """``[..., n, (l_max+1)²]`` expansion coefficients of one Gaussian per vector."""
    r2 = jnp.sum(vectors * vectors, axis=-1)
    rad = _radial(params, r2)  # [..., L, n]
    sh = solid_harmonics(vectors, params.l_max)  # [..., (L)²]
    rad_lm = jnp.take(rad, _lm_of(params), axis=-2)  # [..., lm, n]
    return jnp.swapaxes(rad_lm, -1, -2) * sh[..., None, :]


def _weights(params: SOAPParams, vectors: jax.Array, mask: jax.Array) -> jax.Array:
    r2 = jnp.sum(vectors * vectors, axis=-1)
    keep = mask & (r2 < params.neighbor_cutoff**2)
    if not params.smooth:
        return keep.astype(vectors.dtype)
    ok = keep & (r2 > 0)
    r = jnp.where(ok, jnp.sqrt(jnp.where(ok, r2, 1.0)), 0.0)
    return jnp.where(keep, polynomial_cutoff(r, params.neighbor_cutoff, 3), 0.0)


def coefficients(params: SOAPParams, vectors: jax.Array, mask: jax.Array,
                 species: jax.Array, center_species: jax.Array) -> jax.Array:
    """Expansion coefficients ``c^Z_{nlm}`` of one atom's neighbour densities.

    Args:
      params: configuration.
      vectors: ``[K, 3]`` neighbour vectors, Å.
      mask: ``[K]`` filled slots.
      species: ``[K]`` neighbour atomic numbers.
      center_species: scalar atomic number of the centre (its own Gaussian is included).

    Returns:
      ``[n_elements, n_max, (l_max+1)²]``, ``m`` running over the real harmonics of
      :func:`solid_harmonics` for each ``l`` in turn.
    """
    n_el, n_l = len(params.species), params.l_max + 1
    w = _weights(params, vectors, mask)
    onehot = (species_index(species, params.species)[:, None] == jnp.arange(n_el)) * w[:, None]
    onehot = onehot.astype(vectors.dtype)
    r2 = jnp.sum(vectors * vectors, axis=-1)
    prim = _primitives(params, r2)  # [K, L, n']
    sh = solid_harmonics(vectors, params.l_max)  # [K, (L)²]
    # One product over neighbours for all (e, l, n') × (l', m) of the primitive integrals (the
    # l ≠ l' blocks are wasted flops, but one product beats L small ones), keep l = l', then
    # orthonormalise: the Löwdin matrices act after the neighbour sum, on [E, n', lm] only.
    n_k = r2.shape[0]
    q = (onehot[:, :, None, None] * prim[:, None]).reshape(n_k, -1)
    full = (q.T @ sh).reshape(n_el, n_l, params.n_max, -1)  # [E, L, n', lm]
    lm_of = _lm_of(params)
    c = full[:, lm_of, :, np.arange(lm_of.size)]  # [lm, E, n']
    c = jnp.einsum("mnk,mek->enm", params.betas[lm_of], c)
    self_c = _neighbor_coeffs(params, jnp.zeros((3,), vectors.dtype))  # [n, lm]
    own = (species_index(center_species, params.species) == jnp.arange(n_el)).astype(c.dtype)
    return c + own[:, None, None] * self_c


def _spectrum(params: SOAPParams, c: jax.Array) -> jax.Array:
    """Flat power spectrum (dscribe layout) from coefficients ``[E, n, lm]``."""
    mode = params.compression
    if mode == "mu2":
        left = right = jnp.sum(c, axis=0, keepdims=True)
    elif mode == "mu1nu1":
        left, right = c, jnp.sum(c, axis=0, keepdims=True)
    else:
        left = right = c
    blocks = []
    for l in range(params.l_max + 1):
        sl = slice(l * l, (l + 1) ** 2)
        fac = math.pi * math.sqrt(8.0 / (2 * l + 1))
        blocks.append(fac * jnp.einsum("anm,bkm->abnk", left[:, :, sl], right[:, :, sl]))
    full = jnp.stack(blocks, axis=-1)  # [Ea, Eb, n, n, L]
    if mode == "mu1nu1":  # pad to the [E, E, ...] indexing used by _layout
        full = jnp.pad(full, ((0, 0), (0, c.shape[0] - 1), (0, 0), (0, 0), (0, 0)))
    elif mode == "mu2":
        n_el = c.shape[0]
        full = jnp.pad(full, ((0, n_el - 1), (0, n_el - 1), (0, 0), (0, 0), (0, 0)))
    out = full.reshape(-1)[_layout(params)]
    if params.normalize:
        n2 = jnp.sum(out * out)
        ok = n2 > 0
        out = jnp.where(ok, out / jnp.sqrt(jnp.where(ok, n2, 1.0)), 0.0)
    return out


def soap_atom(params: SOAPParams, vectors: jax.Array, mask: jax.Array, species: jax.Array,
              center_species: jax.Array) -> jax.Array:
    """SOAP power spectrum of one atom (arguments as in :func:`coefficients`).

    Returns:
      ``[params.n_features]``.
    """
    return _spectrum(params, coefficients(params, vectors, mask, species, center_species))


def _env(system: System, params: SOAPParams, max_neighbors: int | None,
         positions: jax.Array | None) -> Environment:
    if max_neighbors is None:
        max_neighbors = _max_neighbors(system, params.neighbor_cutoff)
    return environment(system, max_neighbors, cutoff=params.neighbor_cutoff,
                       positions=positions)


def soap(
    system: System,
    params: SOAPParams,
    *,
    max_neighbors: int | None = None,
    positions: jax.Array | None = None,
    batch_size: int | None = 8,
) -> jax.Array:
    """SOAP power spectrum of every atom of one structure.

    Args:
      system: one unbatched structure with edges for a cutoff ``>= params.neighbor_cutoff``.
      params: configuration from :func:`soap_params`.
      max_neighbors: static neighbour capacity per atom (default: measured on the host; pass
        it explicitly under ``jit``/``vmap``).
      positions: optional ``[n_atoms, 3]`` positions overriding ``system.positions`` (Å).
      batch_size: atoms per chunk (see :func:`~jaxpot.descriptors.environment.map_atoms`);
        ``None``: all at once.

    Returns:
      ``[n_atoms, params.n_features]``; padding rows 0; all NaN if the capacity overflowed.
    """
    env = _env(system, params, max_neighbors, positions)
    args = (env.vectors, env.mask, env.species, system.species)
    feats = map_atoms(lambda a: soap_atom(params, *a), args, batch_size)
    feats = jnp.where(system.atom_mask[:, None], feats, 0.0)
    return jnp.where(env.overflow, jnp.nan, feats)


def soap_jacobian(
    system: System,
    params: SOAPParams,
    *,
    max_neighbors: int | None = None,
    positions: jax.Array | None = None,
    dense: bool = True,
    attach: bool = True,
    batch_size: int | None = 8,
):
    """SOAP values and their derivatives with respect to positions.

    The coefficients are sums of per-neighbour terms, so ``∂c/∂r_{ia}`` is one 3-tangent
    forward pass per neighbour; the spectrum's derivative along each of the ``3K`` directions is
    then a ``jax.jvp`` of the (bilinear) power spectrum. Atoms are processed ``batch_size`` at
    a time (``jax.lax.map``) to bound memory.

    Args:
      system, params, max_neighbors, positions: as in :func:`soap`.
      dense: return dscribe's dense layout; otherwise per-slot derivatives and the environment.
      attach: if True (default, what forces need) each centre moves with its atom; if False
        the centres stay fixed in space while atoms move (dscribe's default ``attach=False``):
        ``∂p_i/∂x_i`` then comes only from atom ``i``'s own Gaussian and its periodic images,
        and rows no longer sum to zero. Off-diagonal entries are the same either way.
      batch_size: atoms per chunk (``None``: all at once).

    Returns:
      ``(values [n_atoms, F], jacobian [n_atoms, n_atoms, 3, F])`` with
      ``jacobian[i, j, c, f] = ∂p_{i,f}/∂x_{j,c}`` (dscribe's ``derivatives`` layout); or,
      with ``dense=False``, ``(values, local [n_atoms, K, 3, F], env)``.
    """
    env = _env(system, params, max_neighbors, positions)
    n_el = len(params.species)

    def one(args):
        v, m, s, z = args
        c = coefficients(params, v, m, s, z)
        w = _weights(params, v, m)
        dphi = jax.vmap(jax.jacfwd(lambda x: _neighbor_coeffs(params, x)))(v)  # [K,n,lm,3]
        if params.smooth:
            phi = _neighbor_coeffs(params, v)
            dw = jax.vmap(jax.grad(lambda x, mm: _weights(params, x[None], mm[None])[0]))(v, m)
            dphi = dphi * w[:, None, None, None] + phi[..., None] * dw[:, None, None, :]
        else:
            dphi = dphi * w[:, None, None, None]
        onehot = (species_index(s, params.species)[:, None] == jnp.arange(n_el)).astype(c.dtype)
        tang = onehot[:, None, :, None, None] * jnp.moveaxis(dphi, -1, 1)[:, :, None]
        f = lambda cc: _spectrum(params, cc)  # noqa: E731
        jvp = lambda t: jax.jvp(f, (c,), (t,))[1]  # noqa: E731
        jv = jax.vmap(jax.vmap(jvp))(tang)  # [K, 3, F]
        # the centre's own Gaussian, displaced with its atom while the centre stays put
        dphi0 = jax.jacfwd(lambda x: _neighbor_coeffs(params, x))(jnp.zeros((3,), v.dtype))
        own = (species_index(z, params.species) == jnp.arange(n_el)).astype(c.dtype)
        jself = jax.vmap(jvp)(own[None, :, None, None] * jnp.moveaxis(dphi0, -1, 0)[:, None])
        return f(c), jv, jself

    args = (env.vectors, env.mask, env.species, system.species)
    vals, local, jself = map_atoms(one, args, batch_size)
    amask = system.atom_mask
    vals = jnp.where(amask[:, None], vals, 0.0)
    vals = jnp.where(env.overflow, jnp.nan, vals)
    local = jnp.where(amask[:, None, None, None] & env.mask[..., None, None], local, 0.0)
    if not dense:
        return vals, local, env
    jac = dense_jacobian(local, env)
    if not attach:
        diag = jnp.arange(system.n_atoms)
        jself = jnp.where(amask[:, None, None], jself, 0.0)
        jac = jac.at[diag, diag].add(jnp.sum(local, axis=1) + jself)
    return vals, jac
