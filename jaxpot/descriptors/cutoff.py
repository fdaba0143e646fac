"""Smooth radial cutoff functions and envelopes.

All functions take distances ``r`` (any shape, Å) and a cutoff radius ``r_cut`` (Å) and return
values of the same shape that are exactly 0 for ``r >= r_cut``. They are written with
``jnp.where`` on the raw argument before any power so that gradients are finite everywhere,
including at ``r = 0`` and beyond the cutoff (where they are exactly 0).

Continuity orders at ``r = r_cut`` (``C^k``: the value and the first ``k`` derivatives vanish
there, the ``(k+1)``-th jumps):

==========================  =================  ===========================================
function                    order at r_cut     notes
==========================  =================  ===========================================
:func:`cosine_cutoff`       C¹                 Behler's ``0.5 (cos(π r / r_c) + 1)``
:func:`polynomial_cutoff`   C^p                ``1 − smoothstep_p(r/r_c)``; also C^p-flat at 0
:func:`polynomial_envelope` C²                 DimeNet/NequIP envelope, ``p`` sets the shape
==========================  =================  ===========================================

References:
  J. Behler, "Atom-centered symmetry functions for constructing high-dimensional neural network
  potentials", J. Chem. Phys. 134, 074106 (2011).
  J. Gasteiger, J. Groß, S. Günnemann, "Directional message passing for molecular graphs",
  ICLR (2020) (polynomial envelope).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["cosine_cutoff", "polynomial_cutoff", "polynomial_envelope", "continuity_order"]


def _unit(r: jax.Array, r_cut: float) -> tuple[jax.Array, jax.Array]:
    """``x = r / r_cut`` clipped to [0, 1] and the mask ``r < r_cut``."""
    r = jnp.asarray(r)
    inside = r < r_cut
    x = jnp.where(inside, r, 0.0) / r_cut
    return jnp.clip(x, 0.0, 1.0), inside


def cosine_cutoff(r: jax.Array, r_cut: float) -> jax.Array:
    """Behler's cosine cutoff ``f_c(r) = 0.5 (cos(π r / r_c) + 1)`` for ``r < r_c``, else 0.

    Continuous with its first derivative at ``r_c`` (C¹); the second derivative jumps from
    ``π²/(2 r_c²)`` to 0. This is the cutoff used by dscribe's ACSF.

    Args:
      r: distances, any shape, Å.
      r_cut: cutoff radius, Å.

    Returns:
      Array of the shape of ``r``, values in [0, 1].
    """
    x, inside = _unit(r, r_cut)
    return jnp.where(inside, 0.5 * (jnp.cos(math.pi * x) + 1.0), 0.0)


def polynomial_cutoff(r: jax.Array, r_cut: float, p: int = 3) -> jax.Array:
    """Polynomial cutoff of selectable smoothness: ``1 − S_p(r / r_c)`` for ``r < r_c``, else 0.

    ``S_p`` is the order-``p`` smoothstep polynomial, so
    ``f(x) = (1 − x)^{p+1} Σ_{k=0}^{p} C(p+k, k) x^k``. ``f(0) = 1``, and the first ``p``
    derivatives vanish at both ``x = 0`` and ``x = 1``: the function is C^p at the cutoff.
    ``p = 1`` is the cubic ``1 − 3x² + 2x³``.

    Args:
      r: distances, any shape, Å.
      r_cut: cutoff radius, Å.
      p: smoothness order (integer ≥ 0).

    Returns:
      Array of the shape of ``r``, values in [0, 1], monotonically decreasing.
    """
    if p < 0:
        raise ValueError(f"polynomial_cutoff: p must be >= 0, got {p}")
    x, inside = _unit(r, r_cut)
    poly = sum(math.comb(p + k, k) * x**k for k in range(p + 1))
    return jnp.where(inside, (1.0 - x) ** (p + 1) * poly, 0.0)


def polynomial_envelope(r: jax.Array, r_cut: float, p: int = 6) -> jax.Array:
    """DimeNet's polynomial envelope ``u(x) = 1 − (p+1)(p+2)/2 x^p + p(p+2) x^{p+1}
    − p(p+1)/2 x^{p+2}``, ``x = r / r_c``, for ``r < r_c``, else 0.

    The value and the first two derivatives vanish at ``r_c`` (C² for every ``p``); larger
    ``p`` keeps ``u`` close to 1 over more of the range.

    Args:
      r: distances, any shape, Å.
      r_cut: cutoff radius, Å.
      p: exponent (integer ≥ 1).

    Returns:
      Array of the shape of ``r``.
    """
    if p < 1:
        raise ValueError(f"polynomial_envelope: p must be >= 1, got {p}")
    x, inside = _unit(r, r_cut)
    u = (
        1.0
        - 0.5 * (p + 1) * (p + 2) * x**p
        + p * (p + 2) * x ** (p + 1)
        - 0.5 * p * (p + 1) * x ** (p + 2)
    )
    return jnp.where(inside, u, 0.0)


def continuity_order(name: str, p: int | None = None) -> int:
    """Continuity order ``k`` (C^k) at the cutoff of the cutoff function called ``name``.

    Args:
      name: ``"cosine"``, ``"polynomial"`` or ``"envelope"``.
      p: the ``p`` argument for ``"polynomial"`` (default 3).
    """
    if name == "cosine":
        return 1
    if name == "polynomial":
        return 3 if p is None else int(p)
    if name == "envelope":
        return 2
    raise ValueError(f"unknown cutoff function {name!r}; use cosine, polynomial or envelope")
