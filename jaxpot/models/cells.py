"""Lattice sums sized for the cells a model will meet.

Ewald's reciprocal sum and PME's mesh have static shapes, made on the host for the longest
lattice vectors a potential must serve (``max_lengths``: 16 × 16 × 32 Å by default in a hybrid).
A cell with a longer vector would give NaN (Ewald, never a silently wrong number) or a coarser
mesh (PME). A model trained on 64-atom cells must still run on a 216-atom one, so the places
that meet structures before compiling (``jaxpot eval``, ``jaxpot md``, ``jaxpot relax``,
:func:`jaxpot.analysis.commands.compute_properties` with its supercells, the ASE calculator,
training) pass the cells through :func:`fit_cells`: it returns the same potential when every
cell fits, and otherwise rebuilds it from its config with the lattice sums widened to cover
them. The parameters do not depend on the k box or mesh, so they carry over unchanged.

    >>> potential = fit_cells(potential, [atoms.cell for atoms in frames])
"""

from __future__ import annotations

import copy
import math

import numpy as np

from jaxpot.potential import Potential
from jaxpot.registry import from_config

__all__ = ["CELL_MARGIN", "cell_capacity", "fit_cells", "longest_vectors"]

ROUND_TO = 4.0
"""Widened capacities are rounded up to a multiple of this many Å, so an MD run whose cell
breathes does not rebuild at every step."""


CELL_MARGIN = 1.1
"""Factor on a starting cell's vectors that the commands running MD, relaxations and property
scans reserve (a barostat or a cell relaxation may grow the cell; 1.1 is +33 % volume)."""


def longest_vectors(cells) -> np.ndarray | None:
    """``[3]`` longest lattice-vector lengths (Å) over ``cells`` (3 × 3 arrays or ASE cells);
    None for none or only empty cells."""
    lengths = [np.linalg.norm(np.asarray(c, float).reshape(3, 3), axis=1) for c in cells]
    lengths = [x for x in lengths if np.any(x > 0)]
    return np.max(lengths, axis=0) if lengths else None


def _hybrid_default() -> tuple:
    from jaxpot.models.hybrid import DEFAULT_COULOMB

    return tuple(DEFAULT_COULOMB["max_lengths"])


def _nodes(config):
    """Every ``(kwargs dict, key)`` in a config tree that holds a lattice-sum capacity."""
    if isinstance(config, dict):
        kwargs = config.get("kwargs")
        if config.get("name") == "coulomb" and isinstance(kwargs, dict):
            yield kwargs, "coulomb"
        elif config.get("name") == "hybrid" and isinstance(kwargs, dict):
            yield kwargs, "hybrid"
        for value in config.values():
            yield from _nodes(value)
    elif isinstance(config, list):
        for value in config:
            yield from _nodes(value)


def _capacity(kwargs: dict, kind: str) -> np.ndarray:
    if kind == "coulomb":  # its config always records max_lengths (jaxpot.potentials.coulomb)
        return np.broadcast_to(np.asarray(kwargs["max_lengths"], float), (3,))
    options = kwargs.get("coulomb_options") or {}
    return np.broadcast_to(np.asarray(options.get("max_lengths", _hybrid_default()), float),
                           (3,))


def cell_capacity(potential: Potential) -> np.ndarray | None:
    """``[3]`` lattice-vector lengths (Å) every lattice sum of ``potential`` serves; None for a
    potential without one."""
    caps = [_capacity(kw, kind) for kw, kind in _nodes(potential.config)]
    return np.min(caps, axis=0) if caps else None


def _widen(kwargs: dict, kind: str, need: np.ndarray) -> None:
    new = np.maximum(_capacity(kwargs, kind), [ROUND_TO * math.ceil(x / ROUND_TO) for x in need])
    if kind == "coulomb":
        kwargs["max_lengths"] = [float(x) for x in new]
    else:
        kwargs["coulomb_options"] = {**(kwargs.get("coulomb_options") or {}),
                                     "max_lengths": [float(x) for x in new]}


def fit_cells(potential: Potential, cells) -> Potential:
    """``potential`` with lattice sums that serve every cell in ``cells``.

    Returns ``potential`` itself when it has no lattice sum or all cells fit; otherwise a
    potential rebuilt from a copy of its config whose ``max_lengths`` cover the longest vectors
    (per direction, rounded up to :data:`ROUND_TO` Å).

    Raises:
      ValueError: the potential must be widened but its config cannot be rebuilt (a potential
        made in code rather than by a registered family).
    """
    need = longest_vectors(cells)
    cap = cell_capacity(potential)
    if need is None or cap is None or np.all(need <= cap + 1e-9):
        return potential
    config = copy.deepcopy(potential.config)
    for kwargs, kind in _nodes(config):
        _widen(kwargs, kind, need)
    try:
        return from_config(config)
    except ValueError as err:
        raise ValueError(f"cells with lattice vectors up to {np.round(need, 2).tolist()} Å "
                         f"exceed the lattice sum's {cap.tolist()} Å and the potential cannot "
                         f"be rebuilt wider: {err}") from None
