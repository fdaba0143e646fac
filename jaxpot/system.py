"""One atomic structure as a fixed-shape pytree, and batches of them.

A :class:`System` holds one structure, padded to a fixed number of atom and edge slots so that
jitted functions compile once per shape. Padding atoms have ``atom_mask == False``; padding
edges point at the sentinel index ``n_atoms`` (the padded atom count) on both ends. A batch is the
same class with a leading axis, built on the host by :func:`stack` and consumed with ``jax.vmap``.

Conventions (DESIGN.md): cell rows are lattice vectors (ASE); edge ``e`` has receiver
``i = receivers[e]`` (the centre) and sender ``j = senders[e]`` (the neighbour), and its vector
is ``positions[j] - positions[i] + shifts[e] @ cell``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_masses
from flax import struct

from jaxpot.neighbors import _check_cell, neighbor_list

__all__ = [
    "System",
    "stack",
    "unstack",
    "bucket",
    "default_buckets",
    "validate_arrays",
    "find_edges",
    "pad_arrays",
    "stack_arrays",
]

_MIN_DISTANCE = 0.1  # Å; closer atoms are treated as a mistake in the input


def _float_dtype(dtype) -> np.dtype:
    """The NumPy float dtype JAX will use for ``dtype`` (default: JAX's default float)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64 if dtype is None else dtype))


def _check_numbers(numbers: np.ndarray, where: str) -> None:
    if numbers.dtype == bool or not np.issubdtype(numbers.dtype, np.number):
        raise ValueError(f"{where}: atomic numbers must be integers, got dtype {numbers.dtype}")
    if not np.issubdtype(numbers.dtype, np.integer):
        values = np.asarray(numbers, np.float64)
        bad = np.nonzero(~np.isfinite(values) | (values != np.round(values)))[0]
        if bad.size:
            raise ValueError(
                f"{where}: atomic number {values[bad[0]]:g} of atom {int(bad[0])} is not an "
                f"integer; {bad.size} atom(s) affected"
            )
    unknown = np.nonzero((numbers < 1) | (numbers > 118))[0]
    if unknown.size:
        raise ValueError(
            f"{where}: unknown element (atomic number {numbers[unknown[0]]}) at atom "
            f"{int(unknown[0])}; atomic numbers must be in 1..118"
        )


def _check_masses(masses, numbers: np.ndarray, n: int, where: str) -> None:
    masses = np.asarray(masses)
    if masses.shape != (n,):
        raise ValueError(f"{where}: {masses.shape} masses for {n} atoms")
    if not np.issubdtype(masses.dtype, np.number) or masses.dtype == bool:
        raise ValueError(f"{where}: masses must be numbers, got dtype {masses.dtype}")
    masses = masses.astype(np.float64)
    bad = np.nonzero(~(np.isfinite(masses) & (masses > 0)))[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{where}: mass of atom {i} (atomic number {int(numbers[i])}) is {masses[i]:g} amu; "
            f"masses must be finite and positive ({bad.size} atom(s) affected)"
        )


def validate_arrays(positions, numbers, cell, pbc, *, masses=None,
                    where: str = "structure") -> None:
    """Raise ``ValueError`` naming what is wrong with a structure's raw arrays.

    Every path that builds a structure (``System.from_arrays``, :mod:`jaxpot.data`, the ASE
    calculator) calls this on the host, before anything is jitted.

    Args:
      positions: ``[n_atoms, 3]`` Å.
      numbers: ``[n_atoms]`` atomic numbers; integers or integer-valued floats.
      cell: ``[3, 3]`` rows are lattice vectors, Å.
      pbc: three bools.
      masses: optional ``[n_atoms]`` amu.
      where: names the structure in messages (``"train.xyz: frame 12"``).

    Raises:
      ValueError: no atoms; non-finite positions; atomic numbers that are not integers or
        outside 1..118; masses that are not finite and positive; a non-finite cell, or one
        that is singular along periodic directions. The message names the atom.
    """
    positions = np.asarray(positions)
    numbers = np.asarray(numbers)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"{where}: positions must have shape [n_atoms, 3], got {positions.shape}")
    if positions.shape[0] == 0:
        raise ValueError(f"{where}: empty structure (no atoms)")
    if numbers.shape != (positions.shape[0],):
        raise ValueError(
            f"{where}: {numbers.shape} atomic numbers for {positions.shape[0]} positions"
        )
    bad = np.nonzero(~np.all(np.isfinite(positions), axis=1))[0]
    if bad.size:
        raise ValueError(
            f"{where}: non-finite position for atom {int(bad[0])} "
            f"({positions[bad[0]].tolist()}); {bad.size} atom(s) affected"
        )
    _check_numbers(numbers, where)
    if masses is not None:
        _check_masses(masses, numbers, positions.shape[0], where)
    cell = np.asarray(cell, float)
    if not np.all(np.isfinite(cell)):
        raise ValueError(f"{where}: cell has non-finite entries: {cell.tolist()}")
    try:
        _check_cell(cell, np.asarray(pbc, bool))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def find_edges(positions, cell, pbc, cutoff: float, *, where: str = "structure"):
    """All edges shorter than ``cutoff`` (exact, host side), refusing overlapping atoms.

    Args:
      positions: ``[n_atoms, 3]`` Å.
      cell: ``[3, 3]`` rows are lattice vectors, Å.
      pbc: three bools.
      cutoff: Å.
      where: names the structure in messages.

    Returns:
      ``(receivers, senders, shifts)`` NumPy arrays, ``[n_edges]`` int32 twice and
      ``[n_edges, 3]`` float64 integer image shifts (see :func:`jaxpot.neighbors.neighbor_list`).

    Raises:
      ValueError: two atoms closer than 0.1 Å (naming both).
    """
    positions = np.asarray(positions, np.float64)
    cell = np.asarray(cell, np.float64)
    receivers, senders, shifts = neighbor_list(positions, cell, pbc, cutoff)
    if receivers.size:
        # Column products, not ``shifts @ cell``: a [E, 3] x [3, 3] BLAS call with threads
        # costs 25x more than these three passes at 4e5 edges.
        vec = positions[senders] - positions[receivers]
        for a in range(3):
            vec += shifts[:, a:a + 1] * cell[a]
        dist2 = np.einsum("ij,ij->i", vec, vec)
        k = int(np.argmin(dist2))
        closest = float(np.sqrt(dist2[k]))
        if closest < _MIN_DISTANCE:
            raise ValueError(
                f"{where}: atoms {int(receivers[k])} and {int(senders[k])} overlap "
                f"(distance {closest:.4f} Å < {_MIN_DISTANCE} Å)"
            )
    return (receivers.astype(np.int32), senders.astype(np.int32),
            np.asarray(shifts, np.float64).reshape(-1, 3))


