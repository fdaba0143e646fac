"""Neighbour lists with periodic image shifts.

Two paths share one convention (DESIGN.md): an edge has a receiver ``i`` (the centre), a sender
``j`` (the neighbour) and an integer image shift ``S``; its vector is
``positions[j] - positions[i] + S @ cell`` (cell rows are lattice vectors). Any cell works,
including cells smaller than twice the cutoff, where an atom sees several images of the same
neighbour and images of itself.

* :func:`neighbor_list` runs on the host and returns the exact list (used to build training
  data, by ``System.from_ase`` and by the ASE calculator, and as the reference for the jitted
  path): the cell list of the ``vesin`` library (O(N)), or jaxpot's own all-pairs loop over
  image shifts (``method="exact"``, O(N²)); both are cross-tested against ASE. Periodic cells
  so thin that more than 100 000 images would be needed (a nearly flat cell) are refused.
* :func:`allocate` + :func:`update` are for simulations. ``allocate`` (host) measures the
  system, chooses a method (all-pairs over a static set of image shifts for small systems, a
  cell list whose cost grows linearly with N for large ones) and a capacity. ``update`` is
  jittable: it rebuilds the list only when an atom has moved more than half the Verlet skin
  since the last build, and sets ``overflow`` if any capacity was exceeded. Callers (``md.run``
  does this) must check ``overflow`` on the host, call :func:`allocate` again and redo the work,
  so that no energy is ever computed on a truncated list.

The jitted list is stored per atom (``max_neighbors`` slots for each receiver), flattened so
the real ``receivers`` are non-decreasing; empty slots have ``senders == receivers == n_atoms``
(the sentinel).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = [
    "Neighbors",
    "NeighborSpec",
    "neighbor_list",
    "wrap_positions",
    "complete_basis",
    "allocate",
    "update",
    "rebuild",
    "needs_rebuild",
]


# ---------------------------------------------------------------------------------------------
# Geometry helpers (host side, NumPy)
# ---------------------------------------------------------------------------------------------


def _check_cell(cell: np.ndarray, pbc: np.ndarray) -> None:
    periodic_rows = cell[np.asarray(pbc, bool)]
    if periodic_rows.shape[0] == 0:
        return
    s = np.linalg.svd(periodic_rows, compute_uv=False)
    if s.min() < 1e-8 * max(1.0, s.max()):
        raise ValueError(
            f"cell is singular along its periodic directions (pbc={pbc.tolist()}, "
            f"cell={cell.tolist()}): periodic lattice vectors must be non-zero and independent"
        )


def _complete_basis(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Rows: the periodic lattice vectors, plus unit vectors orthogonal to them for the rest."""
    pbc = np.asarray(pbc, bool)
    basis = np.zeros((3, 3))
    periodic = [d for d in range(3) if pbc[d]]
    free = [d for d in range(3) if not pbc[d]]
    for d in periodic:
        basis[d] = cell[d]
    if len(periodic) == 2:
        n = np.cross(cell[periodic[0]], cell[periodic[1]])
        basis[free[0]] = n / np.linalg.norm(n)
    elif len(periodic) == 1:
        a = cell[periodic[0]] / np.linalg.norm(cell[periodic[0]])
        trial = np.eye(3)[np.argmin(np.abs(a))]
        u = trial - a * (trial @ a)
        u /= np.linalg.norm(u)
        basis[free[0]] = u
        basis[free[1]] = np.cross(a, u)
    elif len(periodic) == 0:
        basis = np.eye(3)
    return basis


_MAX_IMAGE_SHIFTS = 100_000  # image shifts a list may try; more means a nearly flat cell


