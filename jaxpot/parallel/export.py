"""A trained model as a self-contained ``jax.export`` (StableHLO) bundle.

``export_model(potential, params, "model.jaxpot-export")`` writes a folder with three files:

- ``function.stablehlo``: the serialized :class:`jax.export.Exported` of
  ``f(params, positions, species, cell, pbc, senders, receivers, shifts) -> (energy, forces,
  virial)`` with **symbolic** atom and edge counts, so one bundle serves every system size
  (the compiler specialises it per size when it is called);
- ``params.npz``: the parameter leaves ``p0, p1, ...`` in the order the function takes them
  (parameters are inputs, not constants baked into the program: baked-in weights make XLA's
  compilation crawl and the file large);
- ``header.json``: format name and version, the cutoff (Å), the species (atomic numbers the
  model knows), the dtype, units, the input and output conventions, the ghost shell a domain
  decomposition needs (``num_layers × cutoff`` for message passing) and the model config.

Calling it needs only ``jax`` and ``numpy`` (no jaxpot, flax or e3nn-jax): see
:func:`jaxpot.parallel.bundle.load_bundle`, a module that imports nothing from jaxpot and can be
copied into any script.

Conventions of the exported function (no padding: every atom and edge is real):

- ``positions`` ``[n_atoms, 3]`` Å; ``species`` ``[n_atoms]`` int32 atomic numbers;
  ``cell`` ``[3, 3]`` Å, rows are lattice vectors (zeros if not periodic); ``pbc`` ``[3]`` bool;
- edges ``j → i`` for every pair within the cutoff, both directions (a full list):
  ``senders`` (j) and ``receivers`` (i) ``[n_edges]`` int32, ``shifts`` ``[n_edges, 3]``
  integer image offsets S (as floats) with ``r_ij = x_j − x_i + S · cell``;
- outputs: ``energy`` (eV), ``forces`` ``[n_atoms, 3]`` (eV/Å, −∂E/∂x), ``virial``
  ``[3, 3]`` (eV, ``W = −∂E/∂ε = −V σ``, the convention of LAMMPS; zero if the volume is 0).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.lammps.coupling import message_passing_layers
from jaxpot.parallel.bundle import FORMAT, FORMAT_VERSION
from jaxpot.potential import Potential, energy_forces_stress
from jaxpot.serialization import _json_default
from jaxpot.system import System

__all__ = ["export_model"]


def _exported_fn(potential: Potential, treedef):
    efs = energy_forces_stress(potential)

    def fn(leaves, positions, species, cell, pbc, senders, receivers, shifts):
        params = jax.tree.unflatten(treedef, leaves)
        n = positions.shape[0]
        system = System(positions=positions, species=species,
                        masses=jnp.ones(n, positions.dtype), atom_mask=jnp.ones(n, bool),
                        cell=cell, pbc=pbc, senders=senders, receivers=receivers,
                        shifts=shifts)
        energy, forces, stress = efs(params, system)
        return energy, forces, -stress * system.volume

    return fn


def _input_specs(leaves, dtype):
    n_atoms, n_edges = jax.export.symbolic_shape("n_atoms, n_edges")
    f = jnp.dtype(dtype)
    return (
        [jax.ShapeDtypeStruct(np.shape(x), _leaf_dtype(x, f)) for x in leaves],
        jax.ShapeDtypeStruct((n_atoms, 3), f),
        jax.ShapeDtypeStruct((n_atoms,), jnp.int32),
        jax.ShapeDtypeStruct((3, 3), f),
        jax.ShapeDtypeStruct((3,), jnp.bool_),
        jax.ShapeDtypeStruct((n_edges,), jnp.int32),
        jax.ShapeDtypeStruct((n_edges,), jnp.int32),
        jax.ShapeDtypeStruct((n_edges, 3), f),
    )


def _leaf_dtype(x, float_dtype):
    x = np.asarray(x)
    return float_dtype if np.issubdtype(x.dtype, np.floating) else x.dtype


def _header(potential: Potential, dtype: str, platforms, num_layers: int | None) -> dict:
    cutoff = float(potential.cutoff)
    layers = num_layers if num_layers is not None else message_passing_layers(potential)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype,
        "platforms": list(platforms), "cutoff_angstrom": cutoff,
        "message_passing_layers": layers,
        "ghost_shell_angstrom": cutoff * max(layers, 1),
        "species": None if potential.species is None else [int(z) for z in potential.species],
        "local": bool(potential.local),
        "units": {"length": "angstrom", "energy": "eV", "forces": "eV/angstrom",
                  "virial": "eV"},
        "inputs": ["params (leaves p0..pk of params.npz)", "positions [n_atoms,3]",
                   "species [n_atoms] int32", "cell [3,3]", "pbc [3] bool",
                   "senders [n_edges] int32", "receivers [n_edges] int32",
                   "shifts [n_edges,3]"],
        "outputs": ["energy []", "forces [n_atoms,3]", "virial [3,3] = -V*stress"],
        "model_config": potential.config,
    }


def export_model(potential: Potential, params, path: str | os.PathLike, *,
                 dtype: str = "float64", platforms=("cpu",),
                 num_layers: int | None = None) -> Path:
    """Write ``potential`` with ``params`` as a bundle folder at ``path`` (see module doc).

    Args:
      potential: the model.
      params: its parameters.
      path: the bundle folder to create (written in a temporary folder beside it and renamed,
        so a failed export leaves nothing half-written; an existing path is refused).
      dtype: ``"float64"`` (exact comparisons; needs ``jax_enable_x64`` here and where it is
        loaded) or ``"float32"``.
      platforms: the platforms the program is lowered for (``("cpu", "cuda")`` for both).
      num_layers: message-passing depth for the header's ghost shell (default: from the
        config).

    Returns:
      The bundle path.

    Raises:
      ValueError: an existing ``path``, an unknown dtype, or float64 without x64.
    """
    path = Path(path)
    if path.exists():
        raise ValueError(f"{path}: exists; choose a new name (an export never overwrites)")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("a float64 export needs jax_enable_x64 (jax.config.update("
                         "'jax_enable_x64', True)), or export with dtype='float32'")
    leaves, treedef = jax.tree.flatten(params)
    exported = jax.export.export(jax.jit(_exported_fn(potential, treedef)),
                                 platforms=tuple(platforms))(*_input_specs(leaves, dtype))
    f = np.dtype(dtype)
    arrays = {f"p{k}": np.asarray(x, _leaf_dtype(x, f)) for k, x in enumerate(leaves)}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent or "."))
    try:
        (tmp / "function.stablehlo").write_bytes(exported.serialize())
        np.savez(tmp / "params.npz", **arrays)
        header = _header(potential, dtype, platforms, num_layers)
        header["n_params"] = len(leaves)
        (tmp / "header.json").write_text(json.dumps(header, indent=1, default=_json_default))
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