def pad_arrays(positions, numbers, *, cell=None, pbc=False, masses=None, receivers=None,
               senders=None, shifts=None, n_atoms: int | None = None,
               n_edges: int | None = None, dtype=None,
               where: str = "structure") -> dict[str, np.ndarray]:
    """Pad one structure's atoms and edges to fixed slot counts, on the host (NumPy).

    This is jaxpot's one padding kernel: :class:`System`, :func:`stack`, the training batches
    (:func:`jaxpot.data.collate`) and the ASE calculator all pad through it. It checks only
    that the structure fits; call :func:`validate_arrays` first for the physics checks.

    Args:
      positions: ``[n, 3]`` Å (``n`` may be 0: an all-padding dummy structure).
      numbers: ``[n]`` integer atomic numbers.
      cell: ``[3, 3]`` rows are lattice vectors, Å (default zeros).
      pbc: bool or three bools.
      masses: ``[n]`` amu (default: ASE's standard atomic masses).
      receivers, senders: ``[e]`` edge ends, centre ``i`` and neighbour ``j`` (default: none).
      shifts: ``[e, 3]`` integer image shifts ``S`` of each edge (default zeros).
      n_atoms, n_edges: slot counts (default: ``n`` and ``e``, no padding).
      dtype: float dtype of positions, masses, cell and shifts (default: JAX's default float).
      where: names the structure in messages.

    Returns:
      ``{field: array}`` for every :class:`System` field: ``positions [n_atoms, 3]`` (padding
      rows 0), ``species [n_atoms]`` int32 (padding 0), ``masses [n_atoms]`` (padding 1),
      ``atom_mask [n_atoms]`` bool, ``cell [3, 3]``, ``pbc [3]`` bool, ``senders`` and
      ``receivers [n_edges]`` int32 (padding = the sentinel ``n_atoms``), ``shifts [n_edges, 3]``
      (padding 0). Hand it to :meth:`System.from_padded`, or stack several with
      :func:`stack_arrays`.

    Raises:
      ValueError: the structure has more atoms or edges than the slots (naming ``where``), or
        arrays of inconsistent shapes.
    """
    positions = np.asarray(positions, np.float64).reshape(-1, 3)
    numbers = np.asarray(numbers).reshape(-1)
    n = positions.shape[0]
    if numbers.shape[0] != n:
        raise ValueError(f"{where}: {numbers.shape[0]} atomic numbers for {n} positions")
    if masses is None:
        masses = atomic_masses[numbers.astype(np.int64)] if n else np.zeros(0)
    receivers = np.zeros(0, np.int32) if receivers is None else np.asarray(receivers).reshape(-1)
    senders = np.zeros(0, np.int32) if senders is None else np.asarray(senders).reshape(-1)
    e = receivers.shape[0]
    shifts = np.zeros((e, 3)) if shifts is None else np.asarray(shifts).reshape(-1, 3)
    if senders.shape[0] != e or shifts.shape[0] != e:
        raise ValueError(f"{where}: {e} receivers, {senders.shape[0]} senders and "
                         f"{shifts.shape[0]} shifts")
    n_pad = n if n_atoms is None else int(n_atoms)
    e_pad = e if n_edges is None else int(n_edges)
    if n_pad < n:
        raise ValueError(f"{where}: {n} atoms do not fit in {n_pad} padded slots")
    if e_pad < e:
        raise ValueError(f"{where}: {e} edges do not fit in {e_pad} padded slots")
    f = _float_dtype(dtype)
    out = {
        "positions": np.zeros((n_pad, 3), f), "species": np.zeros(n_pad, np.int32),
        "masses": np.ones(n_pad, f), "atom_mask": np.zeros(n_pad, bool),
        "cell": np.zeros((3, 3), f) if cell is None else np.asarray(cell, f).reshape(3, 3).copy(),
        "pbc": np.broadcast_to(np.asarray(pbc, bool), (3,)).copy(),
        "senders": np.full(e_pad, n_pad, np.int32), "receivers": np.full(e_pad, n_pad, np.int32),
        "shifts": np.zeros((e_pad, 3), f),
    }
    out["positions"][:n] = positions
    out["species"][:n] = numbers
    out["masses"][:n] = np.asarray(masses, np.float64).reshape(n)
    out["atom_mask"][:n] = True
    out["senders"][:e] = senders
    out["receivers"][:e] = receivers
    out["shifts"][:e] = shifts
    return out


