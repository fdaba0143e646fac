"""Predicted spreads of energies and forces, for every model that states one.

Two kinds of model say how sure they are:

- an ensemble (:func:`jaxpot.models.ensemble`): the std over its members, times the calibration
  factors in its config;
- a GAP model (:func:`jaxpot.models.gap`): the posterior std of the latent function, times
  ``calibration`` factors given here (a GAP config holds none).

:func:`spread_fn` returns one jittable function for either, so the same code serves
evaluation, MD observers (inside the fused loop), the ASE calculator and active learning::

    fn = spread_fn(potential)                 # None when the model states no spread
    out = fn(params, system)
    out["energy_std"]       # [] eV, of the total energy
    out["forces_std"]       # [n_atoms] eV/Å, per atom: sqrt(mean over x, y, z of the variance)
    out["force_noise_std"]  # [n_atoms] eV/Å, only for heteroscedastic members: the predicted
    out["energy_noise_std"] # [] eV      label noise (aleatoric; forces_std is epistemic)

All spreads are 0 on padding atoms.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpot.models.ensemble import ensemble_parts, force_spread
from jaxpot.potential import Potential, energy_and_forces
from jaxpot.system import System

__all__ = ["spread_fn", "has_spread", "atom_force_std", "force_std_observer"]


def has_spread(potential: Potential) -> bool:
    """Whether :func:`spread_fn` can give this potential's uncertainty."""
    return ensemble_parts(potential) is not None or potential.config.get("name") == "gap"


def spread_fn(potential: Potential, calibration: dict | None = None
              ) -> Callable[[object, System], dict] | None:
    """``(params, system) -> {"energy", "forces", "energy_std", "forces_std"}`` (traced), or
    None for a model that states no uncertainty.

    Args:
      potential: an ensemble or a GAP model.
      calibration: ``{"energy": a, "forces": b}`` factors; for an ensemble they default to
        the ones in its config, for GAP to 1.
    """
    parts = ensemble_parts(potential)
    if parts is not None:
        member, _, own = parts
        return _ensemble_spread(member, {**own, **(calibration or {})})
    if potential.config.get("name") == "gap":
        return _gap_spread(json.dumps(potential.config, sort_keys=True),
                           tuple(sorted((calibration or {}).items())))
    return None


def _ensemble_spread(member: Potential, calibration: dict):
    a_e = float(calibration.get("energy", 1.0))
    a_f = float(calibration.get("forces", 1.0))

    def fn(params, system):
        e_k, f_k = jax.vmap(energy_and_forces(member), in_axes=(0, None))(params, system)
        return {"energy": jnp.mean(e_k), "forces": jnp.mean(f_k, axis=0),
                "energy_std": a_e * jnp.std(e_k),
                "forces_std": force_spread(f_k, system.atom_mask, a_f)}

    if "force_noise_std" in member.outputs:  # heteroscedastic members: add the aleatoric part
        from jaxpot.models.heteroscedastic import mean_noise_std

        return lambda params, system: {**fn(params, system),
                                       **mean_noise_std(member, params, system)}
    return fn


@functools.lru_cache(maxsize=16)
def _gap_spread(config_json: str, calibration: tuple):
    from jaxpot.models.gap import gap_predictor
    from jaxpot.registry import from_config

    predict = gap_predictor(from_config(json.loads(config_json)))
    cal = dict(calibration)
    a_e, a_f = float(cal.get("energy", 1.0)), float(cal.get("forces", 1.0))

    def fn(params, system):
        e, e_var, f, f_var = predict(params, system)
        return {"energy": e, "forces": f, "energy_std": a_e * jnp.sqrt(e_var),
                "forces_std": jnp.where(system.atom_mask,
                                        a_f * jnp.sqrt(jnp.mean(f_var, axis=-1)), 0.0)}

    return fn


def atom_force_std(potential: Potential, calibration: dict | None = None):
    """``(params, system) -> [n_atoms]`` per-atom force spread in eV/Å (traced).

    Raises:
      ValueError: the model states no uncertainty (not an ensemble or GAP).
    """
    fn = spread_fn(potential, calibration)
    if fn is None:
        raise ValueError(f"model {potential.config.get('name')!r} states no uncertainty: "
                         "train an ensemble (--ensemble K) or use GAP")
    return lambda params, system: fn(params, system)["forces_std"]


def force_std_observer(potential: Potential, params, calibration: dict | None = None):
    """An MD observer (``md.simulate(observers=[...])``) that logs ``max_force_std`` and
    ``mean_force_std`` (eV/Å) of the current structure at every log point, inside the loop.

    For an ensemble the members' forces are recomputed at log points only, so the cost is one
    extra committee evaluation per logged frame.
    """
    std = atom_force_std(potential, calibration)

    def observe(state, output):
        system = output.neighbors.attach(state.system)  # the state's system carries no edges
        s = std(params, system)
        mask = system.atom_mask
        n = jnp.maximum(jnp.sum(mask), 1)
        return {"max_force_std": jnp.max(jnp.where(mask, s, 0.0)),
                "mean_force_std": jnp.sum(jnp.where(mask, s, 0.0)) / n}

    return observe
