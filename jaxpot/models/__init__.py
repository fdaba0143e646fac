"""Learned model families (registered as potentials on import).

- :func:`nequip` (:class:`NequIPConfig`): E(3)-equivariant message passing (Batzner et al. 2022).
- :func:`mace` (:class:`MACEConfig`): higher body order via symmetric contractions
  (Batatia et al. 2022).
- :func:`ensemble`: K stacked copies of a family, evaluated in one vmapped call, with the
  members' spread as per-atom outputs.

Both map one structure to Σ atomic energies; :func:`atomic_energies` gives the per-atom terms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from jaxpot.models.bpnn import BPNNConfig, bpnn, fit_standardisation
from jaxpot.models.ensemble import ensemble, member_predictions
from jaxpot.models.gap import GAPConfig, fit_gap, gap, gap_predict
from jaxpot.models.mace import MACEConfig, mace, mace_atomic_energies
from jaxpot.models.nequip import NequIPConfig, nequip, nequip_atomic_energies
from jaxpot.potential import Potential, atomic_outputs

__all__ = [
    "BPNNConfig",
    "GAPConfig",
    "bpnn",
    "ensemble",
    "member_predictions",
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

def atomic_energies(potential: Potential) -> Callable:
    """``(params, system) -> [n_atoms]`` atomic energies (eV) of any potential that declares
    per-atom energies (``"energy" in potential.outputs``: NequIP, MACE, BPNN, pair potentials,
    sums and element-offset wrappers of those). Padding atoms get 0.

    Raises:
      ValueError: the potential declares no per-atom energies.
    """
    if "energy" not in potential.outputs:
        raise ValueError(f"potential {potential.config.get('name')!r} declares no per-atom "
                         f"energies (its outputs: {list(potential.outputs)})")
    atomic = atomic_outputs(potential)
    return lambda params, system: atomic(params, system)["energy"]


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