def stack_arrays(padded: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack :func:`pad_arrays` outputs of one shape along a new leading (batch) axis.

    Args:
      padded: dictionaries from :func:`pad_arrays` with equal ``n_atoms`` and ``n_edges``.

    Returns:
      The same keys, each with a leading ``[n_batch]`` axis (NumPy, host side).

    Raises:
      ValueError: empty input, or structures padded to different shapes.
    """
    if not padded:
        raise ValueError("stack_arrays needs at least one structure")
    shapes = {(p["positions"].shape[0], p["senders"].shape[0]) for p in padded}
    if len(shapes) != 1:
        raise ValueError(f"stack_arrays: structures are padded to different (n_atoms, n_edges) "
                         f"shapes {sorted(shapes)}; pad them to one shape first")
    return {k: np.stack([p[k] for p in padded]) for k in padded[0]}


@struct.dataclass
class System:
    """One structure (or, with a leading axis, a batch of them).

    Attributes:
      positions: ``[n_atoms, 3]`` Å; padding rows are 0.
      species: ``[n_atoms]`` int32 atomic numbers; 0 on padding (always masked).
      masses: ``[n_atoms]`` amu; 1 on padding (never used, but safe to divide by).
      atom_mask: ``[n_atoms]`` bool, True for real atoms.
      cell: ``[3, 3]`` rows are lattice vectors, Å (zeros where not periodic).
      pbc: ``[3]`` bool.
      senders: ``[n_edges]`` int32 neighbour j of each edge; ``n_atoms`` on padding.
      receivers: ``[n_edges]`` int32 centre i of each edge; ``n_atoms`` on padding.
      shifts: ``[n_edges, 3]`` integer image shifts S (float dtype); 0 on padding.
    """

    positions: jax.Array
    species: jax.Array
    masses: jax.Array
    atom_mask: jax.Array
    cell: jax.Array
    pbc: jax.Array
    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array

    # ----------------------------------------------------------------- derived quantities
    @property
    def n_atoms(self) -> int:
        """Padded number of atom slots (static)."""
        return self.positions.shape[-2]

    @property
    def n_edges(self) -> int:
        """Padded number of edge slots (static)."""
        return self.senders.shape[-1]

    @property
    def edge_mask(self) -> jax.Array:
        """``[n_edges]`` bool, True for real edges."""
        return self.senders < self.n_atoms

    @property
    def n_real_atoms(self) -> jax.Array:
        """Number of real atoms (traced scalar)."""
        return jnp.sum(self.atom_mask, axis=-1)

    @property
    def volume(self) -> jax.Array:
        """Cell volume, Å³ (|det cell|)."""
        return jnp.abs(jnp.linalg.det(self.cell))

    def edge_vectors(self, positions: jax.Array | None = None) -> jax.Array:
        """``[n_edges, 3]`` vectors ``x_j − x_i + S·cell`` in Å; exactly 0 on padding edges.

        Args:
          positions: optional ``[n_atoms, 3]`` positions to use instead of ``self.positions``
            (handy for ``jax.grad`` with respect to positions).
        """
        x = self.positions if positions is None else positions
        n = x.shape[0]
        s = jnp.minimum(self.senders, n - 1)
        r = jnp.minimum(self.receivers, n - 1)
        # Full float32 precision: GPUs otherwise multiply float32 in TF32 (10-bit mantissa),
        # which moves a 20 Å image offset by ~0.02 Å.
        hi = jax.lax.Precision.HIGHEST
        vec = x[s] - x[r] + jnp.matmul(self.shifts, self.cell, precision=hi)
        return jnp.where(self.edge_mask[:, None], vec, 0.0)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_arrays(
        cls,
        positions,
        numbers,
        *,
        cell=None,
        pbc=False,
        masses=None,
        cutoff: float | None = None,
        n_atoms: int | None = None,
        n_edges: int | None = None,
        dtype=None,
        where: str = "structure",
    ) -> System:
        """Build a System on the host from plain arrays.

        Args:
          positions: ``[n, 3]`` Å.
          numbers: ``[n]`` atomic numbers.
          cell: ``[3, 3]`` rows are lattice vectors (default zeros).
          pbc: bool or three bools.
          masses: ``[n]`` amu (default: ASE's standard atomic masses).
          cutoff: if given, edges within this distance are computed (exact, host side).
          n_atoms, n_edges: pad to these many slots (default: no padding).
          dtype: float dtype of the arrays (default: JAX's default float).
          where: name used in error messages (e.g. ``"frame 12 of train.xyz"``).

        Raises:
          ValueError: see :func:`validate_arrays` (empty structure, non-finite positions,
            non-integer or unknown atomic numbers, bad masses, singular cell), atoms closer
            than 0.1 Å, or padding smaller than the structure.
        """
        positions = np.asarray(positions, np.float64)
        numbers = np.asarray(numbers).reshape(-1)
        cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64).reshape(3, 3)
        pbc = np.broadcast_to(np.asarray(pbc, bool), (3,)).copy()
        validate_arrays(positions, numbers, cell, pbc, masses=masses, where=where)
        numbers = numbers.astype(np.int64)
        edges = {}
        if cutoff is not None:
            edges = dict(zip(("receivers", "senders", "shifts"),
                             find_edges(positions, cell, pbc, cutoff, where=where), strict=True))
        return cls.from_padded(pad_arrays(
            positions, numbers, cell=cell, pbc=pbc, masses=masses, n_atoms=n_atoms,
            n_edges=n_edges, dtype=dtype, where=where, **edges))

    @classmethod
    def from_padded(cls, arrays: dict, *, put=jax.device_put) -> System:
        """A System from the output of :func:`pad_arrays` (or :func:`stack_arrays`).

        Args:
          arrays: ``{field: NumPy array}`` for every field of :class:`System`.
          put: places the arrays on a device (default ``jax.device_put``; a sharded placement
            works too; ``put=lambda x: x`` keeps NumPy arrays).
        """
        # device_put on finished NumPy arrays, not jnp.asarray(x, dtype): the latter compiles a
        # conversion for every new shape (one per structure when edge counts vary).
        return put(cls(**{f.name: arrays[f.name] for f in dataclasses.fields(cls)}))

    @classmethod
    def from_ase(cls, atoms, cutoff: float | None = None, **kwargs) -> System:
        """Build a System from an ``ase.Atoms`` (see :meth:`from_arrays` for the options)."""
        kwargs.setdefault("where", f"structure {atoms.get_chemical_formula()}")
        return cls.from_arrays(
            atoms.get_positions(),
            atoms.get_atomic_numbers(),
            cell=np.asarray(atoms.get_cell()),
            pbc=atoms.get_pbc(),
            masses=atoms.get_masses(),
            cutoff=cutoff,
            **kwargs,
        )

    def to_ase(self):
        """The real atoms as an ``ase.Atoms`` (unbatched systems only)."""
        import ase

        if np.ndim(self.positions) != 2:
            raise ValueError("to_ase works on one structure; unstack a batch first")
        mask = np.asarray(self.atom_mask, bool)
        return ase.Atoms(
            numbers=np.asarray(self.species)[mask],
            positions=np.asarray(self.positions, np.float64)[mask],
            cell=np.asarray(self.cell, np.float64),
            pbc=np.asarray(self.pbc, bool),
            masses=np.asarray(self.masses, np.float64)[mask],
        )

    def _real_arrays(self, what: str, *, edges: bool = True) -> dict:
        """The real atoms (and edges) as host arrays, in :func:`pad_arrays`' keywords."""
        if np.ndim(self.positions) != 2:
            raise ValueError(f"{what} works on one structure; unstack a batch first")
        mask = np.asarray(self.atom_mask, bool)
        n_real = int(mask.sum())
        if not mask[:n_real].all():
            raise ValueError(f"{what} expects real atoms first, padding last")
        out = {"positions": np.asarray(self.positions)[:n_real],
               "numbers": np.asarray(self.species)[:n_real],
               "masses": np.asarray(self.masses)[:n_real],
               "cell": np.asarray(self.cell), "pbc": np.asarray(self.pbc)}
        if edges:
            e_mask = np.asarray(self.senders) < self.n_atoms
            out.update(receivers=np.asarray(self.receivers)[e_mask],
                       senders=np.asarray(self.senders)[e_mask],
                       shifts=np.asarray(self.shifts)[e_mask])
        return out

    def with_edges(self, cutoff: float, n_edges: int | None = None) -> System:
        """Recompute the edges on the host for ``cutoff`` (unbatched; keeps atom padding)."""
        a = self._real_arrays("with_edges", edges=False)
        return System.from_arrays(
            a["positions"], a["numbers"], cell=a["cell"], pbc=a["pbc"], masses=a["masses"],
            cutoff=cutoff, n_atoms=self.n_atoms, n_edges=n_edges, dtype=self.positions.dtype,
        )

    def pad(self, n_atoms: int, n_edges: int) -> System:
        """Pad (host side) to ``n_atoms`` atom slots and ``n_edges`` edge slots."""
        a = self._real_arrays("pad")
        n_real, e_real = a["positions"].shape[0], a["receivers"].shape[0]
        if n_atoms < n_real or n_edges < e_real:
            raise ValueError(
                f"cannot pad a system of {n_real} atoms / {e_real} edges "
                f"into {n_atoms} / {n_edges} slots"
            )
        return System.from_padded(pad_arrays(**a, n_atoms=n_atoms, n_edges=n_edges,
                                             dtype=self.positions.dtype))


def default_buckets(maximum: int, *, minimum: int = 8, growth: float = 1.25) -> list[int]:
    """Geometric bucket sizes ``minimum, ~minimum·growth, ...`` up to at least ``maximum``.

    Padding to the next bucket wastes at most ``growth − 1`` of the work and bounds the number
    of compiled shapes by ``log(maximum/minimum)/log(growth)``.
    """
    sizes = [int(minimum)]
    while sizes[-1] < maximum:
        sizes.append(max(sizes[-1] + 1, int(math.ceil(sizes[-1] * growth))))
    return sizes


def bucket(n: int, sizes: Sequence[int]) -> int:
    """Smallest size in ``sizes`` that is ≥ ``n``."""
    for s in sorted(sizes):
        if s >= n:
            return int(s)
    raise ValueError(f"{n} exceeds the largest bucket {max(sizes)}")


def stack(systems: Sequence[System], *, n_atoms: int | None = None,
          n_edges: int | None = None, put=jax.device_put) -> System:
    """Pad unbatched systems to common slot counts and stack them along a new leading axis.

    Args:
      systems: unbatched systems (real atoms first, padding last).
      n_atoms, n_edges: slot counts (default: the largest in ``systems``); choose them with
        :func:`bucket` so that a stream of batches compiles a handful of times.
      put: device placement of the stacked arrays (see :meth:`System.from_padded`).
    """
    if not systems:
        raise ValueError("stack needs at least one system")
    parts = [s._real_arrays("stack") for s in systems]
    n_atoms = n_atoms or max(p["positions"].shape[0] for p in parts)
    n_edges = n_edges or max(p["receivers"].shape[0] for p in parts)
    dtype = systems[0].positions.dtype
    padded = [pad_arrays(**p, n_atoms=n_atoms, n_edges=n_edges, dtype=dtype,
                         where=f"system {k}") for k, p in enumerate(parts)]
    return System.from_padded(stack_arrays(padded), put=put)


def unstack(batch: System) -> list[System]:
    """Split a batched System into a list of unbatched ones (padding kept)."""
    n = batch.positions.shape[0]
    return [jax.tree.map(lambda x, i=i: x[i], batch) for i in range(n)]
