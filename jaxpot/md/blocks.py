"""Run a jitted block, check the neighbour list on the host, reallocate and redo on overflow.

Every jitted loop over positions that move (the MD blocks of :func:`jaxpot.md.simulate`, FIRE
segments, the NVE check of :mod:`jaxpot.testing`) carries a :class:`~jaxpot.neighbors.Neighbors`
list whose sticky ``overflow`` flag turns on when a rebuild did not fit: more neighbours than
slots, more atoms in a bin than its capacity, an atom outside the box of a cell list along a
non-periodic direction (an evaporating droplet, a hot gas), or a cell the list was not built
for. A block computed on such a list is wrong, so it is thrown away and computed again from its
start with a list allocated afresh for the positions **and cell** at the start of the block.

:class:`NeighborKeeper` owns the allocation policy (cutoff, skin, head-room, method), grows the
capacity after each overflow, counts reallocations, and raises :class:`NeighborListError` with a
diagnosis when reallocating cannot help. :func:`run_checked` is the redo loop itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxpot import neighbors as nb
from jaxpot.neighbors import Neighbors

__all__ = ["NeighborKeeper", "NeighborListError", "run_checked"]


class NeighborListError(ValueError):
    """The neighbour list overflows again and again: reallocating cannot fix the block.

    Attributes:
      outside: True when the cause is atoms leaving the box of a cell list (not a capacity):
        a caller can then run the same steps in shorter blocks, each reallocating from its own
        start.
    """

    def __init__(self, message: str, *, outside: bool = False):
        super().__init__(message)
        self.outside = outside


def _capacity_short(failed: Neighbors) -> bool:
    return int(np.asarray(failed.max_count)) > failed.spec.max_neighbors


def _open_cell_list(failed: Neighbors) -> bool:
    return failed.spec.method == "cell" and not all(failed.spec.pbc)


@dataclasses.dataclass
class NeighborKeeper:
    """Allocation policy of a jitted neighbour list, and its growth after overflows.

    Attributes:
      cutoff: interaction cutoff, Å.
      skin: Verlet skin, Å.
      capacity_multiplier: head-room of the allocation; multiplied by ``growth`` after every
        overflow (it also sizes the bins of a cell list).
      method: ``"auto"``, ``"brute"`` or ``"cell"`` (see :func:`jaxpot.neighbors.allocate`);
        after the first allocation the chosen method is kept.
      max_attempts: overflows tolerated for one block before :class:`NeighborListError`.
      growth: factor applied to the capacity after an overflow.
      n_reallocations: reallocations so far (all blocks).
    """

    cutoff: float
    skin: float
    capacity_multiplier: float = 1.25
    method: str = "auto"
    max_attempts: int = 8
    growth: float = 1.5
    n_reallocations: int = 0

    def __post_init__(self):
        self._requested = self.method

    def allocate(self, system, *, min_capacity: int = 0) -> Neighbors:
        """A list for ``system``'s positions and cell (see :func:`jaxpot.neighbors.allocate`).

        A cell list chosen by ``"auto"`` that the cell has outgrown (a box compressed under
        NPT until fewer than 3 bins fit) falls back to ``"auto"``'s choice for the new cell.
        """
        method = self.method
        if self._requested == "auto" and method == "cell" and not _cell_fits(system, self):
            method = "auto"
        nbrs = nb.allocate(system, self.cutoff, skin=self.skin,
                           capacity_multiplier=self.capacity_multiplier, method=method,
                           min_capacity=min_capacity)
        self.method = nbrs.spec.method
        return nbrs

    def regrow(self, system, failed: Neighbors) -> Neighbors:
        """A bigger list for ``system`` (the start of the block) after ``failed`` overflowed.

        The neighbour capacity grows past what the failed block needed, the head-room (and the
        bin capacity of a cell list) by ``growth``; the box of a cell list is measured again
        from the current extent of the atoms, so a growing cluster gets a growing box.
        """
        self.n_reallocations += 1
        self.capacity_multiplier *= self.growth
        spec = failed.spec
        min_cap = 0
        if _capacity_short(failed):
            min_cap = max(int(math.ceil(spec.max_neighbors * self.growth)),
                          int(math.ceil(int(np.asarray(failed.max_count)) * 1.25)) + 1)
        return self.allocate(system, min_capacity=max(min_cap, spec.max_neighbors))


def _cell_fits(system, keeper: NeighborKeeper) -> bool:
    """Whether every periodic direction of ``system``'s cell still holds 3 cell-list bins."""
    pbc = np.asarray(system.pbc, bool)
    basis = nb.complete_basis(np.asarray(system.cell, np.float64), pbc)
    width = 1.0 / np.linalg.norm(np.linalg.inv(basis), axis=0)
    return bool(np.all(~pbc | (width >= 3.0 * (keeper.cutoff + keeper.skin))))


