"""Charge equilibration (QEq): charges that minimise a quadratic charge energy at fixed total
charge.

Given per-atom electronegativities ``χ_i`` (eV/e) and hardnesses ``J_i`` (eV/e²), the charges
minimise

    E_QEq(q) = Σ_i χ_i q_i + ½ Σ_i J_i q_i² + E_C(q)      subject to  Σ_i q_i = Q

where ``E_C(q)`` is any electrostatic energy that is quadratic in the charges (a direct sum of
Gaussian-smeared charges for clusters, an Ewald or P3M sum for periodic cells; the Gaussian
smearing keeps the short-distance interaction finite so the problem stays well posed). The
minimiser solves the linear system ``(diag(J) + C) q + λ 1 = −χ`` with ``1·q = Q``, where
``C = ∂²E_C/∂q²`` is exact as a Hessian because ``E_C`` is quadratic; ``λ`` is the Lagrange
multiplier (minus the equalised chemical potential).

Two solvers, both exact derivatives of the solution (forces = −∇E through the solve):

- ``method="exact"``: ``C`` built by ``jax.hessian`` of ``E_C`` and the bordered
  ``(n+1) × (n+1)`` system solved densely (``jnp.linalg.solve``, differentiated implicitly by
  JAX). O(n³); for small systems.
- ``method="cg"``: matrix-free conjugate gradients on the neutral subspace; the matrix-vector
  product ``C v`` is one gradient of ``E_C`` (``∇E_C(v) = C v`` for a quadratic form), and the
  solve is wrapped in ``jax.lax.custom_linear_solve`` so its derivative is another solve (implicit
  differentiation), not a derivative through the iterations.

Padding atoms (``atom_mask == False``) get charge 0 and take no part in the constraint.

References:
  Rappé, Goddard, "Charge equilibration for molecular dynamics simulations",
  J. Phys. Chem. 95, 3358 (1991); Ghasemi, Hofstetter, Saha, Goedecker, "Interatomic potentials
  for ionic systems with density functional accuracy based on charge densities obtained by a
  neural network", Phys. Rev. B 92, 045131 (2015) (CENT); Ko, Finkler, Goedecker, Behler,
  "A fourth-generation high-dimensional neural network potential with accurate electrostatics
  including non-local charge transfer", Nat. Commun. 12, 398 (2021).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpot.system import System

__all__ = ["QEqResult", "CoulombFn", "solve_qeq", "coulomb_matrix", "qeq_energy", "dipole"]

CoulombFn = Callable[[System, jax.Array], jax.Array]
"""``(system, charges [n_atoms] e) -> eV``: an electrostatic energy quadratic in the charges."""

METHODS = ("exact", "cg")


class QEqResult(NamedTuple):
    """The equilibrated charges of one structure and what goes with them.

    Attributes:
      charges: ``[n_atoms]`` e; 0 on padding atoms.
      energy: ``E_QEq`` at the solution (eV): ``Σ χ q + ½ Σ J q² + E_C(q)``.
      electrostatic: ``E_C(q)`` alone (eV).
      multiplier: the Lagrange multiplier ``λ`` (eV/e), minus the equalised chemical potential.
      dipole: ``[3]`` ``Σ q_i r_i`` in e·Å (positions as stored; origin-dependent unless the
        total charge is 0, and defined only up to lattice vectors in a periodic cell).
      total_charge: ``Σ q_i`` (e), equal to the requested total to solver precision.
    """

    charges: jax.Array
    energy: jax.Array
    electrostatic: jax.Array
    multiplier: jax.Array
    dipole: jax.Array
    total_charge: jax.Array


def dipole(system: System, charges: jax.Array) -> jax.Array:
    """``Σ_i q_i r_i`` over real atoms, e·Å (``[3]``)."""
    q = jnp.where(system.atom_mask, charges, 0.0)
    return jnp.einsum("i,ij->j", q, system.positions, precision=jax.lax.Precision.HIGHEST)


def coulomb_matrix(coulomb_fn: CoulombFn, system: System) -> jax.Array:
    """``C = ∂²E_C/∂q∂q`` (``[n_atoms, n_atoms]`` eV/e²), exact for a quadratic ``E_C``."""
    zeros = jnp.zeros(system.atom_mask.shape, system.positions.dtype)
    return jax.hessian(lambda q: coulomb_fn(system, q))(zeros)


def qeq_energy(coulomb_fn: CoulombFn, system: System, charges, electronegativity, hardness):
    """``(E_QEq, E_C)`` in eV for given charges (padding atoms ignored)."""
    mask = system.atom_mask
    q = jnp.where(mask, charges, 0.0)
    e_c = coulomb_fn(system, q)
    local = jnp.where(mask, electronegativity * q + 0.5 * hardness * q * q, 0.0)
    return jnp.sum(local) + e_c, e_c


def _check(system: System, electronegativity, hardness, method: str):
    if method not in METHODS:
        raise ValueError(f"solve_qeq: method must be one of {list(METHODS)}, got {method!r}")
    n = system.atom_mask.shape[0]
    if system.atom_mask.ndim != 1:
        raise ValueError("solve_qeq expects one unbatched System (use jax.vmap for a batch)")
    dtype = system.positions.dtype
    chi = jnp.broadcast_to(jnp.asarray(electronegativity, dtype), (n,))
    hard = jnp.broadcast_to(jnp.asarray(hardness, dtype), (n,))
    return chi, hard


def _solve_exact(coulomb_fn, system, chi, hard, total_charge):
    mask = system.atom_mask
    n = mask.shape[0]
    both = mask[:, None] & mask[None, :]
    a = jnp.where(both, coulomb_matrix(coulomb_fn, system) + jnp.diag(hard), 0.0)
    a = a + jnp.diag(jnp.where(mask, 0.0, 1.0).astype(a.dtype))  # padding: q_i = 0
    m = mask.astype(a.dtype)
    k = jnp.zeros((n + 1, n + 1), a.dtype)
    k = k.at[:n, :n].set(a).at[:n, n].set(m).at[n, :n].set(m)
    rhs = jnp.concatenate([jnp.where(mask, -chi, 0.0), jnp.asarray(total_charge, a.dtype)[None]])
    x = jnp.linalg.solve(k, rhs)
    return jnp.where(mask, x[:n], 0.0), x[n]


def _conjugate_gradient(matvec, b, tol, maxiter):
    """Plain CG for a symmetric positive (semi)definite operator, from x = 0."""
    bnorm2 = jnp.vdot(b, b)
    stop2 = (tol * tol) * bnorm2

    def cond(state):
        _, r, _, rr, k = state
        return (rr > stop2) & (k < maxiter)

    def body(state):
        x, r, p, rr, k = state
        ap = matvec(p)
        alpha = rr / jnp.where(jnp.vdot(p, ap) == 0, 1.0, jnp.vdot(p, ap))
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = jnp.vdot(r, r)
        p = r + (rr_new / jnp.where(rr == 0, 1.0, rr)) * p
        return x, r, p, rr_new, k + 1

    x0 = jnp.zeros_like(b)
    x, *_ = jax.lax.while_loop(cond, body, (x0, b, b, bnorm2, 0))
    return x


def _solve_cg(coulomb_fn, system, chi, hard, total_charge, tol, maxiter):
    mask = system.atom_mask
    dtype = system.positions.dtype
    n_real = jnp.maximum(jnp.sum(mask), 1).astype(dtype)

    def project(v):  # onto neutral vectors that are 0 on padding atoms
        v = jnp.where(mask, v, 0.0)
        return jnp.where(mask, v - jnp.sum(v) / n_real, 0.0)

    grad_c = jax.grad(lambda q: coulomb_fn(system, q))

    def apply_a(v):  # (C + diag J) v on real atoms; ∇E_C(v) = C v for a quadratic form
        v = jnp.where(mask, v, 0.0)
        return jnp.where(mask, grad_c(v) + hard * v, 0.0)

    def matvec(v):
        return project(apply_a(project(v)))

    q0 = jnp.where(mask, jnp.asarray(total_charge, dtype) / n_real, 0.0)
    b = project(-(jnp.where(mask, chi, 0.0) + apply_a(q0)))

    def solve(mv, rhs):
        return _conjugate_gradient(mv, project(rhs), tol, maxiter)

    x = jax.lax.custom_linear_solve(matvec, b, solve, symmetric=True)
    q = q0 + project(x)
    resid = jnp.where(mask, -chi - apply_a(q), 0.0)  # = λ on every real atom
    return q, jnp.sum(resid) / n_real


def solve_qeq(system: System, electronegativity, hardness, coulomb_fn: CoulombFn, *,
              total_charge: float = 0.0, method: str = "exact", tol: float = 1e-10,
              maxiter: int | None = None) -> QEqResult:
    """Equilibrate the charges of one structure (jittable, differentiable).

    Args:
      system: one unbatched structure (padding atoms get charge 0).
      electronegativity: ``χ`` per atom ``[n_atoms]`` (or a scalar), eV/e.
      hardness: ``J`` per atom ``[n_atoms]`` (or a scalar), eV/e²; with ``E_C`` this must make
        the energy convex on neutral charge changes (any ``J ≥ 0`` with Gaussian-smeared
        charges).
      coulomb_fn: ``(system, charges) -> eV``, quadratic in the charges (see :data:`CoulombFn`).
      total_charge: ``Q`` in e.
      method: ``"exact"`` (dense bordered solve) or ``"cg"`` (matrix-free conjugate gradients).
      tol: relative residual at which CG stops.
      maxiter: CG iteration cap (default ``2 n_atoms + 10``).

    Returns:
      A :class:`QEqResult`.

    Raises:
      ValueError: unknown ``method`` or a batched system.

    Example:
      >>> import jax.numpy as jnp, jaxpot
      >>> s = jaxpot.System.from_arrays([[0, 0, 0], [0, 0, 2.0]], [11, 17])
      >>> def e_c(system, q):  # two Gaussian charges (σ = 1 Å), 14.4 eV·Å
      ...     d = jnp.linalg.norm(system.positions[1] - system.positions[0])
      ...     return 14.3996 * q[0] * q[1] * jax.scipy.special.erf(d / 2) / d
      >>> import jax
      >>> r = solve_qeq(s, jnp.array([-1.0, 1.0]), 10.0, e_c)
      >>> bool(r.charges[0] > 0) and abs(float(r.total_charge)) < 1e-12
      True
    """
    chi, hard = _check(system, electronegativity, hardness, method)
    if method == "exact":
        q, lam = _solve_exact(coulomb_fn, system, chi, hard, total_charge)
    else:
        n = system.atom_mask.shape[0]
        q, lam = _solve_cg(coulomb_fn, system, chi, hard, total_charge, tol,
                           2 * n + 10 if maxiter is None else int(maxiter))
    e, e_c = qeq_energy(coulomb_fn, system, q, chi, hard)
    return QEqResult(charges=q, energy=e, electrostatic=e_c, multiplier=lam,
                     dipole=dipole(system, q), total_charge=jnp.sum(q))
