"""Ewald splitting of the Coulomb sum: parameters from a target accuracy, and the k-space sum.

The periodic Coulomb energy of point charges ``q_i`` in a cell of volume ``V`` is split with a
Gaussian of inverse width ``α`` (Å⁻¹) into

- a real-space sum ``½ Σ_{i,j,n}' q_i q_j erfc(α r)/r`` over pairs closer than ``cutoff``
  (the edges of the :class:`~jaxpot.System`),
- a reciprocal-space sum ``(2π/V) Σ_{k≠0} exp(−k²/4α²)/k² |S(k)|²`` with the structure factor
  ``S(k) = Σ_j q_j exp(i k·r_j)``, over ``|k| < k_cut``,
- the self term ``−(α/√π) Σ q_i²`` and, for a charged cell, the neutralising background
  ``−π Q²/(2 V α²)`` (``Q = Σ q_i``),

all multiplied by :data:`jaxpot.units.coulomb_constant`. With ``η = sqrt(−ln ε)`` for a target
relative accuracy ``ε``, :func:`ewald_parameters` takes ``α = η / cutoff`` and ``k_cut = 2 α η``,
so that both truncated tails are of order ``exp(−η²) = ε`` (Kolafa & Perram, Mol. Simul. 9, 351
(1992)).

Inside ``jax.jit`` the k-vectors need a static count. They are the integer vectors
``m`` of a half box ``|m_a| ≤ kmax_a`` (``k`` and ``−k`` counted once), with
``kmax_a = ceil(k_cut L_a / 2π)`` for the longest lattice vectors ``L_a`` the settings were made
for; ``k = 2π m · cell⁻ᵀ`` and vectors with ``|k| ≥ k_cut`` get weight 0. That box contains
every ``|k| < k_cut`` of any cell (triclinic too) whose lattice vectors are no longer than
``max_lengths``; for a longer one the energy is NaN, never silently wrong.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ewald_parameters", "kmax_for", "half_kgrid", "reciprocal_energy", "safe_cell",
           "cell_fits"]

_HI = jax.lax.Precision.HIGHEST


def ewald_parameters(accuracy: float, cutoff: float) -> tuple[float, float]:
    """``(α [Å⁻¹], k_cut [Å⁻¹])`` for a relative accuracy and a real-space cutoff.

    Args:
      accuracy: target relative accuracy ``ε`` in (0, 1); the truncated tails are ~``ε``.
      cutoff: real-space cutoff in Å (> 0).

    Raises:
      ValueError: accuracy outside (0, 1) or a cutoff that is not positive.
    """
    if not 0.0 < float(accuracy) < 1.0:
        raise ValueError(f"ewald: accuracy must be in (0, 1), got {accuracy!r}")
    if not float(cutoff) > 0.0:
        raise ValueError(f"ewald: the real-space cutoff must be > 0 Å, got {cutoff!r}")
    eta = math.sqrt(-math.log(float(accuracy)))
    alpha = eta / float(cutoff)
    return alpha, 2.0 * alpha * eta


def kmax_for(kcut: float, max_lengths) -> tuple[int, int, int]:
    """Integer half-widths of the k box that covers ``|k| < kcut`` for the given lengths (Å)."""
    lengths = np.broadcast_to(np.asarray(max_lengths, np.float64), (3,))
    if not np.all(np.isfinite(lengths) & (lengths > 0)):
        raise ValueError(f"ewald: max_lengths must be positive lengths in Å, got {max_lengths!r}")
    return tuple(int(math.ceil(kcut * float(x) / (2.0 * math.pi))) for x in lengths)


def half_kgrid(kmax) -> np.ndarray:
    """Integer vectors ``m ≠ 0`` of the box ``|m_a| ≤ kmax_a``, one of each ``±m`` pair."""
    axes = [np.arange(-k, k + 1) for k in kmax]
    m = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    first = np.where(m[:, 0] != 0, m[:, 0], np.where(m[:, 1] != 0, m[:, 1], m[:, 2]))
    return m[first > 0].astype(np.float64)


def safe_cell(cell: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(cell, flat)``: a zero-volume cell (a padding frame) replaced by a 100 Å cube.

    Keeps every derived quantity finite (and its gradient) where the result is discarded.
    """
    volume = jnp.abs(jnp.linalg.det(cell))
    flat = volume < 1e-6
    eye = jnp.eye(3, dtype=cell.dtype) * 100.0
    return jnp.where(flat, eye, cell), flat


def cell_fits(cell: jax.Array, max_lengths) -> jax.Array:
    """True when no lattice vector is longer than ``max_lengths`` (Å, per direction)."""
    lengths = jnp.sqrt(jnp.sum(cell * cell, axis=1))
    limit = jnp.asarray(np.broadcast_to(np.asarray(max_lengths, np.float64), (3,)), cell.dtype)
    return jnp.all(lengths <= limit * (1 + 1e-9))


def reciprocal_energy(positions, charges, cell, alpha: float, kcut: float,
                      grid: np.ndarray) -> jax.Array:
    """``(2π/V) Σ_{0<|k|<kcut} exp(−k²/4α²)/k² |S(k)|²`` in e²/Å (no Coulomb constant).

    Args:
      positions: ``[n, 3]`` Å (padding atoms must carry charge 0).
      charges: ``[n]`` e.
      cell: ``[3, 3]`` non-singular (see :func:`safe_cell`).
      alpha: splitting parameter, Å⁻¹.
      kcut: reciprocal cutoff, Å⁻¹.
      grid: ``[n_k, 3]`` half box of integer vectors (:func:`half_kgrid`); it must cover
        ``|k| < kcut`` for this cell (:func:`cell_fits` with the lengths it was built for).
    """
    dtype = positions.dtype
    recip = 2.0 * jnp.pi * jnp.linalg.inv(cell).T
    k = jnp.matmul(jnp.asarray(grid, dtype), recip, precision=_HI)
    k2 = jnp.sum(k * k, -1)
    inside = k2 < kcut * kcut
    k2s = jnp.where(inside, k2, 1.0)
    weight = jnp.where(inside, jnp.exp(-k2s / (4.0 * alpha * alpha)) / k2s, 0.0)
    phase = jnp.matmul(positions, k.T, precision=_HI)  # [n, n_k]
    s_re = jnp.matmul(charges, jnp.cos(phase), precision=_HI)
    s_im = jnp.matmul(charges, jnp.sin(phase), precision=_HI)
    volume = jnp.abs(jnp.linalg.det(cell))
    return 4.0 * jnp.pi / volume * jnp.sum(weight * (s_re * s_re + s_im * s_im))