def _diagnose(failed: Neighbors, attempts: int, where: str, system) -> str:
    spec = failed.spec
    needed = int(np.asarray(failed.max_count))
    n_real = int(np.asarray(system.atom_mask).sum())
    if _capacity_short(failed):
        why = (f"an atom had {needed} neighbours within {spec.cutoff + spec.skin:.3g} Å "
               f"({spec.max_neighbors} slots); a count that keeps growing means atoms are "
               "collapsing onto each other (a hole in the potential, or a time step far too "
               "large)")
    elif spec.method == "cell" and not all(spec.pbc):
        why = ("atoms keep leaving the box of the cell list along a non-periodic direction "
               "faster than one block can follow (atoms flying apart); use fewer steps per "
               "block (smaller log_every) or a periodic cell")
    else:
        why = ("the bins of the cell list keep overfilling or the cell changed beyond what the "
               "list covers")
    return (f"neighbour list still overflows after {attempts} reallocations {where} "
            f"({n_real} atoms, method {spec.method!r}, max_neighbors={spec.max_neighbors}): "
            f"{why}")


def run_checked(
    run: Callable[[Any], Any],
    start: Any,
    keeper: NeighborKeeper,
    *,
    first: Any = None,
    neighbors_of: Callable[[Any], Neighbors] = lambda out: out[0].neighbors,
    system_of: Callable[[Any], Any] = lambda start: start.system,
    with_neighbors: Callable[[Any, Neighbors], Any] = lambda s, n: s.replace(neighbors=n),
    where: str = "",
) -> tuple[Any, Any]:
    """Run ``out = run(start)``; while its list overflowed, reallocate at ``start`` and redo.

    Args:
      run: the jitted block, ``start -> out``.
      start: the state at the start of the block (positions, cell and list).
      keeper: the :class:`NeighborKeeper` that reallocates and counts.
      first: ``run(start)`` when the caller already dispatched it (asynchronous dispatch).
      neighbors_of: ``out -> Neighbors`` whose ``overflow`` flag judges the block (default:
        ``out[0].neighbors``, the end state of a ``(state, observations)`` pair).
      system_of: ``start -> System`` for the allocation (positions and cell).
      with_neighbors: ``(start, neighbors) -> start`` with the new list.
      where: names the block in error messages (e.g. ``"in steps 200-400"``).

    Returns:
      ``(start, out)``: the start state actually used (with the list that fitted) and the
      block's output, computed on a list that never overflowed.

    Raises:
      NeighborListError: still overflowing after ``keeper.max_attempts`` reallocations, or
        (``outside=True``) atoms left the box of a freshly allocated non-periodic cell list
        within the block.
    """
    out = run(start) if first is None else first
    attempts = 0
    while bool(neighbors_of(out).overflow):
        failed = neighbors_of(out)
        # A list allocated at this very start already failed for a reason other than its
        # capacity: atoms leave the (fresh) box within the block; more capacity cannot help.
        outside = attempts > 0 and _open_cell_list(failed) and not _capacity_short(failed)
        if outside or attempts >= keeper.max_attempts:
            raise NeighborListError(_diagnose(failed, attempts, where, system_of(start)),
                                    outside=outside)
        attempts += 1
        start = with_neighbors(start, keeper.regrow(system_of(start), failed))
        out = run(start)
    return start, out
