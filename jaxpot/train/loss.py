"""Loss weights, the masked loss, and per-element energy offsets.

Loss of a batch (all means run over real entries only; padding atoms, dummy structures and
missing labels are masked out, so padding never changes the loss)::

    L = w_E · mean_s((ΔE_s / N_s)²)                       # per-atom energy error, eV²/atom²
      + w_F · mean_atoms(|ΔF_i|²)                          # squared norm per atom, (eV/Å)²
      + w_S · mean_{s with stress}(‖Δσ_s‖²_F)              # Frobenius, (eV/Å³)²

Default weights (:func:`default_weights`) are dimensionless and balance energies against
forces through a length ℓ (``energy_length``, default 1.5 Å): an error of δ eV/atom in the
energy costs as much as an error of δ/ℓ eV/Å in each force component. The force term is
normalised by the loss of the trivial model that predicts zero forces, ``w_F = 1/(3·F_rms²)``
(``3·F_rms²`` is the mean ``|F|²`` per atom, so that term starts near 1), which fixes
``w_E = 3·ℓ²·w_F = ℓ²/F_rms²``. The stress term is normalised by its own label variance and
counted like forces, one stress component as one force component: a structure has 9 of the
former and 3N of the latter, so ``w_S = min(1, 3/N̄)/(9·σ_rms²)`` (N̄ the mean number of atoms;
0 without stress labels). Without force
labels ``w_E = 1/σ_E²`` (σ_E the std of the per-atom residual energy). Floors (1 meV/atom,
10 meV/Å, 1e-4 eV/Å³) keep the weights finite for nearly constant labels.

Why a length and not one variance per term: forces carry 3N numbers per structure against one
energy, and the spread of per-atom energies in a data set (mostly differences between phases)
says little about how hard each target is to fit. Normalising each term by its own variance
(``energy_length=None``) weighs the energy 170× (copper) to 12 000× (a small molecule) more
than ℓ = 1.5 Å does; on the EMT copper set (NequIP, one CPU core) that gave 0.5 meV/atom but
23 meV/Å after 30 minutes, against 11 meV/Å and 1.9 meV/atom after 10 minutes with
ℓ ≈ 1.4 Å; after two epochs ℓ = 0.2 Å (InstaDeep ``mlip``'s energy 1 : forces 25) had a 16 %
lower force error (11.9 against 14.1 meV/Å) and a 1.9× higher energy error (4.8 against 2.5).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpot.data import Batch, Statistics
from jaxpot.models.ensemble import ensemble_parts
from jaxpot.potential import Potential, energy_and_forces, energy_forces_stress
from jaxpot.potentials.offsets import element_refs_table, with_element_refs
from jaxpot.train.direct import direct_penalties, has_direct_forces, predict_direct

__all__ = [
    "LossWeights",
    "default_weights",
    "predict",
    "loss_terms",
    "make_loss_fn",
    "with_element_refs",
    "element_refs_table",
]



class LossWeights(NamedTuple):
    """Weights of the energy (per atom), force and stress terms (see module docstring)."""

    energy: float = 1.0
    forces: float = 1.0
    stress: float = 0.0


def default_weights(stats: Statistics, *, energy: float = 1.0, forces: float = 1.0,
                    stress: float = 1.0, energy_length: float | None = 1.5) -> LossWeights:
    """Dimensionless default weights (see the module docstring), times the given factors.

    Args:
      stats: training-set :class:`~jaxpot.data.Statistics`.
      energy, forces, stress: relative importance factors (default 1 each).
      energy_length: ℓ in Å: an energy error of δ per atom weighs as much as a force-component
        error of δ/ℓ. ``None`` divides each term by its own label variance instead
        (``w_E = 1/σ_E²``), which favours energies strongly.

    Returns:
      ``LossWeights(energy · ℓ²/F_rms², forces / (3 F_rms²), stress · min(1, 3/N̄) / (9 σ_rms²))``
      (N̄ the mean number of atoms per structure), with floors
      on the scales, ``w_E = energy/σ_E²`` when there are no force labels (or ``ℓ`` is None) and
      a zero stress weight when the data has no stress.
    """
    sigma_e = max(stats.energy_std_per_atom, 1e-3)
    f_rms = max(stats.force_rms, 1e-2)
    f2 = 3.0 * f_rms**2
    s2 = 9.0 * max(stats.stress_rms, 1e-4) ** 2
    has_f = stats.force_rms > 0
    if energy_length is not None and energy_length <= 0:
        raise ValueError(f"energy_length must be positive (Å) or None, got {energy_length}")
    if has_f and energy_length is not None:
        w_e = energy * float(energy_length) ** 2 / f_rms**2
    else:
        w_e = energy / sigma_e**2
    return LossWeights(
        energy=float(w_e),
        forces=float(forces / f2) if has_f else 0.0,
        stress=float(stress * min(1.0, 3.0 / max(stats.n_atoms_mean, 1.0)) / s2)
        if stats.has_stress else 0.0,
    )


def predict(potential: Potential, params, system, *, stress: bool = True):
    """Batched predictions: ``(energy [B] eV, forces [B, n, 3] eV/Å, stress [B, 3, 3] eV/Å³)``.

    ``system`` is a batched :class:`~jaxpot.System`; with ``stress=False`` the stress is zeros
    (one backward pass fewer). A direct-force model (:mod:`jaxpot.train.direct`) returns its
    predicted ``"direct_forces"`` instead of ``−∇E``.
    """
    if has_direct_forces(potential):
        return predict_direct(potential, params, system, stress=stress)
    if stress:
        fn = energy_forces_stress(potential)
        return jax.vmap(fn, in_axes=(None, 0))(params, system)
    e, f = jax.vmap(energy_and_forces(potential), in_axes=(None, 0))(params, system)
    return e, f, jnp.zeros(e.shape + (3, 3), e.dtype)


def loss_terms(energy, forces, stress, batch: Batch) -> dict:
    """Masked mean squared errors of one batch of predictions.

    Args:
      energy: ``[B]`` predicted energies, eV.
      forces: ``[B, n, 3]`` predicted forces, eV/Å.
      stress: ``[B, 3, 3]`` predicted stress, eV/Å³.
      batch: the labels.

    Returns:
      ``{"energy": mean (ΔE/N)², "forces": mean |ΔF|² per atom, "stress": mean ‖Δσ‖²_F,
      "n_structures", "n_atoms", "n_stress"}`` (the counts are the masked denominators; each
      term is weighted by ``batch.weight`` and counts only structures that carry its label).
    """
    w = batch.weight  # per-structure weight; 0 on dummies
    n = jnp.maximum(batch.n_atoms, 1).astype(energy.dtype)
    de = (energy - batch.energy) / n
    we = w * batch.has_energy  # frames without an energy label (allow_partial) drop out
    n_s = jnp.sum(we)
    e_term = jnp.sum(we * de * de) / jnp.maximum(n_s, 1.0)
    amask = batch.system.atom_mask * (w * batch.has_forces)[:, None]
    df = jnp.where(amask[..., None] > 0, forces - batch.forces, 0.0)
    n_a = jnp.sum(amask)
    f_term = jnp.sum(df * df) / jnp.maximum(n_a, 1.0)
    smask = w * batch.has_stress
    ds = jnp.where(smask[:, None, None] > 0, stress - batch.stress, 0.0)
    n_st = jnp.sum(smask)
    s_term = jnp.sum(ds * ds) / jnp.maximum(n_st, 1.0)
    return {"energy": e_term, "forces": f_term, "stress": s_term,
            "n_structures": n_s, "n_atoms": n_a, "n_stress": n_st}


def make_loss_fn(potential: Potential, weights: LossWeights):
    """``(params, batch) -> (loss, terms)`` for a batched :class:`~jaxpot.data.Batch`.

    Stress is only computed when ``weights.stress > 0``. For an ensemble
    (:func:`jaxpot.models.ensemble`) the loss is the sum of the members' own losses, vmapped
    over the stacked params: each member's gradient is the one it would have alone, so the
    members train independently in one compiled step; the terms are the members' means.
    A direct-force model fits its predicted forces and pays net-force and torque penalties
    (:mod:`jaxpot.train.direct`; the terms gain ``"net_force"`` and ``"torque"``).
    A heteroscedastic model (:mod:`jaxpot.models.heteroscedastic`) adds a Gaussian NLL that
    trains its noise head only (:mod:`jaxpot.train.nll`).
    """
    weights = LossWeights(*map(float, weights))
    parts = ensemble_parts(potential)
    if parts is not None:
        single = make_loss_fn(parts[0], weights)

        def ensemble_loss(params, batch: Batch):
            losses, terms = jax.vmap(single, in_axes=(0, None))(params, batch)
            return jnp.sum(losses), jax.tree.map(lambda t: jnp.mean(t, axis=0), terms)

        return ensemble_loss
    if potential.config.get("name") == "heteroscedastic":  # MSE trains the mean, NLL the head
        from jaxpot.train.nll import make_nll_loss_fn

        return make_nll_loss_fn(potential, weights, loss_terms)

    penalties = direct_penalties(potential, weights.forces)  # None unless direct forces

    def loss_fn(params, batch: Batch):
        e, f, s = predict(potential, params, batch.system, stress=weights.stress > 0)
        terms = loss_terms(e, f, s, batch)
        loss = (weights.energy * terms["energy"] + weights.forces * terms["forces"]
                + weights.stress * terms["stress"])
        if penalties is not None:  # net force and torque of direct forces
            loss, terms = penalties(loss, terms, f, batch)
        return loss, terms

    return loss_fn
