"""Restart files: the final state of a run (positions, momenta, cell, bath and barostat state).

A restart file is a NumPy ``.npz`` archive (arrays only, loaded with ``allow_pickle=False``;
never a pickle) written atomically. It holds the structure (positions, cell, pbc, species,
masses, atom mask), the momenta, the bath ``kT`` and target ``pressure``, the PRNG key of the
Langevin / barostat noise and, for Nosé–Hoover, the chain's variables, plus the ensemble name
and the step count. :func:`jaxpot.md.simulate` continues from it with ``restart=``; with the
same options (and block layout) the continuation repeats an uninterrupted run.
"""

from __future__ import annotations

import io
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.files import atomic_write_bytes

__all__ = ["save_state", "load_state", "apply_restart"]

_SYSTEM = ("positions", "cell", "pbc", "species", "masses", "atom_mask")
_CHAIN = ("position", "momentum", "mass", "tau", "kinetic_energy", "degrees_of_freedom")


def save_state(path: str | os.PathLike, state, *, ensemble: str, step: int) -> None:
    """Write ``state`` (an integrator state from :mod:`jaxpot.md`) to ``path`` (``.npz``).

    Args:
      path: output file; written atomically (a temporary file renamed into place).
      state: the state, e.g. ``MDResult.final_state``.
      ensemble: the ensemble that produced it (checked when continuing).
      step: steps run so far (stored for the record).
    """
    arrays = {f"system_{k}": np.asarray(getattr(state.system, k)) for k in _SYSTEM}
    arrays.update(momenta=np.asarray(state.momenta), kT=np.asarray(state.kT),
                  pressure=np.asarray(state.pressure), ensemble=np.asarray(ensemble),
                  step=np.asarray(int(step)))
    if hasattr(state, "key"):
        arrays["key"] = np.asarray(jax.random.key_data(state.key))
    for name in ("chain", "baro_chain"):
        if hasattr(state, name):
            arrays.update({f"{name}_{k}": np.asarray(getattr(getattr(state, name), k))
                           for k in _CHAIN})
    if hasattr(state, "box_momentum"):
        arrays["box_momentum"] = np.asarray(state.box_momentum)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | os.PathLike) -> dict:
    """Read a restart file into a dict of NumPy arrays (no pickles are ever loaded).

    Raises:
      ValueError: the file is not a jaxpot restart file (names the missing entry).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"restart file {os.fspath(path)!r} could not be read as .npz: "
                         f"{err}") from None
    for k in ("momenta", "ensemble", "step") + tuple(f"system_{s}" for s in _SYSTEM):
        if k not in out:
            raise ValueError(f"restart file {os.fspath(path)!r} has no {k!r} entry: not a "
                             "jaxpot md restart file")
    return out


def restart_system(data: dict, system):
    """``system`` with positions, cell and pbc from a restart file (same atoms required).

    Raises:
      ValueError: the file's atoms (count, species or padding) differ from ``system``'s.
    """
    for k in ("species", "atom_mask"):
        mine, theirs = np.asarray(getattr(system, k)), data[f"system_{k}"]
        if mine.shape != theirs.shape or not np.array_equal(mine, theirs):
            raise ValueError(f"restart: the file's {k} ({theirs.shape}) do not match the "
                             f"structure's ({mine.shape}): a restart continues the same atoms")
    dtype = jnp.asarray(system.positions).dtype
    return system.replace(positions=jnp.asarray(data["system_positions"], dtype),
                          cell=jnp.asarray(data["system_cell"], dtype),
                          pbc=jnp.asarray(data["system_pbc"]))


def apply_restart(state, data: dict):
    """The freshly initialised ``state`` with the file's noise key and thermostat chain."""
    if "key" in data and hasattr(state, "key"):
        state = state.replace(key=jax.random.wrap_key_data(jnp.asarray(data["key"])))
    for name in ("chain", "baro_chain"):
        if hasattr(state, name) and f"{name}_position" in data:
            chain = getattr(state, name).set(
                **{k: jnp.asarray(data[f"{name}_{k}"]) for k in _CHAIN})
            state = state.replace(**{name: chain})
    if hasattr(state, "box_momentum") and "box_momentum" in data:
        state = state.replace(box_momentum=jnp.asarray(data["box_momentum"]))
    return state
