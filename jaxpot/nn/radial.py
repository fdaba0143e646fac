"""Radial basis functions and cutoff envelopes for message-passing potentials.

The radial embedding of an edge of length ``r`` is ``B_n(r) · u(r / r_c)``, where ``B_n`` are
the zeroth-order spherical Bessel functions of NequIP/DimeNet and ``u`` the polynomial envelope
of order ``p``. ``B_n(r_c) = 0`` and ``u`` vanishes with its first derivative at ``r_c``, so the
product, and any bias-free MLP with ``silu`` applied to it, vanishes at the cutoff together with
its first and second derivatives: energies, forces and the Hessian are continuous when a
neighbour crosses ``r_c``. Edges at or beyond ``r_c`` (a Verlet skin) are masked to exactly 0.

References:
  Batzner et al., "E(3)-equivariant graph neural networks for data-efficient and accurate
  interatomic potentials", Nat. Commun. 13, 2453 (2022).
  Gasteiger, Groß, Günnemann, "Directional message passing for molecular graphs", ICLR 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["bessel_basis", "polynomial_envelope", "radial_embedding", "RadialMLP",
           "edge_geometry"]


def bessel_basis(r: jax.Array, num_basis: int, cutoff: float) -> jax.Array:
    """Spherical Bessel functions ``sqrt(2/r_c) sin(nπr/r_c) / r``, n = 1..num_basis.

    Args:
      r: ``[...]`` distances in Å, strictly positive.
      num_basis: number of functions.
      cutoff: r_c in Å.

    Returns:
      ``[..., num_basis]`` values in Å^-3/2.
    """
    n = jnp.arange(1, num_basis + 1, dtype=r.dtype)
    return jnp.sqrt(2.0 / cutoff) * jnp.sin(n * jnp.pi * r[..., None] / cutoff) / r[..., None]


def polynomial_envelope(x: jax.Array, p: int = 6) -> jax.Array:
    """NequIP/DimeNet envelope ``u(x) = 1 − (p+1)(p+2)/2 x^p + p(p+2) x^{p+1} − p(p+1)/2 x^{p+2}``.

    ``u(0) = 1``; ``u(1) = u'(1) = 0``. Zero for ``x ≥ 1``.

    Args:
      x: ``[...]`` reduced distance ``r / r_c`` (dimensionless).
      p: polynomial order (≥ 2).
    """
    if p < 2:
        raise ValueError(f"envelope order p must be >= 2, got {p}")
    xp = x**p
    u = 1.0 - 0.5 * (p + 1) * (p + 2) * xp + p * (p + 2) * xp * x - 0.5 * p * (p + 1) * xp * x * x
    return jnp.where(x < 1.0, u, 0.0)


def radial_embedding(r: jax.Array, inside: jax.Array, *, cutoff: float, num_basis: int,
                     envelope_p: int) -> jax.Array:
    """Bessel basis times envelope, exactly 0 on edges that are not ``inside``.

    Args:
      r: ``[n_edges]`` distances, Å; must be positive on every edge (use a safe value outside).
      inside: ``[n_edges]`` bool, real edges with ``r < cutoff``.

    Returns:
      ``[n_edges, num_basis]``.
    """
    emb = bessel_basis(r, num_basis, cutoff) * polynomial_envelope(r / cutoff, envelope_p)[:, None]
    return jnp.where(inside[:, None], emb, 0.0)


class RadialMLP(nn.Module):
    """Bias-free MLP ``silu(... silu(x W1) ...) W_out`` mapping the radial embedding to weights.

    Without biases and with ``silu(0) = 0`` the MLP maps 0 to exactly 0, so it preserves the
    vanishing of the radial embedding at (and beyond) the cutoff.

    Attributes:
      hidden: widths of the hidden layers.
      num_out: number of outputs (tensor-product path weights).
    """

    hidden: Sequence[int]
    num_out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[n_edges, num_basis] -> [n_edges, num_out]``."""
        for i, width in enumerate(self.hidden):
            x = nn.Dense(width, use_bias=False, name=f"dense_{i}",
                         kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"))(x)
            x = jax.nn.silu(x)
        return nn.Dense(self.num_out, use_bias=False, name="dense_out",
                        kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "normal"))(x)


def edge_geometry(vectors: jax.Array, edge_mask: jax.Array, cutoff: float):
    """Distances, unit-safe vectors and the inside-cutoff mask with safe gradients.

    Padding edges and edges at or beyond ``cutoff`` are replaced by a unit vector *before* the
    norm (double-where trick), so neither the value nor the gradient can be NaN; callers must
    zero everything these edges produce (the radial embedding does).

    Args:
      vectors: ``[n_edges, 3]`` Å.
      edge_mask: ``[n_edges]`` bool, real edges.
      cutoff: Å.

    Returns:
      ``(r [n_edges] Å, safe_vectors [n_edges, 3] Å, inside [n_edges] bool)``.
    """
    r2 = jnp.sum(vectors * vectors, axis=-1)
    inside = edge_mask & (r2 < cutoff * cutoff)
    unit = jnp.zeros_like(vectors).at[:, 2].set(1.0)
    safe = jnp.where(inside[:, None], vectors, unit)
    r = jnp.sqrt(jnp.sum(safe * safe, axis=-1))
    return r, safe, inside
