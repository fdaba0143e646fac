"""Per-element reference energies added outside a model: ``E = scale·E_model + Σ_i e_{Z_i}``.

Training fits one reference energy per element on the training set (a least-squares fit of the
energies against the element counts, :func:`jaxpot.data.fit_element_refs`); models without
atomic shift/scale parameters of their own (pair potentials, simple models) are wrapped with
:func:`with_element_refs` so they only learn the residual.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxpot.potential import Potential, from_config, register

__all__ = ["N_ELEMENTS", "element_refs_table", "with_element_refs"]

N_ELEMENTS = 119  # table index = atomic number (0 unused)


def _table(refs: dict) -> np.ndarray:
    table = np.zeros(N_ELEMENTS)
    for z, v in refs.items():
        table[int(z)] = float(v)
    return table


def element_refs_table(refs: dict, dtype=None) -> jnp.ndarray:
    """``[119]`` array, entry Z = reference energy of element Z in eV (0 where absent)."""
    return jnp.asarray(_table(refs), dtype)


@register("with_element_refs")
def with_element_refs(model, refs: dict, *, trainable: bool = False,
                      scale: float = 1.0) -> Potential:
    """Add per-element reference energies to a potential: ``E = scale·E_model + Σ_i e_{Z_i}``.

    Args:
      model: a :class:`~jaxpot.Potential` or its config.
      refs: ``{atomic number: eV}`` (keys may be strings, as in JSON).
      trainable: if True the references live in ``params["element_refs"]`` (a ``[119]``
        array, initialised from ``refs``) and are trained; otherwise they are constants.
      scale: multiplies the model's energy (e.g. the force RMS for a normalised model).

    Returns:
      A potential with params ``{"model": model params[, "element_refs": [119]]}``; it keeps
      the model's declared capabilities, and its per-atom energies include the offsets.
    """
    inner = model if isinstance(model, Potential) else from_config(model)
    refs = {int(z): float(v) for z, v in refs.items()}
    const = _table(refs)  # NumPy float64; cast to the structure's dtype when used
    scale = float(scale)

    def init(key, system):
        p = {"model": inner.init(key, system)}
        if trainable:
            dtype = None if system is None else jnp.asarray(system.positions).dtype
            p["element_refs"] = element_refs_table(refs, dtype)
        return p

    def offsets(params, system):
        table = params["element_refs"] if trainable else const
        z = jnp.where(system.atom_mask, system.species, 0)
        return jnp.where(system.atom_mask, jnp.asarray(table, system.positions.dtype)[z], 0.0)

    def energy(params, system):
        return scale * inner.energy(params["model"], system) + jnp.sum(offsets(params, system))

    def atomic(params, system):
        out = dict(inner.atomic(params["model"], system))
        out["energy"] = scale * out["energy"] + offsets(params, system)
        if "variance" in out:
            out["variance"] = scale**2 * out["variance"]
        return out

    config = {"name": "with_element_refs",
              "kwargs": {"model": inner.config, "refs": {str(z): v for z, v in refs.items()},
                         "trainable": bool(trainable), "scale": scale}}
    has_atomic = inner.atomic is not None and "energy" in inner.outputs
    return inner._replace(init=init, energy=energy, config=config,
                          atomic=atomic if has_atomic else None,
                          outputs=inner.outputs if has_atomic else ())
