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

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = ["System", "stack", "unstack", "bucket", "default_buckets", "validate_arrays"]

_MIN_DISTANCE = 0.1  # Å; closer atoms are treated as a mistake in the input


def validate_arrays(positions, numbers, cell, pbc, *, where: str = "structure") -> None:
    """Raise ``ValueError`` naming what is wrong with a structure's raw arrays.

    Checks: at least one atom, finite positions, atomic numbers in 1..118, a non-singular cell
    along periodic directions, a finite cell.
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
    unknown = np.nonzero((numbers < 1) | (numbers > 118))[0]
    if unknown.size:
        raise ValueError(
            f"{where}: unknown element (atomic number {int(numbers[unknown[0]])}) "
            f"at atom {int(unknown[0])}"
        )
    cell = np.asarray(cell, float)
    if not np.all(np.isfinite(cell)):
        raise ValueError(f"{where}: cell has non-finite entries: {cell.tolist()}")
    from jaxpot.neighbors import _check_cell

    try:
        _check_cell(cell, np.asarray(pbc, bool))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


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
        vec = x[s] - x[r] + self.shifts @ self.cell
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
          ValueError: empty structure, non-finite positions, unknown element, singular cell,
            atoms closer than 0.1 Å, or padding smaller than the structure.
        """
        from jaxpot.neighbors import neighbor_list

        positions = np.asarray(positions, np.float64)
        numbers = np.asarray(numbers).astype(np.int64).reshape(-1)
        cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64).reshape(3, 3)
        pbc = np.broadcast_to(np.asarray(pbc, bool), (3,)).copy()
        validate_arrays(positions, numbers, cell, pbc, where=where)
        n = positions.shape[0]
        if masses is None:
            from ase.data import atomic_masses

            masses = atomic_masses[numbers]
        masses = np.asarray(masses, np.float64).reshape(n)
        if cutoff is not None:
            receivers, senders, shifts = neighbor_list(positions, cell, pbc, cutoff)
            if receivers.size:
                vec = positions[senders] - positions[receivers] + shifts @ cell
                dist = np.linalg.norm(vec, axis=1)
                k = int(np.argmin(dist))
                if dist[k] < _MIN_DISTANCE:
                    raise ValueError(
                        f"{where}: atoms {int(receivers[k])} and {int(senders[k])} overlap "
                        f"(distance {dist[k]:.4f} Å < {_MIN_DISTANCE} Å)"
                    )
        else:
            receivers = senders = np.zeros(0, np.int32)
            shifts = np.zeros((0, 3))
        n_pad = n if n_atoms is None else int(n_atoms)
        e_pad = receivers.size if n_edges is None else int(n_edges)
        if n_pad < n:
            raise ValueError(f"{where}: {n} atoms do not fit in {n_pad} padded slots")
        if e_pad < receivers.size:
            raise ValueError(f"{where}: {receivers.size} edges do not fit in {e_pad} padded slots")
        return _pack(positions, numbers, masses, cell, pbc, receivers, senders, shifts,
                     n_pad, e_pad, dtype)

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

    def with_edges(self, cutoff: float, n_edges: int | None = None) -> System:
        """Recompute the edges on the host for ``cutoff`` (unbatched; keeps atom padding)."""
        mask = np.asarray(self.atom_mask, bool)
        if not mask[: mask.sum()].all():
            raise ValueError("with_edges expects real atoms first, padding last")
        return System.from_arrays(
            np.asarray(self.positions)[mask], np.asarray(self.species)[mask],
            cell=np.asarray(self.cell), pbc=np.asarray(self.pbc),
            masses=np.asarray(self.masses)[mask], cutoff=cutoff, n_atoms=self.n_atoms,
            n_edges=n_edges, dtype=self.positions.dtype,
        )

    def pad(self, n_atoms: int, n_edges: int) -> System:
        """Pad (host side) to ``n_atoms`` atom slots and ``n_edges`` edge slots."""
        mask = np.asarray(self.atom_mask, bool)
        edge_mask = np.asarray(self.edge_mask, bool)
        n_real = int(mask.sum())
        if not mask[:n_real].all():
            raise ValueError("pad expects real atoms first, padding last")
        if n_atoms < n_real or n_edges < int(edge_mask.sum()):
            raise ValueError(
                f"cannot pad a system of {n_real} atoms / {int(edge_mask.sum())} edges "
                f"into {n_atoms} / {n_edges} slots"
            )
        return _pack(
            np.asarray(self.positions)[:n_real], np.asarray(self.species)[:n_real],
            np.asarray(self.masses)[:n_real], np.asarray(self.cell), np.asarray(self.pbc),
            np.asarray(self.receivers)[edge_mask], np.asarray(self.senders)[edge_mask],
            np.asarray(self.shifts)[edge_mask], n_atoms, n_edges, self.positions.dtype,
        )


def _pack(positions, numbers, masses, cell, pbc, receivers, senders, shifts, n_pad, e_pad,
          dtype) -> System:
    n = positions.shape[0]
    e = receivers.size
    # Convert in NumPy and hand JAX finished arrays: jnp.asarray(x, dtype) would compile a
    # conversion for every new shape (one per structure when edge counts vary).
    fdtype = np.dtype(jnp.zeros((), dtype).dtype if dtype is not None else jnp.zeros(()).dtype)
    pos = np.zeros((n_pad, 3), fdtype); pos[:n] = positions  # noqa: E702
    spc = np.zeros(n_pad, np.int32); spc[:n] = numbers  # noqa: E702
    mas = np.ones(n_pad, fdtype); mas[:n] = masses  # noqa: E702
    msk = np.zeros(n_pad, bool); msk[:n] = True  # noqa: E702
    snd = np.full(e_pad, n_pad, np.int32); snd[:e] = senders  # noqa: E702
    rcv = np.full(e_pad, n_pad, np.int32); rcv[:e] = receivers  # noqa: E702
    shf = np.zeros((e_pad, 3), fdtype); shf[:e] = shifts  # noqa: E702
    # jax.device_put, not jnp.asarray: in recent JAX the latter stages a copy that compiles
    # once per new shape, which dominated reading a dataset.
    put = jax.device_put
    return System(
        positions=put(pos), species=put(spc), masses=put(mas), atom_mask=put(msk),
        cell=put(np.asarray(cell, fdtype)), pbc=put(np.asarray(pbc, bool)),
        senders=put(snd), receivers=put(rcv), shifts=put(shf),
    )


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
          n_edges: int | None = None) -> System:
    """Pad unbatched systems to common slot counts and stack them along a new leading axis.

    Args:
      systems: unbatched systems.
      n_atoms, n_edges: slot counts (default: the largest in ``systems``); choose them with
        :func:`bucket` so that a stream of batches compiles a handful of times.
    """
    if not systems:
        raise ValueError("stack needs at least one system")
    n_atoms = n_atoms or max(int(np.sum(s.atom_mask)) for s in systems)
    n_edges = n_edges or max(int(np.sum(s.edge_mask)) for s in systems)
    padded = [
        s if (s.n_atoms == n_atoms and s.n_edges == n_edges) else s.pad(n_atoms, n_edges)
        for s in systems
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *padded)


def unstack(batch: System) -> list[System]:
    """Split a batched System into a list of unbatched ones (padding kept)."""
    n = batch.positions.shape[0]
    return [jax.tree.map(lambda x, i=i: x[i], batch) for i in range(n)]
