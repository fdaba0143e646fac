"""Training direct-force (non-conservative) models: predictions and momentum penalties.

For a potential whose per-atom outputs include ``"direct_forces"``
(:func:`jaxpot.models.direct_force.nequip_direct`), :func:`jaxpot.train.predict` returns those
forces instead of ``−∇E``, so the force term of the loss (and every force metric) fits and
measures them; the energy term fits the energy head. :func:`jaxpot.train.make_loss_fn` then adds
two penalties, per structure ``s`` with ``N_s`` real atoms::

    P_F(s) = |Σ_i F_i|² / N_s                              # net force, (eV/Å)²
    P_τ(s) = |Σ_i (r_i − r̄) × F_i|² / Σ_i |r_i − r̄|²      # net torque about the centroid r̄,
                                                           # (eV/Å)², non-periodic only
    L += w_F · (λ_F · mean_s P_F + λ_τ · mean_{s isolated} P_τ)

``w_F`` is the force weight of :class:`~jaxpot.train.LossWeights`; λ_F and λ_τ are the model's
``net_force_weight`` and ``torque_weight`` options (default 1 each). The normalisations make
both penalties the size of a per-atom ``|ΔF|²`` when the force errors are independent between
atoms (a sum of N errors has N times their variance; a torque sum, Σ|r|² times), so λ = 1
weighs a net force as much as the force errors that cause it. A conservative model has both
exactly zero (translation and rotation invariance of E), and so do the labels of any
conservative reference, so the penalties push the direct model towards what it cannot learn by
construction. Periodic structures have no torque constraint (their wrapped positions break
``Σ r × F`` anyway); any periodic direction makes a structure periodic here.

The terms dict of the loss gains ``"net_force"`` and ``"torque"`` (the batch means of P_F and
P_τ, before their weights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpot.models.direct_force import direct_energy_forces_stress, has_direct_forces
from jaxpot.system import System

__all__ = ["has_direct_forces", "predict_direct", "momentum_penalties", "penalty_weights",
           "direct_penalties"]


def predict_direct(potential, params, system: System, *, stress: bool = True):
    """Batched ``(energy [B] eV, direct forces [B, n, 3] eV/Å, stress [B, 3, 3] eV/Å³)``.

    ``stress`` is the strain derivative of the energy head (zeros with ``stress=False``).
    """
    fn = direct_energy_forces_stress(potential, stress=stress)
    if stress:
        return jax.vmap(fn, in_axes=(None, 0))(params, system)
    e, f, _ = jax.vmap(fn, in_axes=(None, 0))(params, system)
    return e, f, jnp.zeros(e.shape + (3, 3), e.dtype)


def momentum_penalties(forces: jax.Array, system: System) -> tuple[jax.Array, jax.Array]:
    """``(P_F, P_τ)`` of one unbatched structure (see the module docstring), (eV/Å)².

    Args:
      forces: ``[n_atoms, 3]`` predicted forces, eV/Å (padding rows are ignored).
      system: the structure (positions, ``atom_mask``, ``pbc``).

    Returns:
      Two scalars; ``P_τ`` is 0 for a structure with any periodic direction.
    """
    mask = system.atom_mask[:, None]
    f = jnp.where(mask, forces, 0.0)
    n = jnp.maximum(jnp.sum(system.atom_mask), 1).astype(f.dtype)
    net = jnp.sum(f, axis=0)
    p_f = jnp.sum(net * net) / n
    x = jnp.where(mask, system.positions, 0.0)
    r = jnp.where(mask, x - jnp.sum(x, axis=0) / n, 0.0)
    tau = jnp.sum(jnp.cross(r, f), axis=0)
    r2 = jnp.sum(r * r)
    p_t = jnp.sum(tau * tau) / jnp.where(r2 > 0, r2, 1.0)
    return p_f, jnp.where(jnp.any(system.pbc), 0.0, p_t)


def _find_kwargs(config) -> dict | None:
    """The kwargs of the first (possibly nested) config that holds the penalty options."""
    if isinstance(config, dict):
        kw = config.get("kwargs")
        if isinstance(kw, dict) and "net_force_weight" in kw:
            return kw
        for v in config.values():
            found = _find_kwargs(v)
            if found is not None:
                return found
    elif isinstance(config, list | tuple):
        for v in config:
            found = _find_kwargs(v)
            if found is not None:
                return found
    return None


def penalty_weights(potential) -> tuple[float, float]:
    """``(λ_F, λ_τ)`` from the model's config (``net_force_weight``, ``torque_weight``);
    ``(1, 1)`` when the config does not say."""
    kw = _find_kwargs(potential.config) or {}
    return float(kw.get("net_force_weight", 1.0)), float(kw.get("torque_weight", 1.0))


def direct_penalties(potential, force_weight: float, *, net_force: float | None = None,
                     torque: float | None = None):
    """``(loss, terms, forces [B, n, 3], batch) -> (loss, terms)`` adding the penalties.

    Args:
      potential: the model; None is returned when it predicts no direct forces.
      force_weight: ``w_F`` of the loss.
      net_force, torque: λ_F and λ_τ; None takes them from the model's config.

    Returns:
      The function, or None for a conservative model.
    """
    if not has_direct_forces(potential):
        return None
    lam_f, lam_t = penalty_weights(potential)
    lam_f = lam_f if net_force is None else float(net_force)
    lam_t = lam_t if torque is None else float(torque)

    def add(loss, terms, forces, batch):
        p_f, p_t = jax.vmap(momentum_penalties)(forces, batch.system)
        w = batch.weight  # 0 on dummy structures
        iso = w * (~jnp.any(batch.system.pbc, axis=-1))
        net = jnp.sum(w * p_f) / jnp.maximum(jnp.sum(w), 1.0)
        tor = jnp.sum(iso * p_t) / jnp.maximum(jnp.sum(iso), 1.0)
        loss = loss + force_weight * (lam_f * net + lam_t * tor)
        return loss, {**terms, "net_force": net, "torque": tor}

    return add
