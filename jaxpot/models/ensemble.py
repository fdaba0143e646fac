"""Deep ensembles (committees): K copies of one model family, stacked, evaluated in one call.

The K members share a config and differ in their parameters (different initial seeds; training
can also give each member its own resample of the data). Their params are stacked along a new
leading axis, so every member runs in one ``jax.vmap`` over that axis: one compile for the whole
committee, in training (:mod:`jaxpot.train`, where each member minimises its own loss) and in
prediction. The potential's energy is the members' mean, so forces (−∇ of the mean = the mean
of the members' forces), stress, MD and every other consumer of a :class:`~jaxpot.Potential`
use the committee mean with no change.

How far the members disagree is the model's epistemic uncertainty. ``atomic`` reports it per
atom, so MD observers, the ASE calculator and evaluation see it without another host round trip::

    {"energy": [n] mean atomic energy (eV),
     "energy_std": [n] std of the atomic energy over members (eV),
     "forces_std": [n] per-atom force spread sqrt(Σ_c var_k F_ic / 3) (eV/Å),
     "features": [n, F] member 0's invariant features (when the family has them)}

The spreads are multiplied by calibration factors held in the config (``calibration =
{"energy": a, "forces": b}``, 1 until :mod:`jaxpot.uncertainty.calibration` fits them on
validation data), so a stated 1σ means what it says. Spreads use the population std over members
(divisor K).

Example::

    member = jaxpot.models.nequip(species=["Cu"], cutoff=4.0)
    pot = ensemble(member, size=4)
    params = pot.init(jax.random.key(0), system)      # leaves have a leading axis of 4
    e = pot.energy(params, system)                     # committee mean, eV
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpot.potential import Potential, energy_and_forces, from_config, register
from jaxpot.system import System

__all__ = ["ensemble", "ensemble_parts", "force_spread", "member_predictions", "stack_params",
           "member_params"]

_SPREADS = ("energy_std", "forces_std")


def stack_params(members: list):
    """Stack K member param trees along a new leading axis (the ensemble's params)."""
    if not members:
        raise ValueError("stack_params needs at least one member")
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *members)


def member_params(params, k: int):
    """Member ``k``'s params, taken from the stacked ensemble params."""
    return jax.tree.map(lambda x: x[k], params)


def ensemble_parts(potential: Potential) -> tuple[Potential, int, dict] | None:
    """``(member potential, size, calibration)`` of an :func:`ensemble`, or None for any other
    potential."""
    cfg = potential.config if isinstance(potential.config, dict) else {}
    if cfg.get("name") != "ensemble":
        return None
    kw = cfg["kwargs"]
    return from_config(kw["member"]), int(kw["size"]), dict(kw.get("calibration") or {})


def member_predictions(potential: Potential, params, system: System):
    """Every member's ``(energy [K] eV, forces [K, n_atoms, 3] eV/Å)`` for one structure.

    Raises:
      ValueError: ``potential`` is not an :func:`ensemble`.
    """
    parts = ensemble_parts(potential)
    if parts is None:
        raise ValueError(f"member_predictions needs an ensemble potential, got "
                         f"{potential.config.get('name')!r}")
    return jax.vmap(energy_and_forces(parts[0]), in_axes=(0, None))(params, system)


def force_spread(f_k, atom_mask, factor: float = 1.0):
    """Per-atom force spread ``factor · sqrt(mean_c var_k F_kic)`` of member forces
    ``f_k [K, n, 3]`` (eV/Å), 0 on padding atoms."""
    f_var = jnp.mean(jnp.var(f_k, axis=0), axis=-1)
    return jnp.where(atom_mask, factor * jnp.sqrt(f_var), 0.0)


def _spreads(member: Potential, params, system: System, calibration: dict) -> dict:
    """Per-atom calibrated spreads over the members (traced)."""
    mask = system.atom_mask
    e_k = jax.vmap(member.atomic, in_axes=(0, None))(params, system)["energy"]  # [K, n]
    _, f_k = jax.vmap(energy_and_forces(member), in_axes=(0, None))(params, system)
    e_std = jnp.sqrt(jnp.var(e_k, axis=0))
    return {
        "energy_std": jnp.where(mask, float(calibration.get("energy", 1.0)) * e_std, 0.0),
        "forces_std": force_spread(f_k, mask, float(calibration.get("forces", 1.0))),
        "energy": jnp.where(mask, jnp.mean(e_k, axis=0), 0.0),
    }


@register("ensemble")
def ensemble(member: Potential | dict, size: int, *, calibration: dict | None = None
             ) -> Potential:
    """A committee of ``size`` copies of ``member`` (see the module docstring).

    Args:
      member: the member potential, or its config dict (``{"name": ..., "kwargs": ...}``).
      size: number of members K ≥ 2.
      calibration: optional ``{"energy": a, "forces": b}`` factors for the reported spreads.

    Returns:
      A :class:`~jaxpot.Potential` whose params are the members' stacked along axis 0.

    Raises:
      ValueError: ``size`` < 2, a nested ensemble, or a non-positive calibration factor.
    """
    if isinstance(member, dict):
        member = from_config(member)
    size = int(size)
    if size < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got size={size}")
    if member.config.get("name") == "ensemble":
        raise ValueError("an ensemble's member cannot itself be an ensemble")
    calibration = {k: float(v) for k, v in (calibration or {}).items()}
    bad = {k: v for k, v in calibration.items() if k not in ("energy", "forces") or not v > 0}
    if bad:
        raise ValueError(f"ensemble calibration takes positive 'energy'/'forces' factors, "
                         f"got {bad}")

    def init(key, system):
        keys = jax.random.split(key, size)
        return stack_params([member.init(k, system) for k in keys])

    def energy(params, system):
        return jnp.mean(jax.vmap(member.energy, in_axes=(0, None))(params, system))

    prepare = None
    if member.prepare is not None:
        def prepare(params, train_set):
            return stack_params([member.prepare(member_params(params, k), train_set)
                                 for k in range(size)])

    atomic, outputs = None, ()
    if member.atomic is not None and "energy" in member.outputs:
        with_features = "features" in member.outputs

        def atomic(params, system):
            out = _spreads(member, params, system, calibration)
            if with_features:
                out["features"] = member.atomic(member_params(params, 0), system)["features"]
            return out

        outputs = ("energy", *_SPREADS) + (("features",) if with_features else ())
    config = {"name": "ensemble", "kwargs": {"member": member.config, "size": size,
                                             "calibration": calibration}}
    return Potential(init, energy, member.cutoff, config, atomic=atomic, outputs=outputs,
                     local=member.local, species=member.species, prepare=prepare)
