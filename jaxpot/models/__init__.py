"""Learned model families (registered as potentials on import).

- :func:`nequip` (:class:`NequIPConfig`): E(3)-equivariant message passing (Batzner et al. 2022).
- :func:`mace` (:class:`MACEConfig`): higher body order via symmetric contractions
  (Batatia et al. 2022).

Both map one structure to Σ atomic energies; :func:`atomic_energies` gives the per-atom terms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxpot.models.bpnn import BPNNConfig, bpnn, fit_standardisation
from jaxpot.models.gap import GAPConfig, fit_gap, gap, gap_predict
from jaxpot.models.mace import MACEConfig, mace, mace_atomic_energies
from jaxpot.models.nequip import NequIPConfig, nequip, nequip_atomic_energies
from jaxpot.potential import Potential

__all__ = [
    "BPNNConfig",
    "GAPConfig",
    "bpnn",
    "fit_gap",
    "fit_standardisation",
    "gap",
    "gap_predict",
    "MACEConfig",
    "NequIPConfig",
    "atomic_energies",
    "average_num_neighbors",
    "mace",
    "mace_atomic_energies",
    "nequip",
    "nequip_atomic_energies",
]

_ATOMIC = {"nequip": nequip_atomic_energies, "mace": mace_atomic_energies}


def atomic_energies(potential: Potential) -> Callable:
    """``(params, system) -> [n_atoms]`` atomic energies (eV) of a NequIP or MACE potential.

    Uses ``potential.config``, so it also works for potentials rebuilt with
    :func:`jaxpot.from_config`. Padding atoms get 0.

    Raises:
      ValueError: the potential is not one of this module's models.
    """
    name = potential.config.get("name")
    if name not in _ATOMIC:
        raise ValueError(f"atomic_energies supports {sorted(_ATOMIC)}, not {name!r}")
    return _ATOMIC[name](**potential.config["kwargs"])


def average_num_neighbors(systems: Sequence, cutoff: float) -> float:
    """Mean number of neighbours within ``cutoff`` per real atom (host side).

    Use it for ``avg_num_neighbors`` in :class:`NequIPConfig` / :class:`MACEConfig`. Edges
    longer than ``cutoff`` (a skin) are not counted.
    """
    n_edges = n_atoms = 0
    for s in systems:
        vec = np.asarray(s.edge_vectors())
        mask = np.asarray(s.edge_mask) & (np.sum(vec * vec, -1) < cutoff * cutoff)
        n_edges += int(mask.sum())
        n_atoms += int(np.asarray(s.atom_mask).sum())
    if n_atoms == 0:
        raise ValueError("average_num_neighbors needs at least one atom")
    return n_edges / n_atoms


del jax


def _import_sibling_families() -> None:
    # Other model families living in this package (e.g. BPNN, GAP) register themselves on
    # import; import them here so that jaxpot.from_config finds every family.
    import importlib
    import importlib.util

    for name in ("bpnn", "gap"):
        if importlib.util.find_spec(f"jaxpot.models.{name}") is not None:
            importlib.import_module(f"jaxpot.models.{name}")


_import_sibling_families()
