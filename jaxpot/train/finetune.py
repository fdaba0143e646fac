"""Fine-tuning: start from a saved model, freeze parts of it, teach it new elements.

``jaxpot train --init-from PARENT.model`` continues from the parent's parameters (its family and
options, not ``--model``) on a new data set; ``--freeze PATTERN`` (repeatable) keeps every
parameter whose path matches the regular expression (``net/readout_out/.*`` is the readout,
``net/layer_0/.*`` the first interaction) at the parent's values. A path is the params tree's
keys joined by ``/``, e.g. ``net/embedding/embedding`` or ``atomic_scale``.

**New elements.** When the data holds an element the parent does not know, the model's species
list is extended (new elements appended, so the parent's rows keep their indices). The child is
built from the extended config and initialised from a fixed seed; every parameter whose shape
did not change is copied from the parent, and every per-species array (embedding rows,
species-indexed self-connection weights, ``atomic_shift`` / ``atomic_scale``) gets the parent's
rows for the old elements and fresh ones for the new. A new element's ``atomic_shift`` is its
least-squares reference energy in the new data, its ``atomic_scale`` the mean of the parent's.
This works for families whose config has a ``species`` list (NequIP, MACE, BPNN); others refuse.

Provenance: :func:`parent_record` gives the parent's path and SHA-256, which training stores in
the child's metadata (``parent_model``).
"""

from __future__ import annotations

import hashlib
import re

import jax
import numpy as np

from jaxpot.potential import Potential, from_config

__all__ = ["load_parent", "extend_species", "frozen_paths", "parent_record", "path_name"]


def path_name(path) -> str:
    """A params-tree path as ``a/b/c``."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def frozen_paths(params, patterns) -> list[tuple]:
    """Leaf paths (tuples of keys) whose ``a/b/c`` name fully matches one of ``patterns``.

    Raises:
      ValueError: an invalid regular expression, or a pattern that matches no parameter (the
        available top-level groups are listed).
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [(tuple(getattr(k, "key", k) for k in p), path_name(p)) for p, _ in leaves]
    out = []
    for pattern in patterns:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"--freeze {pattern!r} is not a valid regular expression: "
                             f"{err}") from None
        hits = [p for p, n in names if rx.fullmatch(n)]
        if not hits:
            groups = sorted({"/".join(n.split("/")[:2]) for _, n in names})
            raise ValueError(f"--freeze {pattern!r} matches no parameter; parameter groups: "
                             f"{', '.join(groups)}")
        out += [p for p in hits if p not in out]
    return out


def parent_record(path) -> dict:
    """``{"path", "sha256"}`` of a parent model file."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {"path": str(path), "sha256": digest}


def load_parent(path, data_numbers, element_refs: dict, *, seed: int = 0):
    """The parent model file's potential and params, extended to the data's elements.

    Args:
      path: the parent model file.
      data_numbers: atomic numbers present in the new data.
      element_refs: ``{Z: eV}`` least-squares references of the new data (for new elements).
      seed: seed of the new elements' fresh parameters.

    Returns:
      ``(potential, params, new_symbols)``.
    """
    from ase.data import chemical_symbols

    from jaxpot.serialization import load_model

    potential, params = load_model(path)
    known = set(potential.species or ())
    new = sorted({int(z) for z in data_numbers} - known) if potential.species else []
    if not new:
        return potential, params, []
    symbols = [chemical_symbols[z] for z in new]
    child, child_params = extend_species(potential, params, symbols, element_refs, seed=seed)
    return child, child_params, symbols


def extend_species(potential: Potential, params, symbols, element_refs: dict, *,
                   seed: int = 0):
    """``(potential, params)`` of ``potential`` extended by the elements ``symbols`` (see the
    module docstring).

    Raises:
      ValueError: the family has no ``species`` option, or an array cannot be matched.
    """
    from ase.data import atomic_numbers

    kwargs = dict(potential.config.get("kwargs", {}))
    old = kwargs.get("species")
    if not isinstance(old, list | tuple):
        raise ValueError(f"cannot add elements {symbols} to a {potential.config.get('name')!r} "
                         "model: its config has no species list (NequIP, MACE and BPNN have)")
    n_old, n_new = len(old), len(old) + len(symbols)
    child = from_config({"name": potential.config["name"],
                         "kwargs": {**kwargs, "species": [*old, *symbols]}})
    template = _dummy(child)
    fresh = child.init(jax.random.key(seed), template)

    def merge(path, new_leaf, old_leaf):
        return _merge_leaf(path_name(path), np.asarray(new_leaf), np.asarray(old_leaf),
                           n_old, n_new)

    merged = jax.tree_util.tree_map_with_path(merge, fresh, params)
    if "atomic_shift" in merged:
        shift = np.array(merged["atomic_shift"])
        scale = np.array(merged["atomic_scale"]) if "atomic_scale" in merged else None
        for i, sym in enumerate(symbols):
            shift[n_old + i] = float(element_refs.get(atomic_numbers[sym], 0.0))
            if scale is not None:
                scale[n_old + i] = float(np.mean(scale[:n_old]))
        merged["atomic_shift"] = shift
        if scale is not None:
            merged["atomic_scale"] = scale
    return child, jax.tree.map(lambda x, f: jax.numpy.asarray(x, np.asarray(f).dtype),
                               merged, fresh)


def _merge_leaf(name: str, new, old, n_old: int, n_new: int):
    """The parent's values in a child's leaf: equal shapes copy; a leaf that grew from
    ``n_old`` to ``n_new`` along one axis gets the parent's rows first."""
    if new.shape == old.shape:
        return old
    axes = [a for a in range(new.ndim) if new.ndim == old.ndim and new.shape[a] != old.shape[a]]
    if len(axes) != 1 or old.shape[axes[0]] != n_old or new.shape[axes[0]] != n_new:
        raise ValueError(f"cannot carry the parent's parameter {name} {list(old.shape)} into "
                         f"the extended model's {list(new.shape)}")
    out = new.copy()
    index = [slice(None)] * new.ndim
    index[axes[0]] = slice(0, n_old)
    out[tuple(index)] = old
    return out


def _dummy(potential: Potential):
    from jaxpot.serialization import _dummy_system

    return _dummy_system(potential)
