"""Building a model for training: data-derived options and per-element energy offsets.

Element offsets go into a model in one of two declared ways:

- models whose params carry a top-level per-species ``atomic_shift`` array (and optionally
  ``atomic_scale``), rows in the order of the model's ``species`` option, as the
  :mod:`jaxpot.nn.atomic` layout of the ``jaxpot.models`` families documents: the shift is set to
  the reference energies and the scale to the force RMS (:func:`set_atomic_offsets`);
- every other potential is wrapped with :func:`~jaxpot.potentials.offsets.with_element_refs`.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxpot import data as jdata
from jaxpot.potential import Potential, from_config
from jaxpot.potentials.offsets import element_refs_table, with_element_refs
from jaxpot.registry import data_options, factory, registered

__all__ = ["build_model", "species_index", "attach_element_refs", "set_atomic_offsets",
           "SHIFT_KEY", "SCALE_KEY"]

SHIFT_KEY = "atomic_shift"
SCALE_KEY = "atomic_scale"


def build_model(name: str, kwargs: dict | None, *, cutoff: float,
                stats: jdata.Statistics | None = None) -> Potential:
    """Build a registered potential, filling in the data-derived options it declares.

    ``cutoff``, ``avg_num_neighbors`` and the element list (``species``) are added from the
    data unless ``kwargs`` sets them, for the options the family declared when it registered
    (``register(name, data_options=...)``, :func:`jaxpot.registry.data_options`).

    Raises:
      ValueError: unknown model name (the registered ones are listed).
    """
    kwargs = dict(kwargs or {})
    try:
        factory(name)
    except ValueError:
        raise ValueError(f"unknown model {name!r} (--model); registered: "
                         f"{', '.join(registered())}") from None
    extra = {"cutoff": float(cutoff)}
    if stats is not None:
        from ase.data import chemical_symbols

        extra["avg_num_neighbors"] = float(stats.avg_num_neighbors)
        extra["species"] = [chemical_symbols[z] for z in sorted(stats.element_refs)]
    filled = dict(kwargs)
    for k in data_options(name):
        if k in extra and not (k == "species" and "elements" in kwargs):
            filled.setdefault(k, extra[k])
    return from_config({"name": name, "kwargs": filled})


def species_index(potential: Potential) -> dict[int, int] | None:
    """``{atomic number: row}`` of a model's per-species arrays, from its ``species`` option
    (the row order); None when the config has no species list."""
    from ase.data import atomic_numbers

    kw = potential.config.get("kwargs", {}) if isinstance(potential.config, dict) else {}
    species = kw.get("species")
    if not isinstance(species, list | tuple):
        return None
    return {int(atomic_numbers[s]) if isinstance(s, str) else int(s): i
            for i, s in enumerate(species)}


def set_atomic_offsets(params: dict, refs: dict, force_rms: float,
                       index: dict[int, int] | None) -> dict:
    """Params with ``atomic_shift[row(Z)] = refs[Z]`` and ``atomic_scale = force_rms``.

    Args:
      params: a params dict with a top-level 1-D ``atomic_shift`` (and maybe ``atomic_scale``).
      refs: ``{atomic number: eV}``.
      force_rms: force RMS of the data, eV/Å (the scale is left alone when 0).
      index: atomic number → row; None means rows are atomic numbers (a 119-row array).

    Raises:
      ValueError: an element of the data has no row.
    """
    old = jax.numpy.asarray(params[SHIFT_KEY])
    shift = np.array(old, np.float64)
    if index is None:
        index = {z: z for z in refs} if shift.shape[0] >= 119 else {}
    missing = sorted(set(refs) - set(index))
    if missing:
        raise ValueError(f"element(s) Z={missing} are in the data but not in the model's "
                         f"species {sorted(index)}")
    for z, v in refs.items():
        shift[index[z]] = v
    out = {**params, SHIFT_KEY: jax.numpy.asarray(shift, old.dtype)}
    if SCALE_KEY in params and force_rms > 0:
        out[SCALE_KEY] = jax.numpy.full_like(jax.numpy.asarray(params[SCALE_KEY]), force_rms)
    return out


def has_atomic_offsets(params) -> bool:
    """True for params with a top-level 1-D ``atomic_shift`` array (see the module docstring)."""
    return isinstance(params, dict) and SHIFT_KEY in params and np.ndim(params[SHIFT_KEY]) == 1


def attach_element_refs(potential: Potential, params, stats: jdata.Statistics, *,
                        trainable: bool = False, species_index: dict[int, int] | None = None):
    """Put the fitted per-element reference energies (and the force scale) into the model.

    If ``params`` have a top-level per-species ``atomic_shift`` (see the module docstring;
    ``species_index`` maps atomic number → row, by default from the model's ``species`` option,
    or rows are atomic numbers when the array has 119 entries) it is set to the references, and
    ``atomic_scale`` to the force RMS. Otherwise the potential is wrapped with
    :func:`~jaxpot.train.with_element_refs`, which adds ``Σ_i e_{Z_i}`` (constants, or
    trainable with ``trainable=True``). :func:`~jaxpot.train.train` keeps a model's own
    ``atomic_shift`` fixed unless ``trainable_refs``; ``atomic_scale`` trains.

    Returns:
      ``(potential, params)``.

    Raises:
      ValueError: the data has an element the model's species list lacks.
    """
    if has_atomic_offsets(params):
        index = species_index if species_index is not None else _default_index(potential)
        if index is not None or np.shape(params[SHIFT_KEY])[0] >= 119:
            return potential, set_atomic_offsets(params, stats.element_refs, stats.force_rms,
                                                 index)
    wrapped = with_element_refs(potential, stats.element_refs, trainable=trainable)
    new = {"model": params}
    if trainable:
        new["element_refs"] = element_refs_table(stats.element_refs)
    return wrapped, new


def _default_index(potential: Potential) -> dict[int, int] | None:
    return species_index(potential)
