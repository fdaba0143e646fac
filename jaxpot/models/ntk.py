"""Empirical neural tangent kernel (NTK) of a potential's total energy.

For a network ``E(θ; S)`` the empirical NTK between structures ``a`` and ``b`` is

    Θ(a, b) = ∇_θ E(θ; S_a) · ∇_θ E(θ; S_b)            (eV², θ flattened)

i.e. ``Θ = J_a J_bᵀ`` with ``J`` the ``[n_structures, n_params]`` Jacobian of the energies. For
a wide network trained by gradient flow on a squared loss, predictions follow kernel regression
with Θ (Jacot et al. 2018); ``examples/ntk_width.py`` checks this for BPNNs of growing width.
Parameters with zero gradient (e.g. the BPNN's stop-gradient standardisation) do not contribute.

References:
  A. Jacot, F. Gabriel, C. Hongler, "Neural tangent kernel: convergence and generalization in
  neural networks", NeurIPS 31 (2018).
  J. Lee et al., "Wide neural networks of any depth evolve as linear models under gradient
  descent", NeurIPS 32 (2019).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxpot.potential import Potential
from jaxpot.system import System

__all__ = ["energy_jacobian", "empirical_ntk", "ntk_regression"]


def energy_jacobian(potential: Potential, params, systems: Sequence[System]) -> jax.Array:
    """``[n_structures, n_params]`` Jacobian ``∂E_s/∂θ`` (eV per parameter unit).

    Structures of the same padded shape share one compilation (pad them to one shape to
    compile once).
    """
    flat, unravel = ravel_pytree(params)
    grad = jax.jit(jax.grad(lambda p, s: potential.energy(unravel(p), s)))
    rows = [grad(flat, s) for s in systems]
    return jnp.stack(rows) if rows else jnp.zeros((0, flat.size), flat.dtype)


def empirical_ntk(potential: Potential, params, systems_a: Sequence[System],
                  systems_b: Sequence[System] | None = None) -> jax.Array:
    """Energy–energy empirical NTK ``Θ = J_a J_bᵀ``.

    Args:
      potential: any differentiable potential (e.g. :func:`jaxpot.models.bpnn.bpnn`).
      params: its parameters θ.
      systems_a, systems_b: unbatched structures with edges (``systems_b`` defaults to
        ``systems_a``).

    Returns:
      ``[n_a, n_b]`` kernel in eV² per squared parameter unit; symmetric positive
      semi-definite when ``systems_b`` is ``systems_a``.
    """
    j_a = energy_jacobian(potential, params, systems_a)
    j_b = j_a if systems_b is None or systems_b is systems_a else energy_jacobian(
        potential, params, systems_b)
    return j_a @ j_b.T


def ntk_regression(theta_train: jax.Array, theta_test_train: jax.Array, residual: jax.Array,
                   *, ridge: float = 0.0) -> jax.Array:
    """Kernel-regression prediction of the change in energies after training to convergence.

    For a linearised model trained on a squared loss to zero training error, the test
    energies move by ``Θ_{*,train} (Θ_train + ridge·I)⁻¹ (y − f₀(train))``.

    Args:
      theta_train: ``[n, n]`` NTK on the training structures.
      theta_test_train: ``[m, n]`` NTK between test and training structures.
      residual: ``[n]`` targets minus the initial predictions, eV.
      ridge: diagonal regulariser, eV².

    Returns:
      ``[m]`` predicted change of the test energies, eV.
    """
    n = theta_train.shape[0]
    sol = jnp.linalg.solve(theta_train + ridge * jnp.eye(n, dtype=theta_train.dtype), residual)
    return theta_test_train @ sol
