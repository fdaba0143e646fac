"""Gaussian negative log-likelihood for models that predict their label noise.

A :func:`~jaxpot.models.heteroscedastic.heteroscedastic` model predicts a mean (its energy and
forces) and per-atom noise variances σ²_F,i (each force component of atom i) and σ²_E,i
(σ²_E = Σ_i σ²_E,i for the structure's energy). Its training loss is::

    L = w_E·MSE_E + w_F·MSE_F + w_S·MSE_S                    # the usual loss: trains the mean
      + [w_F > 0]·NLL_F + [w_E > 0]·NLL_E                   # trains the noise head
    NLL_F = mean over real force components of ½[log 2πσ²_F,i + sg(ΔF_ic)²/σ²_F,i]
    NLL_E = mean over structures with an energy of ½[log 2πσ²_E + sg(ΔE)²/σ²_E]

``sg`` is ``jax.lax.stop_gradient``, and the head also reads stop-gradient features, so the two
parts touch disjoint parameters: the mean trains exactly as it would without the head (MSE),
and the head learns the residual variance. This is the "detached" choice rather than the full
NLL or β-NLL (Seitzer et al. 2022): a full NLL lets the mean down-weight the samples it finds
hard (their gradient is divided by σ²) and can stall the fit in regions of large predicted
noise; detaching removes that failure mode and keeps an ensemble's epistemic spread comparable
with a plain ensemble's. :func:`gaussian_nll` offers ``beta`` (β-NLL weighting by ``sg(σ²)^β``)
and :func:`nll_terms` ``detach_mean=False`` for experiments.

Because the head fits training residuals, σ²_F estimates ``noise² + (training error)²``: in
clean regions it tends to the model's own training error, not to zero.

References:
  Nix & Weigend, "Estimating the mean and variance of the target probability distribution",
  ICNN 1994. Seitzer et al., "On the pitfalls of heteroscedastic uncertainty estimation with
  probabilistic neural networks", ICLR 2022.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpot.models.heteroscedastic import (
    energy_forces_noise,
    noise_variances,
    standardize_features,
    with_noise_head,
)
from jaxpot.potential import Potential, energy_forces_stress

__all__ = ["gaussian_nll", "nll_terms", "predict_with_noise", "make_nll_loss_fn",
           "attach_noise_head"]

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_nll(residuals, variances, mask, *, beta: float = 0.0):
    """Masked mean of ``½[log 2πσ² + r²/σ²]`` (times ``sg(σ²)^β`` with ``beta`` > 0).

    Args:
      residuals: prediction − label, any shape.
      variances: predicted variances, same shape (or broadcastable), > 0.
      mask: weights (0 drops an entry), broadcastable to ``residuals``.
      beta: β-NLL exponent; 0 is the plain Gaussian NLL.

    Returns:
      Scalar; 0 when the mask is empty.
    """
    mask = jnp.broadcast_to(mask, residuals.shape).astype(residuals.dtype)
    var = jnp.broadcast_to(variances, residuals.shape)
    var = jnp.where(mask > 0, var, 1.0)  # padding: any finite positive value
    r = jnp.where(mask > 0, residuals, 0.0)
    nll = 0.5 * (_LOG_2PI + jnp.log(var) + r * r / var)
    if beta:
        nll = nll * jax.lax.stop_gradient(var) ** beta
    return jnp.sum(mask * nll) / jnp.maximum(jnp.sum(mask), 1.0)


def nll_terms(energy, forces, force_var, energy_var, batch, *, beta: float = 0.0,
              detach_mean: bool = True) -> dict:
    """``{"forces_nll", "energy_nll"}`` of one batch (see the module docstring).

    Args:
      energy: ``[B]`` predicted energies, eV.
      forces: ``[B, n, 3]`` predicted forces, eV/Å.
      force_var: ``[B, n]`` predicted force noise variance per component, eV²/Å².
      energy_var: ``[B, n]`` predicted atomic energy noise variances, eV² (summed per structure).
      batch: the labels (:class:`~jaxpot.data.Batch`); weights and missing labels are masked
        as in :func:`jaxpot.train.loss.loss_terms`.
      beta: β-NLL exponent.
      detach_mean: stop the NLL's gradient into the mean (default).
    """
    if detach_mean:
        energy, forces = jax.lax.stop_gradient(energy), jax.lax.stop_gradient(forces)
    w = batch.weight
    atom_mask = batch.system.atom_mask * (w * batch.has_forces)[:, None]
    df = forces - batch.forces
    f_nll = gaussian_nll(df, force_var[..., None], atom_mask[..., None], beta=beta)
    e_var = jnp.sum(jnp.where(batch.system.atom_mask, energy_var, 0.0), axis=-1)
    e_var = jnp.maximum(e_var, jnp.finfo(e_var.dtype).tiny)
    e_nll = gaussian_nll(energy - batch.energy, e_var, w * batch.has_energy, beta=beta)
    return {"forces_nll": f_nll, "energy_nll": e_nll}


def predict_with_noise(potential: Potential, params, system, *, stress: bool = True):
    """Batched ``(energy [B], forces [B, n, 3], stress [B, 3, 3], σ²_F [B, n], σ²_E [B, n])``.

    Without stress, one forward pass gives the mean and the variances
    (:func:`~jaxpot.models.heteroscedastic.energy_forces_noise`); the stress is then zeros.
    """
    if not stress:
        e, f, vf, ve = jax.vmap(energy_forces_noise(potential), in_axes=(None, 0))(
            params, system)
        return e, f, jnp.zeros(e.shape + (3, 3), e.dtype), vf, ve
    e, f, s = jax.vmap(energy_forces_stress(potential), in_axes=(None, 0))(params, system)
    vf, ve = jax.vmap(lambda p, x: noise_variances(potential, p, x), in_axes=(None, 0))(
        params, system)
    return e, f, s, vf, ve


def make_nll_loss_fn(potential: Potential, weights, loss_terms: Callable):
    """``(params, batch) -> (loss, terms)``: the usual MSE loss plus the head's NLL.

    Args:
      potential: a heteroscedastic model.
      weights: :class:`~jaxpot.train.loss.LossWeights`.
      loss_terms: :func:`jaxpot.train.loss.loss_terms` (passed in, so this module does not
        import the loss module that dispatches to it).

    Returns:
      The loss function; its terms are :func:`~jaxpot.train.loss.loss_terms`' plus
      ``forces_nll`` and ``energy_nll``.
    """
    use_f = float(weights.forces > 0)
    use_e = float(weights.energy > 0)

    def loss_fn(params, batch):
        e, f, s, vf, ve = predict_with_noise(potential, params, batch.system,
                                             stress=weights.stress > 0)
        terms = loss_terms(e, f, s, batch)
        nll = nll_terms(e, f, vf, ve, batch)
        loss = (weights.energy * terms["energy"] + weights.forces * terms["forces"]
                + weights.stress * terms["stress"]
                + use_f * nll["forces_nll"] + use_e * nll["energy_nll"])
        return loss, {**terms, **nll}

    return loss_fn


def attach_noise_head(potential: Potential, params, train_set, stats, seed: int):
    """``(heteroscedastic potential, params)``: a prepared model plus a fresh noise head.

    The head starts at the noise of the trivial model, a force std of the training set's force
    RMS and a structure energy std of its per-atom energy std times ``sqrt(N̄)``, so the first
    NLL gradients are of order one (:class:`~jaxpot.data.Statistics` ``stats``); its inputs are
    standardised on (up to 32 of) the training structures ``train_set``
    (:func:`~jaxpot.models.heteroscedastic.standardize_features`).

    Raises:
      ValueError: the model has no per-atom features.
    """
    f_scale = max(float(stats.force_rms), 1e-2)
    e_scale = max(float(stats.energy_std_per_atom), 1e-3) * math.sqrt(
        max(float(stats.n_atoms_mean), 1.0))
    systems = [train_set[i].system() for i in range(min(len(train_set), 32))]
    pot, params = with_noise_head(potential, params, jax.random.key(seed + 7919), systems[0],
                                  force_scale=f_scale, energy_scale=e_scale)
    return pot, standardize_features(pot, params, systems)
