"""Load a ``jaxpot export`` bundle with nothing but ``jax`` and ``numpy``.

This module imports nothing from jaxpot (nor flax or e3nn-jax), so it runs where only JAX is
installed; copy it into a script or load it by path. The bundle layout and the conventions of
the function are described in :mod:`jaxpot.parallel.export`.

Example::

    fn, header = load_bundle("model.export")
    energy, forces, virial = fn(positions, species, cell, pbc, senders, receivers, shifts)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

__all__ = ["load_bundle", "FORMAT", "FORMAT_VERSION"]

FORMAT = "jaxpot-export"
FORMAT_VERSION = 1


def load_bundle(path: str | os.PathLike):
    """Load a bundle with nothing but ``jax`` and ``numpy``.

    Returns:
      ``(fn, header)`` with ``fn(positions, species, cell, pbc, senders, receivers, shifts) ->
      (energy, forces, virial)`` (parameters already bound) and the header dict.
    """
    path = Path(path)
    header = json.loads((path / "header.json").read_text())
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} bundle (format {header.get('format')!r})")
    if int(header.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: bundle format version {header['format_version']} is newer "
                         f"than this loader's ({FORMAT_VERSION})")
    if header.get("dtype") == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(f"{path}: a float64 bundle needs jax_enable_x64 "
                         "(jax.config.update('jax_enable_x64', True))")
    exported = jax.export.deserialize(bytearray((path / "function.stablehlo").read_bytes()))
    with np.load(path / "params.npz") as npz:
        leaves = [npz[f"p{k}"] for k in range(int(header["n_params"]))]

    def fn(positions, species, cell, pbc, senders, receivers, shifts):
        return exported.call(leaves, positions, species, cell, pbc, senders, receivers, shifts)

    return fn, header