def _shift_range(cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> np.ndarray:
    """Largest |S_d| needed for wrapped positions, per dimension (0 where not periodic).

    Raises:
      ValueError: the cell is so thin along a periodic direction, compared with ``cutoff``,
        that more than ``_MAX_IMAGE_SHIFTS`` image shifts would be needed (a nearly flat cell
        passes the singularity check but would exhaust memory).
    """
    pbc = np.asarray(pbc, bool)
    if not pbc.any():
        return np.zeros(3, int)
    recip = np.linalg.inv(_complete_basis(cell, pbc))  # columns b_d with a_e . b_d = delta
    width = 1.0 / np.linalg.norm(recip, axis=0)  # perpendicular width of the cell, Å
    reach = np.where(pbc, cutoff / width, 0.0)
    n_images = float(np.prod(2.0 * np.floor(reach) + 3.0, where=pbc))
    if not np.all(np.isfinite(reach)) or n_images > _MAX_IMAGE_SHIFTS:
        d = int(np.argmax(reach))
        raise ValueError(
            f"cell {np.round(cell, 6).tolist()} (pbc={pbc.tolist()}) is only {width[d]:.3g} Å "
            f"thick along lattice vector {d} against a cutoff of {cutoff:.4g} Å: the neighbour "
            f"list would need about {n_images:.3g} periodic images (limit {_MAX_IMAGE_SHIFTS}); "
            "is this cell nearly flat by mistake? Make that direction non-periodic or fix the cell"
        )
    return np.where(pbc, np.floor(reach).astype(int) + 1, 0)


def _shift_vectors(n: np.ndarray) -> np.ndarray:
    ranges = [range(-int(k), int(k) + 1) for k in n]
    return np.array(list(itertools.product(*ranges)), dtype=np.float64).reshape(-1, 3)


def _wrap(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray):
    """Wrap periodic coordinates into the cell; return wrapped positions and integer images."""
    basis = _complete_basis(cell, pbc)
    frac = positions @ np.linalg.inv(basis)
    image = np.where(np.asarray(pbc, bool), np.floor(frac), 0.0)
    return positions - image @ basis, image


def wrap_positions(positions, cell, pbc) -> tuple[np.ndarray, np.ndarray]:
    """Wrap coordinates into the cell along periodic directions (host, float64).

    Args:
      positions: ``[n_atoms, 3]`` Å.
      cell: ``[3, 3]`` rows are lattice vectors, Å (rows of non-periodic directions ignored).
      pbc: three booleans.

    Returns:
      ``(wrapped [n_atoms, 3] Å, image [n_atoms, 3])``: ``positions = wrapped + image @ basis``
      with integer-valued ``image`` (0 along non-periodic directions), where ``basis`` is
      :func:`complete_basis` (the lattice vectors along periodic directions).
    """
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    return _wrap(np.asarray(positions, np.float64).reshape(-1, 3),
                 np.asarray(cell, np.float64).reshape(3, 3), pbc)


def complete_basis(cell, pbc) -> np.ndarray:
    """``[3, 3]`` rows: the periodic lattice vectors, completed by orthonormal vectors along the
    non-periodic directions (a basis even when those cell rows are zero or tilted), Å."""
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    return _complete_basis(np.asarray(cell, np.float64).reshape(3, 3), pbc)


def neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray | None,
    pbc,
    cutoff: float,
    *,
    self_interaction: bool = False,
    method: Literal["auto", "vesin", "exact"] = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs closer than ``cutoff``, exactly, on the host.

    Args:
      positions: ``[n_atoms, 3]`` Å (need not be wrapped into the cell).
      cell: ``[3, 3]`` rows are lattice vectors, Å; may be ``None``/zeros without pbc.
      pbc: three booleans.
      cutoff: Å.
      self_interaction: include ``i == j`` with ``S == 0`` (never wanted for energies).
      method: ``"vesin"`` (cell list of the ``vesin`` library, O(N)), ``"exact"`` (jaxpot's
        own all-pairs loop over image shifts, O(N²), the reference), or ``"auto"`` (vesin when
        it is installed). Both give the same pairs, including several images of a neighbour
        (and of the atom itself) in cells smaller than twice the cutoff, and mixed ``pbc``.

    Returns:
      ``(receivers, senders, shifts)`` with shapes ``[n_edges]``, ``[n_edges]`` and
      ``[n_edges, 3]`` (integer-valued floats), sorted by receiver, sender, then shift. The
      vector of edge e is ``positions[senders[e]] - positions[receivers[e]] + shifts[e] @ cell``
      and every pair appears in both directions.

    Raises:
      ValueError: non-finite positions, a singular periodic cell, or a cell so thin along a
        periodic direction that the list would need more than 100 000 periodic images.

    Example:
      >>> import numpy as np
      >>> r, s, S = neighbor_list(np.array([[0., 0, 0], [1., 0, 0]]), None, [False] * 3, 1.5)
      >>> r.tolist(), s.tolist()
      ([0, 1], [1, 0])
    """
    positions = np.asarray(positions, np.float64).reshape(-1, 3)
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64).reshape(3, 3)
    if method not in ("auto", "vesin", "exact"):
        raise ValueError(f"neighbor_list: method must be 'auto', 'vesin' or 'exact', "
                         f"got {method!r}")
    if not np.all(np.isfinite(positions)):
        atom = int(np.flatnonzero(~np.all(np.isfinite(positions), axis=1))[0])
        raise ValueError(f"neighbor_list: position of atom {atom} is not finite "
                         f"({positions[atom].tolist()})")
    if not np.all(np.isfinite(cell[pbc])):
        raise ValueError(f"neighbor_list: cell has non-finite periodic rows: {cell.tolist()}")
    if not (np.isfinite(cutoff) and cutoff >= 0):
        raise ValueError(f"neighbor_list: cutoff must be a finite distance >= 0 Å, got {cutoff}")
    _check_cell(cell, pbc)
    _shift_range(cell, pbc, cutoff)  # refuses nearly flat cells before allocating anything
    n = positions.shape[0]
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 3))
    if method == "auto":
        method = "vesin" if _vesin() is not None else "exact"
    if method == "vesin":
        if _vesin() is None:
            raise ValueError("neighbor_list: method='vesin' needs the vesin package "
                             "(pip install vesin)")
        receivers, senders, shifts = _vesin_list(positions, cell, pbc, cutoff)
    else:
        receivers, senders, shifts = _exact_list(positions, cell, pbc, cutoff)
    if self_interaction:
        own = np.arange(n, dtype=np.int32)
        receivers = np.concatenate([receivers, own])
        senders = np.concatenate([senders, own])
        shifts = np.concatenate([shifts, np.zeros((n, 3))])
    order = _edge_order(receivers, senders, shifts, n)
    return receivers[order], senders[order], shifts[order]


def _edge_order(receivers, senders, shifts, n: int) -> np.ndarray:
    """Order by receiver, sender, then shift, so the list (and any float sum over its edges)
    does not depend on the method or on threads."""
    pair = receivers.astype(np.int64) * n + senders
    return np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], pair))


@functools.cache
def _vesin():
    try:
        import vesin
    except ImportError:  # pragma: no cover - vesin is a dependency; kept for minimal installs
        return None
    return vesin


def _vesin_list(positions, cell, pbc, cutoff):
    """Full list from vesin (ASE's convention: D = x_j - x_i + S·cell, i the centre)."""
    calculator = _vesin().NeighborList(cutoff=float(cutoff), full_list=True)
    box = np.where(pbc[:, None], cell, 0.0)  # rows along free directions are never used
    i, j, shifts = calculator.compute(positions, box, pbc.tolist(), quantities="ijS")
    return (np.asarray(i, np.int32), np.asarray(j, np.int32),
            np.asarray(shifts, np.float64).reshape(-1, 3))


def _exact_list(positions, cell, pbc, cutoff):
    """jaxpot's own O(N²) list over every image shift (the reference for the other paths)."""
    n = positions.shape[0]
    wrapped, image = _wrap(positions, cell, pbc)
    shifts = _shift_vectors(_shift_range(cell, pbc, cutoff))
    offsets = _mm(shifts, cell)
    cutoff2 = cutoff * cutoff
    rec, snd, sh = [], [], []
    # Chunk receivers so that the [chunk, n, 3] block stays around 16 M numbers.
    chunk = max(1, int(16_000_000 // (3 * n)))
    for s_idx in range(shifts.shape[0]):
        zero_shift = not shifts[s_idx].any()
        for start in range(0, n, chunk):
            xi = wrapped[start : start + chunk]
            d = wrapped[None, :, :] - xi[:, None, :] + offsets[s_idx]
            r2 = np.einsum("ijk,ijk->ij", d, d)
            mask = r2 < cutoff2
            if zero_shift:
                rows = np.arange(xi.shape[0])
                mask[rows, rows + start] = False
            ii, jj = np.nonzero(mask)
            rec.append(ii + start)
            snd.append(jj)
            sh.append(np.broadcast_to(shifts[s_idx], (ii.size, 3)))
    receivers = np.concatenate(rec).astype(np.int32)
    senders = np.concatenate(snd).astype(np.int32)
    # Undo the wrapping: S = S_w + n_i - n_j.
    return receivers, senders, np.concatenate(sh) + image[receivers] - image[senders]


# ---------------------------------------------------------------------------------------------
# Jittable neighbour lists for simulations
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NeighborSpec:
    """Static description of a jitted neighbour list (hashable; a change means a recompile).

    Attributes:
      cutoff: interaction cutoff, Å.
      skin: Verlet skin, Å; the list holds pairs within ``cutoff + skin``.
      max_neighbors: slots per receiver.
      method: ``"brute"`` (all pairs over a static shift set) or ``"cell"`` (cell list).
      shifts: brute: the image shifts to try, for wrapped positions.
      grid: cell: number of bins per box direction.
      bin_capacity: cell: atoms per bin.
      box: cell: rows of the binning box (periodic rows are the lattice vectors), Å.
      origin: cell: origin of the binning box, Å.
      pbc: periodicity the list was built for.
    """

    cutoff: float
    skin: float
    max_neighbors: int
    method: Literal["brute", "cell"]
    pbc: tuple[bool, bool, bool]
    shifts: tuple = ()
    grid: tuple[int, int, int] = (1, 1, 1)
    bin_capacity: int = 0
    box: tuple = ()
    origin: tuple = ()


@struct.dataclass
class Neighbors:
    """A neighbour list carried through jitted code.

    Attributes:
      senders: ``[n_atoms * max_neighbors]`` int32; empty slots hold ``n_atoms``.
      receivers: ``[n_atoms * max_neighbors]`` int32; slot block ``i`` belongs to atom ``i``
        (non-decreasing over real edges); empty slots hold ``n_atoms``.
      shifts: ``[n_atoms * max_neighbors, 3]`` integer image shifts (float dtype).
      reference_positions: ``[n_atoms, 3]`` positions at the last rebuild, Å.
      overflow: scalar bool; True if any rebuild since :func:`allocate` did not fit (sticky;
        the list is then invalid): a capacity was exceeded, an atom left the box of a cell
        list along a non-periodic direction, or the cell deformed beyond what ``spec`` covers.
      max_count: scalar int32, the largest number of neighbours any atom had at the last rebuild.
      spec: static :class:`NeighborSpec`.
      reference_cell: ``[3, 3]`` cell at the last rebuild, Å (set by :func:`allocate`); with
        it the skin test of :func:`update` also accounts for a cell that changed (NPT). None
        (a list built by hand) means positions-only skin tests.
    """

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    reference_positions: jax.Array
    overflow: jax.Array
    max_count: jax.Array
    spec: NeighborSpec = struct.field(pytree_node=False)
    reference_cell: jax.Array | None = None

    def attach(self, system):
        """Return ``system`` with this list's edges."""
        return system.replace(senders=self.senders, receivers=self.receivers, shifts=self.shifts)


def _compact(mask: jax.Array, cand: jax.Array, shift: jax.Array, max_neighbors: int, n: int):
    """Pack the True entries of each row of ``mask`` into ``max_neighbors`` slots."""
    rows = jnp.arange(mask.shape[0])[:, None]
    pos = jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1
    slot = jnp.where(mask, pos, max_neighbors)  # overflowing and unused go to the dump column
    senders = jnp.full((mask.shape[0], max_neighbors + 1), n, jnp.int32)
    senders = senders.at[rows, slot].set(cand.astype(jnp.int32), mode="drop")
    shifts = jnp.zeros((mask.shape[0], max_neighbors + 1, 3), shift.dtype)
    shifts = shifts.at[rows, slot].set(shift, mode="drop")
    count = jnp.sum(mask, axis=1, dtype=jnp.int32)
    return senders[:, :max_neighbors], shifts[:, :max_neighbors], count


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at full precision: on GPUs a float32 matmul defaults to TF32 (a 10-bit
    mantissa), which would move a 20 Å image offset by ~0.02 Å."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _wrap_jax(positions, basis_inv, basis, pbc):
    frac = _mm(positions, basis_inv)
    image = jnp.where(pbc, jnp.floor(frac), 0.0)
    return positions - _mm(image, basis), image, frac


def _candidates_brute(spec: NeighborSpec, positions, cell, atom_mask):
    n = positions.shape[0]
    pbc = jnp.asarray(spec.pbc)
    basis = jnp.where(pbc[:, None], cell, jnp.asarray(np.asarray(spec.box), cell.dtype))
    basis_inv = jnp.linalg.inv(basis)
    wrapped, image, _ = _wrap_jax(positions, basis_inv, basis, pbc)
    shifts = jnp.asarray(np.asarray(spec.shifts), positions.dtype)  # [n_s, 3]
    # The static shift set reaches |S_d| <= n_d, enough while (cutoff+skin)/width_d <= n_d. A
    # cell deformed since allocate (NPT, strain) may need more images: flag it, never miss pairs.
    n_max = np.abs(np.asarray(spec.shifts)).max(axis=0) if spec.shifts else np.zeros(3)
    reach = (spec.cutoff + spec.skin) * jnp.linalg.norm(basis_inv, axis=0)
    cell_overflow = jnp.any(pbc & (reach > n_max * (1.0 + _CELL_TOL)))
    n_s = shifts.shape[0]
    offsets = _mm(shifts, cell)  # [n_s, 3]
    d = wrapped[None, None, :, :] - wrapped[:, None, None, :] + offsets[None, :, None, :]
    cand = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (n, n_s, n))
    s_w = jnp.broadcast_to(shifts[None, :, None, :], (n, n_s, n, 3))
    zero_shift = jnp.all(shifts == 0, axis=1)
    is_self = (cand == jnp.arange(n)[:, None, None]) & zero_shift[None, :, None]
    valid = atom_mask[:, None, None] & atom_mask[None, None, :] & ~is_self
    d = d.reshape(n, n_s * n, 3)
    cand = cand.reshape(n, n_s * n)
    s_w = s_w.reshape(n, n_s * n, 3)
    valid = valid.reshape(n, n_s * n)
    shift = s_w + image[:, None, :] - image[cand]
    return d, cand, shift, valid, cell_overflow


_CELL_TOL = 1e-5  # relative slack in the deformed-cell checks, so float32 round-off at an
# exact fit (e.g. a cell exactly three cutoffs wide) does not raise overflow forever

_STENCIL = np.array(list(itertools.product((-1, 0, 1), repeat=3)), np.int32)


# Cell-list rebuild without scatters or cumulative sums over the candidates (they dominate on
# CPU): one fused pass computes every candidate distance and packs the in-range flags of each
# atom into 32-bit words; the first ``max_neighbors`` set bits of each atom's row are then
# found with population counts (a search over ~30 words, then a 5-step bisection inside one
# word), touching only ``[n_atoms, max_neighbors]``-sized arrays.

_FAR = 1.0e6  # Å; position of empty candidate slots (squared distance ~1e12, never in range)


def _pack_bits(mask: jax.Array) -> jax.Array:
    """``[rows, 32·W]`` bool -> ``[rows, W]`` uint32, bit b of word w = ``mask[:, 32w + b]``."""
    rows, cols = mask.shape
    bits = mask.reshape(rows, cols // 32, 32).astype(jnp.uint32)
    return jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def _select_bits(words: jax.Array, m: int):
    """Columns of the first ``m`` set bits of each row of ``words`` (``[rows, W]`` uint32).

    Returns ``(cols [rows, m] int32, valid [rows, m] bool, count [rows] int32)``; ``cols`` is
    increasing along each row where ``valid``.
    """
    rows, n_words = words.shape
    pc = jax.lax.population_count(words).astype(jnp.int32)
    count = jnp.sum(pc, axis=1)
    before = jnp.cumsum(pc, axis=1) - pc  # set bits in the words before word w
    # Word holding the t-th set bit: the last word with ``before <= t``. Mark each non-empty
    # word at slot ``before`` (a scatter of [rows, W], not of the candidates), then carry the
    # largest mark forward along the slots.
    slot = jnp.where(pc > 0, before, m)
    marks = jnp.zeros((rows, m + 1), jnp.int32).at[jnp.arange(rows)[:, None], slot].max(
        jnp.arange(n_words, dtype=jnp.int32)[None, :], mode="drop")
    w = jax.lax.cummax(marks[:, :m], axis=1)
    t = jnp.arange(m, dtype=jnp.int32)[None, :]
    rank = t - jnp.take_along_axis(before, w, axis=1)
    word = jnp.take_along_axis(words, w, axis=1)
    # Bit holding the rank-th set bit of ``word``: the largest b with popcount(bits < b) <= rank.
    bit = jnp.zeros_like(rank)
    for step in (16, 8, 4, 2, 1):
        trial = bit + step
        below = word & ((jnp.uint32(1) << trial.astype(jnp.uint32)) - jnp.uint32(1))
        bit = jnp.where(jax.lax.population_count(below).astype(jnp.int32) <= rank, trial, bit)
    valid = t < count[:, None]
    return 32 * w + bit, valid, count


def _cell_tables(spec: NeighborSpec, positions, cell, atom_mask):
    """Bins, per-bin candidate tables and overflow flags of the cell method."""
    n = positions.shape[0]
    dtype = positions.dtype
    pbc = jnp.asarray(spec.pbc)
    grid = jnp.asarray(spec.grid, jnp.int32)
    box = jnp.where(pbc[:, None], cell, jnp.asarray(np.asarray(spec.box), cell.dtype))
    origin = jnp.asarray(np.asarray(spec.origin), dtype)
    box_inv = jnp.linalg.inv(box)
    frac = _mm(positions - origin, box_inv)
    reach = (spec.cutoff + spec.skin) * jnp.linalg.norm(box_inv, axis=0) * grid
    cell_overflow = jnp.any(pbc & (reach > 1.0 + _CELL_TOL))
    image = jnp.where(pbc, jnp.floor(frac), 0.0)
    fw = frac - image
    outside = jnp.any(~pbc & ((fw < 0) | (fw >= 1)), axis=1) & atom_mask
    wrapped = positions - _mm(image, box)
    bin3 = jnp.clip(jnp.floor(fw * grid).astype(jnp.int32), 0, grid - 1)
    n_bins = int(np.prod(spec.grid))
    flat = (bin3[:, 0] * grid[1] + bin3[:, 1]) * grid[2] + bin3[:, 2]
    flat = jnp.where(atom_mask, flat, n_bins)  # padding atoms go to a dump bin
    order = jnp.argsort(flat)
    sorted_bins = flat[order]
    start = jnp.searchsorted(sorted_bins, jnp.arange(n_bins + 1, dtype=flat.dtype))
    rank = jnp.arange(n, dtype=jnp.int32) - start[sorted_bins].astype(jnp.int32)
    k = spec.bin_capacity
    bin_atoms = jnp.full((n_bins + 1, k), n, jnp.int32)
    bin_atoms = bin_atoms.at[sorted_bins, rank].set(order.astype(jnp.int32), mode="drop")
    bin_atoms = bin_atoms.at[n_bins].set(n)  # the dump bin holds no candidates
    bin_overflow = jnp.max(jnp.diff(start)[:n_bins]) > k

    # Per bin: the 27 neighbouring bins and their periodic wraps (small tables).
    g = np.asarray(spec.grid)
    b3 = np.stack(np.unravel_index(np.arange(n_bins), g), axis=-1)  # [n_bins, 3]
    nb3 = b3[:, None, :] + _STENCIL[None, :, :]  # [n_bins, 27, 3]
    wrap = np.where(np.asarray(spec.pbc), np.floor_divide(nb3, g), 0)
    nb3w = nb3 - wrap * g
    in_range = np.all((nb3w >= 0) & (nb3w < g), axis=-1)
    nb_flat = np.where(in_range, np.ravel_multi_index(tuple(np.moveaxis(np.clip(nb3w, 0, g - 1),
                                                                        -1, 0)), g), n_bins)
    wrap_f = jnp.asarray(wrap, dtype)  # [n_bins, 27, 3]
    offsets = _mm(wrap_f, cell)  # [n_bins, 27, 3]
    n_cols = 27 * k
    n_words = -(-n_cols // 32)
    pad = 32 * n_words - n_cols
    cand = bin_atoms[jnp.asarray(nb_flat, jnp.int32)].reshape(n_bins, n_cols)
    cand = jnp.pad(cand, ((0, 0), (0, pad)), constant_values=n)  # [n_bins, 32 W]

    # Coordinates are kept as separate [.., 32 W] arrays (structure of arrays): XLA on CPU
    # vectorises along the last axis, and a trailing axis of 3 is several hundred times slower.
    pos_ext = jnp.concatenate([wrapped, jnp.full((1, 3), _FAR, dtype)]).T  # [3, n + 1]
    cand_pos = pos_ext[:, cand]  # [3, n_bins, 32 W]
    col_off = jnp.pad(jnp.repeat(jnp.moveaxis(offsets, -1, 0), k, axis=2),
                      ((0, 0), (0, 0), (0, pad)))  # [3, n_bins, 32 W]
    # Materialise the per-bin tables: fused into the per-atom pass below, their gathers would
    # be redone for every atom (10x slower).
    cand, cand_pos, col_off = jax.lax.optimization_barrier((cand, cand_pos, col_off))

    row_bin = jnp.minimum(flat, n_bins - 1)
    overflow = bin_overflow | jnp.any(outside) | cell_overflow
    return dict(cand=cand, cand_pos=cand_pos, col_off=col_off, row_bin=row_bin, wrapped=wrapped,
                wrap_f=wrap_f, image=image, order=order, overflow=overflow)


_BLOCK_ATOMS = 512  # atoms per block of the cell rebuild (cache-sized working set)


def _cell_block(spec: NeighborSpec, tab, atom_mask, ids, *, decode: bool):
    """Neighbours of the atoms ``ids`` (``[b]``, ``n`` for none) from the cell tables."""
    n = atom_mask.shape[0]
    dtype = tab["wrapped"].dtype
    ids_c = jnp.minimum(ids, n - 1)
    live = (ids < n) & atom_mask[ids_c]
    rb = tab["row_bin"][ids_c]
    cand_rows = tab["cand"][rb]  # [b, 32 W]
    rc = spec.cutoff + spec.skin
    d2 = jnp.zeros(cand_rows.shape, dtype)
    for c in range(3):
        # (x_j − x_i) + offset: bit-for-bit the negation of the reverse pair, so the list is
        # symmetric even at the edge of the range.
        dc = (tab["cand_pos"][c][rb] - tab["wrapped"][ids_c, c][:, None]) + tab["col_off"][c][rb]
        d2 = d2 + dc * dc
    mask = (d2 < rc * rc) & (cand_rows < n) & (cand_rows != ids[:, None]) & live[:, None]
    words = _pack_bits(mask)
    if not decode:
        return jnp.sum(jax.lax.population_count(words).astype(jnp.int32), axis=1)
    cols, valid, count = _select_bits(words, spec.max_neighbors)
    senders = jnp.where(valid, jnp.take_along_axis(cand_rows, cols, axis=1), n)
    stencil = jnp.minimum(cols // spec.bin_capacity, 26)
    s_c = jnp.minimum(senders, n - 1)
    image = tab["image"]
    shifts = tab["wrap_f"][rb[:, None], stencil] + image[ids_c][:, None, :] - image[s_c]
    shifts = jnp.where(valid[..., None], shifts, 0.0)
    return senders, shifts, count


def _cell_scan(spec: NeighborSpec, tab, atom_mask, *, decode: bool):
    """Run :func:`_cell_block` over all atoms in bin order, in blocks; results by atom."""
    n = atom_mask.shape[0]
    b = min(n, _BLOCK_ATOMS)
    n_blocks = -(-n // b)
    ids = jnp.pad(tab["order"].astype(jnp.int32), (0, n_blocks * b - n), constant_values=n)
    out = jax.lax.map(lambda blk: _cell_block(spec, tab, atom_mask, blk, decode=decode),
                      ids.reshape(n_blocks, b))
    out = jax.tree.map(lambda x: x.reshape((n_blocks * b,) + x.shape[2:])[:n], out)
    inverse = jnp.zeros(n, jnp.int32).at[tab["order"]].set(jnp.arange(n, dtype=jnp.int32))
    return jax.tree.map(lambda x: x[inverse], out)


def _build_cell(spec: NeighborSpec, positions, cell, atom_mask):
    """``(senders [n, m], shifts [n, m, 3], count [n], overflow)`` for the cell method."""
    tab = _cell_tables(spec, positions, cell, atom_mask)
    senders, shifts, count = _cell_scan(spec, tab, atom_mask, decode=True)
    return senders, shifts, count, tab["overflow"]


def rebuild(neighbors: Neighbors, system) -> Neighbors:
    """Rebuild the list from ``system.positions`` (jittable); set ``overflow`` if it did not fit."""
    spec = neighbors.spec
    positions, cell, atom_mask = system.positions, system.cell, system.atom_mask
    n = positions.shape[0]
    if spec.method == "cell":
        senders, shifts, count, geom_overflow = _build_cell(spec, positions, cell, atom_mask)
    else:
        d, cand, shift, valid, geom_overflow = _candidates_brute(spec, positions, cell, atom_mask)
        rc = spec.cutoff + spec.skin
        mask = valid & (jnp.sum(d * d, axis=-1) < rc * rc)
        senders, shifts, count = _compact(mask, cand, shift, spec.max_neighbors, n)
    max_count = jnp.max(count) if n else jnp.zeros((), jnp.int32)
    m = spec.max_neighbors
    senders = senders.reshape(n * m)
    # Empty slots point at the sentinel on both ends (DESIGN.md), so that
    # ``segment_sum(msgs, receivers, n_atoms)`` drops them.
    receivers = jnp.where(senders < n, jnp.repeat(jnp.arange(n, dtype=jnp.int32), m), n)
    return neighbors.replace(
        senders=senders,
        receivers=receivers,
        shifts=shifts.reshape(n * m, 3),
        reference_positions=positions,
        overflow=neighbors.overflow | geom_overflow | (max_count > m),
        max_count=jnp.maximum(neighbors.max_count, max_count),
        reference_cell=None if neighbors.reference_cell is None else cell,
    )


def needs_rebuild(neighbors: Neighbors, positions: jax.Array, atom_mask: jax.Array,
                  cell: jax.Array | None = None) -> jax.Array:
    """True if the list may miss a pair within the cutoff at ``positions`` (and ``cell``).

    With a fixed cell: some real atom moved more than half the skin since the last rebuild.
    With a cell that changed since the last rebuild (``cell`` given and the list carries its
    ``reference_cell``), the test runs in the reference cell: positions are mapped back by the
    deformation ``F`` (``cell = reference_cell · F``, rows are lattice vectors), their largest
    displacement ``δ`` there bounds every pair's change (same image shifts), and a pair left
    out at ``|r| ≥ cutoff + skin`` is still farther than ``σ_min(F) (cutoff + skin − 2δ)`` now;
    the list is rebuilt unless that stays above the cutoff. Pure scaling of positions with the
    cell (a barostat step) moves no atom in the reference cell, so only the strain counts.
    """
    spec = neighbors.spec
    ref_cell = neighbors.reference_cell
    if cell is None or ref_cell is None:
        disp = positions - neighbors.reference_positions
        d2 = jnp.where(atom_mask, jnp.sum(disp * disp, axis=-1), 0.0)
        return jnp.max(d2) > (0.5 * spec.skin) ** 2
    pbc = jnp.asarray(spec.pbc)
    spare = jnp.asarray(np.asarray(spec.box) if spec.box else np.eye(3), cell.dtype)
    b_ref = jnp.where(pbc[:, None], ref_cell, spare)
    b_now = jnp.where(pbc[:, None], cell, spare)
    same = jnp.all(b_ref == b_now)
    back = _mm(jnp.linalg.inv(b_now), b_ref)  # F⁻¹
    mapped = jnp.where(same, positions, _mm(positions, back))
    disp = mapped - neighbors.reference_positions
    d2 = jnp.where(atom_mask, jnp.sum(disp * disp, axis=-1), 0.0)
    delta = jnp.sqrt(jnp.max(d2)) if positions.shape[0] else jnp.zeros((), cell.dtype)
    sigma = jnp.where(same, 1.0, 1.0 / jnp.linalg.norm(back, ord=2))
    return sigma * (spec.cutoff + spec.skin - 2.0 * delta) <= spec.cutoff


def update(neighbors: Neighbors, system) -> Neighbors:
    """Rebuild if needed (jittable); with ``skin == 0`` it rebuilds every call.

    The skin test (:func:`needs_rebuild`) looks at the positions and, for a list from
    :func:`allocate`, at ``system.cell``: a cell that changes every step (NPT, a strain ramp)
    triggers a rebuild once its strain could bring a left-out pair within the cutoff; the
    rebuild sets ``overflow`` if the spec no longer covers the new cell (bins narrower than
    ``cutoff + skin``, too few image shifts, overfull bins).
    """
    if neighbors.spec.skin <= 0:
        return rebuild(neighbors, system)
    return jax.lax.cond(
        needs_rebuild(neighbors, system.positions, system.atom_mask, system.cell),
        lambda nb: rebuild(nb, system),
        lambda nb: nb,
        neighbors,
    )


def allocate(
    system,
    cutoff: float,
    *,
    skin: float = 0.0,
    capacity_multiplier: float = 1.25,
    method: Literal["auto", "brute", "cell"] = "auto",
    min_capacity: int = 0,
) -> Neighbors:
    """Measure ``system`` on the host and build a jitted neighbour list that fits it.

    Args:
      system: a :class:`jaxpot.System` (unbatched).
      cutoff: interaction cutoff, Å.
      skin: Verlet skin, Å; pairs within ``cutoff + skin`` are kept and the list is rebuilt when
        an atom has moved more than ``skin / 2``.
      capacity_multiplier: head-room (>= 1) on the measured neighbour count and bin
        occupancy; for a cell list along non-periodic directions also the margin of the
        binning box, ``capacity_multiplier - 1`` times the atoms' extent on each side (at least
        ``cutoff + skin``), so a reallocation with a larger multiplier after an overflow (an
        evaporating droplet, a hot gas) gets a larger box.
      method: ``"brute"`` (all pairs over image shifts, O(N²)), ``"cell"`` (cell list, O(N)),
        or ``"auto"`` (cell list when N > 512 and every periodic direction holds 3 bins).
      min_capacity: lower bound on ``max_neighbors`` (used when growing after an overflow).

    Returns:
      A :class:`Neighbors` whose edges are already built for ``system.positions``.

    Raises:
      ValueError: a bad option (naming it), a singular or nearly flat periodic cell, a cell
        list asked for a cell narrower than 3·(cutoff + skin), or an all-pairs list too large
        for memory.
    """
    _check_options(cutoff, skin, capacity_multiplier, method, min_capacity)
    positions = np.asarray(system.positions, np.float64)
    cell = np.asarray(system.cell, np.float64)
    pbc = np.asarray(system.pbc, bool)
    atom_mask = np.asarray(system.atom_mask, bool)
    if positions.ndim != 2:
        raise ValueError(f"allocate expects one unbatched system, got positions {positions.shape}")
    _check_cell(cell, pbc)
    n = positions.shape[0]
    rc = float(cutoff) + float(skin)
    real = positions[atom_mask]

    basis = _complete_basis(cell, pbc)
    inv_width = np.linalg.norm(np.linalg.inv(basis), axis=0)
    periodic_bins = np.floor(1.0 / (inv_width * rc)).astype(int)
    cell_ok = bool(np.all(np.where(pbc, periodic_bins >= 3, True)))
    if method == "auto":
        method = "cell" if (cell_ok and n > 512) else "brute"
    if method == "cell" and not cell_ok:
        raise ValueError(
            f"cell list needs at least 3 bins of width cutoff+skin={rc:.3f} Å along every periodic "
            f"direction; this cell allows {periodic_bins.tolist()}; use method='brute'"
        )

    def capacity(count):
        return max(int(np.ceil(count * capacity_multiplier)) + 1, int(min_capacity), 1)

    options = dict(cutoff=float(cutoff), skin=float(skin),
                   pbc=tuple(bool(p) for p in pbc))
    if method == "cell":
        spec = _cell_spec(system, real, basis, periodic_bins, capacity_multiplier, capacity,
                          options)
    else:
        spec = _brute_spec(n, real, cell, basis, capacity, options)
    dtype = jnp.asarray(system.positions).dtype
    m = spec.max_neighbors
    empty = Neighbors(
        senders=jnp.full((n * m,), n, jnp.int32),
        receivers=jnp.full((n * m,), n, jnp.int32),
        shifts=jnp.zeros((n * m, 3), dtype),
        reference_positions=jnp.asarray(system.positions),
        overflow=jnp.zeros((), bool),
        max_count=jnp.zeros((), jnp.int32),
        spec=spec,
        reference_cell=jnp.asarray(system.cell),
    )
    return _rebuild_jit(empty, system)


def _check_options(cutoff, skin, capacity_multiplier, method, min_capacity) -> None:
    """Refuse options that would give a silently wrong or useless list, naming the option."""
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"allocate: cutoff must be a finite distance > 0 Å, got {cutoff!r}")
    if not (np.isfinite(skin) and skin >= 0):
        raise ValueError(f"allocate: skin must be a finite distance >= 0 Å, got {skin!r}")
    if not (np.isfinite(capacity_multiplier) and capacity_multiplier >= 1):
        raise ValueError(f"allocate: capacity_multiplier must be >= 1, got "
                         f"{capacity_multiplier!r}")
    if method not in ("auto", "brute", "cell"):
        raise ValueError(f"allocate: method must be 'auto', 'brute' or 'cell', got {method!r}")
    if int(min_capacity) != min_capacity or min_capacity < 0:
        raise ValueError(f"allocate: min_capacity must be an integer >= 0, got {min_capacity!r}")


def _brute_spec(n, real, cell, basis, capacity, options) -> NeighborSpec:
    """All-pairs spec; the capacity comes from the exact host list of the real atoms."""
    pbc = np.asarray(options["pbc"])
    rc = options["cutoff"] + options["skin"]
    shifts = _shift_vectors(_shift_range(cell, pbc, rc))
    _check_brute_size(n, shifts.shape[0], rc, pbc)
    max_count = 0
    if real.shape[0]:
        r, _, _ = neighbor_list(real, cell, pbc, rc)
        max_count = int(np.bincount(r, minlength=real.shape[0]).max()) if r.size else 0
    return NeighborSpec(max_neighbors=capacity(max_count), method="brute",
                        shifts=tuple(map(tuple, shifts.tolist())),
                        box=tuple(map(tuple, basis.tolist())), **options)


def _cell_spec(system, real, basis, periodic_bins, capacity_multiplier, capacity,
               options) -> NeighborSpec:
    """Cell-list spec; the capacity comes from exact counts of the jitted candidates (O(N);
    the host O(N²) list would take minutes at N ~ 10⁵)."""
    pbc = np.asarray(options["pbc"])
    rc = options["cutoff"] + options["skin"]
    box, origin, grid = _cell_box(real, basis, pbc, periodic_bins, rc, options["skin"],
                                  capacity_multiplier)
    frac = (real - origin) @ np.linalg.inv(box)
    frac = frac - np.where(pbc, np.floor(frac), 0.0)
    b3 = np.clip(np.floor(frac * grid).astype(int), 0, np.array(grid) - 1)
    flat = (b3[:, 0] * grid[1] + b3[:, 1]) * grid[2] + b3[:, 2]
    occupancy = int(np.bincount(flat).max()) if flat.size else 1
    spec = NeighborSpec(
        max_neighbors=1, method="cell", grid=tuple(grid),
        bin_capacity=int(np.ceil(occupancy * capacity_multiplier)) + 1,
        box=tuple(map(tuple, box.tolist())), origin=tuple(origin.tolist()), **options)
    max_count = int(_max_count_jit(spec, system)) if real.shape[0] else 0
    return dataclasses.replace(spec, max_neighbors=capacity(max_count))


_MAX_BRUTE_CANDIDATES = 1_000_000_000  # ~12 GB of float32 distance vectors


def _check_brute_size(n: int, n_shifts: int, rc: float, pbc: np.ndarray) -> None:
    """Refuse an all-pairs list whose candidate table could not fit in memory."""
    candidates = n * n * n_shifts
    if candidates > _MAX_BRUTE_CANDIDATES:
        raise ValueError(
            f"allocate: the all-pairs ('brute') list for {n} atoms over {n_shifts} periodic "
            f"images (cutoff+skin {rc:.3g} Å, pbc={np.asarray(pbc).tolist()}) would compare "
            f"{candidates:.3g} pairs (~{12 * candidates / 1e9:.0f} GB); the cell list needs "
            "every periodic direction at least 3·(cutoff+skin) wide: use a larger supercell"
        )


def _cell_box(real, basis, pbc, periodic_bins, rc, skin, capacity_multiplier):
    """Binning box, origin and grid of a cell list (host).

    Periodic directions are binned over the lattice vector. Along a non-periodic direction the
    box spans the atoms' current extent plus a margin on each side of at least the list range,
    twice the skin, and ``capacity_multiplier - 1`` times the extent, so a cluster that grows
    (an evaporating droplet, a hot gas) stays inside for a while, and each reallocation after
    an overflow (with a larger multiplier, as :mod:`jaxpot.md.blocks` does) gets a larger box.
    Bins are at least ``rc`` wide; the grid is coarsened so it never holds more than about
    ``8 · n_atoms`` bins however far the atoms spread.
    """
    box = basis.copy()
    origin = np.zeros(3)
    grid = np.where(pbc, periodic_bins, 1).astype(int)
    slack = max(float(capacity_multiplier) - 1.0, 0.0)
    for d in np.flatnonzero(~pbc):
        u = basis[d] / np.linalg.norm(basis[d])
        proj = real @ u if real.size else np.zeros(1)
        extent = proj.max() - proj.min()
        margin = max(rc, 2.0 * skin, slack * extent)
        box[d] = u * (extent + 2.0 * margin)
        origin += u * (proj.min() - margin)
        grid[d] = max(1, int(np.floor((extent + 2.0 * margin) / rc)))
    max_bins = max(64, 8 * real.shape[0])
    while np.prod(grid) > max_bins and np.any(grid[~pbc] > 1):
        free = np.where(~pbc, grid, 0)
        d = int(np.argmax(free))
        grid[d] = max(1, int(np.ceil(grid[d] / 2)))
    return box, origin, [int(g) for g in grid]


_rebuild_jit = jax.jit(rebuild)


@functools.partial(jax.jit, static_argnums=0)
def _max_count_jit(spec: NeighborSpec, system) -> jax.Array:
    """Largest number of neighbours within ``cutoff + skin`` of any atom (cell method)."""
    tab = _cell_tables(spec, system.positions, system.cell, system.atom_mask)
    return jnp.max(_cell_scan(spec, tab, system.atom_mask, decode=False))
