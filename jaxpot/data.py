"""Training data: read labelled structures, check them, split, summarise, and batch them.

Everything here runs on the host with NumPy; a structure goes to a device once, inside its
batch. The pipeline is::

    train = data.read_extxyz("train.xyz", cutoff=5.0)        # edges precomputed (exact, host)
    train, valid = data.split(train, valid_fraction=0.1, seed=0)
    if data.check_overlap(train, valid): ...                 # identical frames in both sets
    stats = data.statistics(train)                           # element refs, force RMS, ...
    loader = data.BatchLoader(train, batch_size=8, shuffle=True, seed=0,
                              put=jax.device_put)            # or a sharded placement
    for batch in loader.batches(epoch=0):                    # fixed-shape :class:`Batch`
        ...

Labels are read and checked by :func:`jaxpot.io.extract_labels` (one rule for partly
labelled files, value, outlier and unit checks); structures by
:func:`jaxpot.system.validate_arrays`; padding is :func:`jaxpot.system.pad_arrays`.

Shapes. A :class:`Batch` has a fixed number ``batch_size`` of structures, each padded to one of
a few ``(n_atoms, n_edges)`` shapes (:func:`choose_shapes`), so a jitted train step compiles once
per shape. Structures are grouped by shape before batching; the last batch of a group is filled
up with empty dummy structures whose ``weight`` is 0 (and whose atoms are all masked), so padding
never changes a loss or a metric.

Labels (ASE units): energy in eV, forces in eV/Å, stress in eV/Å³ with ASE's sign
(``σ = (1/V) ∂E/∂ε``, negative under compression).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxpot import io
from jaxpot.system import System, find_edges, pad_arrays, stack_arrays, validate_arrays

__all__ = [
    "Structure",
    "Dataset",
    "Batch",
    "Statistics",
    "BatchLoader",
    "read_extxyz",
    "from_atoms",
    "split",
    "fit_element_refs",
    "statistics",
    "choose_shapes",
    "collate",
    "check_overlap",
]

check_overlap = io.check_overlap


# ---------------------------------------------------------------------------------------------
# One labelled structure, and a list of them
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
    """One labelled structure with its edges, as host-side NumPy arrays (no padding).

    A structure stays on the host; it goes to a device once, padded inside a batch
    (:func:`collate`) or alone (:meth:`system`).

    Attributes:
      positions: ``[n, 3]`` Å.
      numbers: ``[n]`` atomic numbers.
      masses: ``[n]`` amu.
      cell: ``[3, 3]`` rows are lattice vectors, Å.
      pbc: ``[3]`` bool.
      senders, receivers: ``[n_edges]`` int32 edge ends (neighbour j, centre i).
      shifts: ``[n_edges, 3]`` integer image shifts (float array).
      energy: total energy, eV, or None when the structure has no energy label (only with
        ``allow_partial``).
      forces: ``[n, 3]`` eV/Å, or None when the structure has no force labels.
      stress: ``[3, 3]`` eV/Å³ (ASE sign), or None.
      source: where it came from, used in messages (``"train.xyz: frame 12"``).
      charges: ``[n]`` e, or None.
      weight: per-structure loss weight (1 unless the file gives one).
    """

    positions: np.ndarray
    numbers: np.ndarray
    masses: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    energy: float | None
    forces: np.ndarray | None
    stress: np.ndarray | None
    source: str = ""
    charges: np.ndarray | None = None
    weight: float = 1.0

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.senders.shape[0])

    def padded(self, *, n_atoms: int | None = None, n_edges: int | None = None,
               dtype=None) -> dict[str, np.ndarray]:
        """This structure through :func:`jaxpot.system.pad_arrays` (host-side NumPy)."""
        return pad_arrays(self.positions, self.numbers, cell=self.cell, pbc=self.pbc,
                          masses=self.masses, receivers=self.receivers, senders=self.senders,
                          shifts=self.shifts, n_atoms=n_atoms, n_edges=n_edges, dtype=dtype,
                          where=self.source)

    def system(self, *, n_atoms: int | None = None, n_edges: int | None = None,
               dtype=None, put=jax.device_put) -> System:
        """This structure as an unbatched :class:`~jaxpot.System` (optionally padded).

        Args:
          n_atoms, n_edges: slot counts (default: no padding).
          dtype: float dtype (default: JAX's default float).
          put: device placement (see :meth:`jaxpot.System.from_padded`).
        """
        return System.from_padded(self.padded(n_atoms=n_atoms, n_edges=n_edges, dtype=dtype),
                                  put=put)


class Dataset(Sequence):
    """An indexable list of :class:`Structure` whose edges were built for ``cutoff`` (Å).

    Indexing with an int gives a :class:`Structure`; with a slice, a list or an index array, a new
    :class:`Dataset`.
    """

    def __init__(self, structures: Sequence[Structure], cutoff: float):
        self.structures = list(structures)
        self.cutoff = float(cutoff)

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, index):
        if isinstance(index, int | np.integer):
            return self.structures[int(index)]
        if isinstance(index, slice):
            return Dataset(self.structures[index], self.cutoff)
        return Dataset([self.structures[int(i)] for i in np.asarray(index).reshape(-1)],
                       self.cutoff)

    def __add__(self, other: Dataset) -> Dataset:
        if not math.isclose(self.cutoff, other.cutoff):
            raise ValueError(f"cannot join datasets with cutoffs {self.cutoff} and {other.cutoff}")
        return Dataset(self.structures + other.structures, self.cutoff)

    def __repr__(self) -> str:
        return f"Dataset({len(self)} structures, cutoff={self.cutoff} Å)"

    @property
    def n_atoms(self) -> np.ndarray:
        """``[n_structures]`` atom counts."""
        return np.array([s.n_atoms for s in self.structures], np.int64)

    @property
    def n_edges(self) -> np.ndarray:
        """``[n_structures]`` edge counts."""
        return np.array([s.n_edges for s in self.structures], np.int64)

    @property
    def energies(self) -> np.ndarray:
        """``[n_structures]`` total energies, eV (NaN where a structure has none)."""
        return np.array([np.nan if s.energy is None else s.energy for s in self.structures],
                        np.float64)

    @property
    def elements(self) -> list[int]:
        """Sorted atomic numbers present."""
        if not self.structures:
            return []
        return sorted({int(z) for s in self.structures for z in np.unique(s.numbers)})

    @property
    def has_forces(self) -> bool:
        return any(s.forces is not None for s in self.structures)

    @property
    def has_stress(self) -> bool:
        return any(s.stress is not None for s in self.structures)

    @property
    def has_charges(self) -> bool:
        return any(s.charges is not None for s in self.structures)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def from_atoms(
    images: Sequence,
    *,
    cutoff: float,
    energy_key: str = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    charges_key: str | None = "charges",
    weight_key: str | None = "weight",
    source: str = "atoms",
    require_forces: bool = False,
    allow_partial: bool = False,
    check_units: bool = True,
    check_outliers: bool = True,
) -> Dataset:
    """Turn ``ase.Atoms`` with labels into a :class:`Dataset` (edges built for ``cutoff``).

    Labels are read and checked by :func:`jaxpot.io.extract_labels` (the one label path: keys,
    the partial-label rule, value and unit checks); structures are checked by
    :func:`jaxpot.system.validate_arrays`. Everything stays on the host (NumPy).

    Args:
      images: ``ase.Atoms`` objects.
      cutoff: neighbour cutoff for the edges, Å.
      energy_key, forces_key, stress_key, charges_key: label names; ``None`` ignores that
        label (not allowed for the energy).
      weight_key: info key of a per-frame loss weight (frames without it weigh 1).
      source: name used in error messages (a file name).
      require_forces: raise if a structure has no forces.
      allow_partial: accept labels that only some frames have; those frames are masked for
        that term (``Batch.has_energy``/``has_forces``/...) and a warning says how many.
      check_units: refuse energies and forces in disagreeing units.
      check_outliers: refuse frames whose energy per atom is far from the rest.

    Returns:
      A :class:`Dataset`; forces/stress/charges are None on structures without those labels.

    Raises:
      ValueError: naming ``source`` and the frame index: a missing, non-finite, absurd or
        malformed label, a key that exists in no frame, an energy outlier, units that disagree,
        or an invalid structure (NaN positions, bad masses or atomic numbers, overlapping atoms,
        singular cell).
    """
    if cutoff is None or not cutoff > 0:
        raise ValueError(f"cutoff must be a positive distance in Å, got {cutoff!r}")
    if energy_key is None:
        raise ValueError("energy_key cannot be None for training data")
    if len(images) == 0:
        return Dataset([], cutoff)
    require = () if allow_partial else ("energy",)
    require += ("forces",) if require_forces else ()
    y = io.extract_labels(images, energy_key=energy_key, forces_key=forces_key,
                          stress_key=stress_key, charges_key=charges_key,
                          weight_key=weight_key, require=require, allow_partial=allow_partial,
                          check_units=check_units, check_outliers=check_outliers, source=source)
    if not y.has("energy"):
        raise ValueError(f"{source}: no frame has an energy label under key {energy_key!r}")
    out = []
    for i, atoms in enumerate(images):
        where = f"{source}: frame {i}"
        positions = np.asarray(atoms.get_positions(), np.float64)
        numbers = np.asarray(atoms.numbers)
        cell = np.asarray(atoms.get_cell(), np.float64)
        pbc = np.asarray(atoms.get_pbc(), bool)
        masses = np.asarray(atoms.get_masses(), np.float64)
        validate_arrays(positions, numbers, cell, pbc, masses=masses, where=where)
        receivers, senders, shifts = find_edges(positions, cell, pbc, cutoff, where=where)
        out.append(Structure(
            positions=positions, numbers=numbers.astype(np.int32), masses=masses, cell=cell,
            pbc=pbc, senders=senders, receivers=receivers, shifts=shifts,
            energy=float(y.energy[i]) if y.present["energy"][i] else None,
            forces=y.forces[i], stress=y.stress[i], source=where, charges=y.charges[i],
            weight=float(y.weight[i]),
        ))
    return Dataset(out, cutoff)


def read_extxyz(
    path: str | os.PathLike,
    *,
    cutoff: float,
    energy_key: str = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    index: str | int | slice = ":",
    **options,
) -> Dataset:
    """Read an extended-XYZ (or any ASE-readable) file into a :class:`Dataset`.

    Args:
      path: the file.
      cutoff: neighbour cutoff for the edges, Å.
      energy_key, forces_key, stress_key: where the labels are (e.g. ``"REF_energy"``).
      index: which frames (ASE syntax, default all).
      **options: ``charges_key``, ``weight_key``, ``require_forces``, ``allow_partial``,
        ``check_units``, ``check_outliers`` (see :func:`from_atoms`).

    Raises:
      ValueError: the file is missing or unreadable, or a frame is invalid (the message names the
        file and the frame index).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    images = io.read_frames(path, index, format="extxyz")
    return from_atoms(images, cutoff=cutoff, energy_key=energy_key, forces_key=forces_key,
                      stress_key=stress_key, source=path, **options)


def split(dataset: Dataset, valid_fraction: float = 0.1, *, seed: int = 0,
          n_valid: int | None = None) -> tuple[Dataset, Dataset]:
    """Random train/valid split, reproducible from ``seed``.

    Args:
      dataset: the structures.
      valid_fraction: fraction that goes to the validation set (ignored if ``n_valid``).
      seed: permutation seed.
      n_valid: exact number of validation structures.

    Returns:
      ``(train, valid)``; both non-empty when ``len(dataset) >= 2``.
    """
    n = len(dataset)
    if n_valid is None:
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
        n_valid = int(round(valid_fraction * n))
    n_valid = min(max(int(n_valid), 1), n - 1)
    if n < 2:
        raise ValueError(f"cannot split a dataset of {n} structure(s)")
    perm = np.random.default_rng(seed).permutation(n)
    return dataset[np.sort(perm[n_valid:])], dataset[np.sort(perm[:n_valid])]


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def fit_element_refs(dataset: Dataset) -> dict[int, float]:
    """Per-element reference energies from least squares on the composition.

    Solves ``min_e Σ_s (E_s − Σ_Z n_{s,Z} e_Z)²`` with ``numpy.linalg.lstsq``. When the
    composition matrix is rank deficient (every structure has the same stoichiometry, e.g. one
    molecule or a 1:1 salt) the fit only fixes composition-weighted sums of the ``e_Z``; lstsq then
    returns the minimum-norm solution, which reproduces those sums exactly (so the residual
    energies, and the model, are the same as for any other solution) but gives individual
    values that should not be read as atomic energies.

    Returns:
      ``{atomic number: eV}`` for every element present.
    """
    elements = dataset.elements
    if not elements:
        return {}
    col = {z: k for k, z in enumerate(elements)}
    a = np.zeros((len(dataset), len(elements)))
    for i, s in enumerate(dataset.structures):
        z, c = np.unique(s.numbers, return_counts=True)
        a[i, [col[int(x)] for x in z]] = c
    e = dataset.energies
    known = np.isfinite(e)
    if not known.any():
        raise ValueError("fit_element_refs: no structure has an energy label")
    refs, *_ = np.linalg.lstsq(a[known], e[known], rcond=None)
    return {z: float(refs[col[z]]) for z in elements}


def _ref_energies(dataset: Dataset, refs: dict[int, float]) -> np.ndarray:
    return np.array([sum(refs.get(int(z), 0.0) for z in s.numbers) for s in dataset.structures])


@dataclasses.dataclass(frozen=True)
class Statistics:
    """Label scales of a dataset (use the training set).

    Attributes:
      element_refs: ``{Z: eV}`` from :func:`fit_element_refs`.
      energy_std_per_atom: std of ``(E − Σ refs) / N`` over structures, eV/atom.
      energy_mean_per_atom: mean of the same residual (≈ 0), eV/atom.
      force_rms: RMS of the force components over all atoms, eV/Å (0 without forces).
      stress_rms: RMS of the stress components over structures with stress, eV/Å³ (0 if none).
      avg_num_neighbors: mean number of edges per atom within the cutoff.
      n_structures, n_atoms_mean: dataset size.
      has_stress: whether any structure has a stress label.
    """

    element_refs: dict[int, float]
    energy_std_per_atom: float
    energy_mean_per_atom: float
    force_rms: float
    stress_rms: float
    avg_num_neighbors: float
    n_structures: int
    n_atoms_mean: float
    has_stress: bool

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["element_refs"] = {str(k): v for k, v in self.element_refs.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Statistics:
        d = dict(d)
        d["element_refs"] = {int(k): float(v) for k, v in d["element_refs"].items()}
        return cls(**d)


def statistics(dataset: Dataset, element_refs: dict[int, float] | None = None) -> Statistics:
    """Compute the :class:`Statistics` of ``dataset`` (fits element refs unless given)."""
    if len(dataset) == 0:
        raise ValueError("statistics of an empty dataset")
    refs = fit_element_refs(dataset) if element_refs is None else dict(element_refs)
    n = dataset.n_atoms.astype(np.float64)
    resid = (dataset.energies - _ref_energies(dataset, refs)) / n
    resid = resid[np.isfinite(resid)]
    f = [s.forces for s in dataset.structures if s.forces is not None]
    force_rms = float(np.sqrt(np.mean(np.concatenate(f) ** 2))) if f else 0.0
    st = [s.stress for s in dataset.structures if s.stress is not None]
    stress_rms = float(np.sqrt(np.mean(np.stack(st) ** 2))) if st else 0.0
    return Statistics(
        element_refs=refs,
        energy_std_per_atom=float(np.std(resid)),
        energy_mean_per_atom=float(np.mean(resid)),
        force_rms=force_rms,
        stress_rms=stress_rms,
        avg_num_neighbors=float(dataset.n_edges.sum() / n.sum()),
        n_structures=len(dataset),
        n_atoms_mean=float(n.mean()),
        has_stress=bool(st),
    )


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


@struct.dataclass
class Batch:
    """A fixed-shape batch of ``B`` labelled structures (leading axis ``B``).

    Attributes:
      system: batched :class:`~jaxpot.System`, ``positions [B, n_atoms, 3]`` etc.
      energy: ``[B]`` eV (0 on dummies and where missing).
      forces: ``[B, n_atoms, 3]`` eV/Å (0 on padding atoms and where missing).
      stress: ``[B, 3, 3]`` eV/Å³ (0 where missing).
      has_forces: ``[B]`` bool.
      has_stress: ``[B]`` bool.
      n_atoms: ``[B]`` int32 real atom count (0 on dummies).
      weight: ``[B]`` float, the structure's loss weight (1 unless the data file gives one),
        0 for dummy padding structures.
      has_energy: ``[B]`` bool (False only on dummies and, with ``allow_partial``, structures
        without an energy label).
      charges: ``[B, n_atoms]`` e (0 on padding atoms and where missing).
      has_charges: ``[B]`` bool.
    """

    system: System
    energy: jnp.ndarray
    forces: jnp.ndarray
    stress: jnp.ndarray
    has_forces: jnp.ndarray
    has_stress: jnp.ndarray
    n_atoms: jnp.ndarray
    weight: jnp.ndarray
    has_energy: jnp.ndarray
    charges: jnp.ndarray
    has_charges: jnp.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(batch_size, n_atoms, n_edges)`` (static)."""
        return (self.energy.shape[0], self.system.positions.shape[-2],
                self.system.senders.shape[-1])


def collate(structures: Sequence[Structure], batch_size: int, n_atoms: int, n_edges: int,
            *, dtype=None, put=jax.device_put) -> Batch:
    """Pad ``structures`` to ``(n_atoms, n_edges)`` and fill up to ``batch_size`` with dummies.

    Padding goes through :func:`jaxpot.system.pad_arrays` on the host; the finished batch goes
    to the device in one ``put`` call. Dummy structures have no real atoms, no edges, zero
    labels and ``weight = 0``.

    Args:
      structures: at most ``batch_size`` structures that fit ``(n_atoms, n_edges)``.
      batch_size: leading axis ``B``.
      n_atoms, n_edges: slot counts of every structure.
      dtype: float dtype (default: JAX's default float).
      put: places the batch (a pytree of NumPy arrays) on devices; default
        ``jax.device_put``; a sharded placement for several devices; ``lambda b: b`` keeps
        NumPy.
    """
    b = int(batch_size)
    if len(structures) > b:
        raise ValueError(f"{len(structures)} structures do not fit a batch of {b}")
    f = np.dtype(jax.dtypes.canonicalize_dtype(np.float64 if dtype is None else dtype))
    padded = [s.padded(n_atoms=n_atoms, n_edges=n_edges, dtype=f) for s in structures]
    empty = pad_arrays(np.zeros((0, 3)), np.zeros(0, np.int32), n_atoms=n_atoms,
                       n_edges=n_edges, dtype=f)
    system = stack_arrays(padded + [empty] * (b - len(structures)))
    y = {"energy": np.zeros(b, f), "forces": np.zeros((b, n_atoms, 3), f),
         "stress": np.zeros((b, 3, 3), f), "charges": np.zeros((b, n_atoms), f),
         "weight": np.zeros(b, f), "n_atoms": np.zeros(b, np.int32)}
    has = {k: np.zeros(b, bool) for k in ("has_energy", "has_forces", "has_stress",
                                           "has_charges")}
    for k, s in enumerate(structures):
        n = s.n_atoms
        y["n_atoms"][k] = n
        y["weight"][k] = s.weight
        for kind, value in (("energy", s.energy), ("forces", s.forces), ("stress", s.stress),
                            ("charges", s.charges)):
            if value is None:
                continue
            if kind in ("forces", "charges"):
                y[kind][k, :n] = value
            else:
                y[kind][k] = value
            has[f"has_{kind}"][k] = True
    return put(Batch(system=System(**system), **y, **has))


def _geometric(lo: int, hi: int, growth: float) -> list[int]:
    sizes = [max(int(lo), 1)]
    while sizes[-1] < hi:
        sizes.append(max(sizes[-1] + 1, int(math.ceil(sizes[-1] * growth))))
    return sizes


def choose_shapes(
    datasets: Dataset | Sequence[Dataset],
    *,
    growth: float = 1.1,
    max_shapes: int = 6,
) -> list[tuple[int, int]]:
    """Choose a few padded ``(n_atoms, n_edges)`` shapes that every structure fits.

    Atom and edge counts are first rounded up to geometric ladders (ratio ``growth``) that start
    at the smallest count present; each resulting group gets the shape of its largest member.
    While there are more than ``max_shapes`` groups, the two whose merger adds the least padded
    work (``Σ_structures n_atoms + n_edges`` of the padded shapes) are merged.

    Args:
      datasets: one dataset or several (e.g. train and valid, so both reuse the shapes).
      growth: ratio of the initial ladders (> 1).
      max_shapes: upper bound on the number of shapes, hence on compilations per function.

    Returns:
      Sorted list of ``(n_atoms, n_edges)``.
    """
    if isinstance(datasets, Dataset):
        datasets = [datasets]
    n = np.concatenate([d.n_atoms for d in datasets])
    e = np.concatenate([d.n_edges for d in datasets])
    if n.size == 0:
        raise ValueError("choose_shapes: no structures")
    if max_shapes < 1:
        raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
    keys = _assign(n, e, max(float(growth), 1.0001))
    groups: dict = {}
    for k, a, b in zip(keys, n.tolist(), e.tolist(), strict=True):
        ta, tb, c = groups.get(k, (0, 1, 0))
        groups[k] = (max(ta, int(a)), max(tb, int(b)), c + 1)
    shapes = list(groups.values())  # (n_atoms, n_edges, count)

    def cost(g):
        return g[2] * (g[0] + g[1])

    while len(shapes) > max_shapes:
        best = None
        for i in range(len(shapes)):
            for j in range(i + 1, len(shapes)):
                a, b = shapes[i], shapes[j]
                m = (max(a[0], b[0]), max(a[1], b[1]), a[2] + b[2])
                extra = cost(m) - cost(a) - cost(b)
                if best is None or extra < best[0]:
                    best = (extra, i, j, m)
        _, i, j, m = best
        shapes = [g for k, g in enumerate(shapes) if k not in (i, j)] + [m]
    return sorted((a, b) for a, b, _ in shapes)


def _assign(n: np.ndarray, e: np.ndarray, growth: float) -> list[tuple[int, int]]:
    a_sizes = np.array(_geometric(n.min(), n.max(), growth))
    e_sizes = np.array(_geometric(max(e.min(), 1), max(e.max(), 1), growth))
    a = a_sizes[np.searchsorted(a_sizes, n)]
    b = e_sizes[np.searchsorted(e_sizes, np.maximum(e, 1))]
    return list(zip(a.tolist(), b.tolist(), strict=False))


class BatchLoader:
    """Fixed-shape batches of a dataset, reshuffled each epoch from ``(seed, epoch)``.

    The order of an epoch depends only on ``seed`` and ``epoch`` (NumPy's PCG64 seeded with both),
    so a resumed run replays exactly the batches an uninterrupted one would have seen.

    Args:
      dataset: the structures.
      batch_size: structures per batch (fixed; short batches get weight-0 dummies).
      shapes: allowed ``(n_atoms, n_edges)`` shapes (default :func:`choose_shapes`); each
        structure goes to the smallest shape (by ``n_atoms · n_edges``) that fits it.
      shuffle: reshuffle every epoch (training) or keep a fixed order (evaluation).
      seed: shuffle seed.
      dtype: float dtype of the batches (default: JAX's default float).
      put: device placement of every batch, a function of a pytree of NumPy arrays (default
        ``jax.device_put``; pass a sharded ``jax.device_put(..., sharding)`` to spread batches
        over devices). Structures stay on the host until then.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *,
                 shapes: Sequence[tuple[int, int]] | None = None, shuffle: bool = True,
                 seed: int = 0, dtype=None, put=jax.device_put):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("BatchLoader: empty dataset")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shapes = [tuple(map(int, s)) for s in (shapes or choose_shapes(dataset))]
        self.shuffle = shuffle
        self.seed = int(seed)
        self.dtype = dtype
        self.put = put
        order = sorted(self.shapes, key=lambda s: (s[0] * s[1], s))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(dataset.structures):
            for shape in order:
                if s.n_atoms <= shape[0] and s.n_edges <= shape[1]:
                    groups.setdefault(shape, []).append(i)
                    break
            else:
                raise ValueError(f"{s.source}: {s.n_atoms} atoms / {s.n_edges} edges fit none "
                                 f"of the batch shapes {self.shapes}")
        self.groups = {k: np.asarray(v) for k, v in sorted(groups.items())}

    def __len__(self) -> int:
        return sum(-(-len(v) // self.batch_size) for v in self.groups.values())

    @property
    def used_shapes(self) -> list[tuple[int, int]]:
        """The shapes that at least one structure uses."""
        return list(self.groups)

    def plan(self, epoch: int) -> list[tuple[tuple[int, int], np.ndarray]]:
        """The epoch's batches as ``(shape, structure indices)`` pairs, in order."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        out = []
        for shape, idx in self.groups.items():
            if self.shuffle:
                idx = rng.permutation(idx)
            for start in range(0, len(idx), self.batch_size):
                out.append((shape, idx[start: start + self.batch_size]))
        if self.shuffle:
            out = [out[k] for k in rng.permutation(len(out))]
        return out

    def batches(self, epoch: int = 0, *, start: int = 0) -> Iterator[Batch]:
        """Yield the batches of ``epoch``, skipping the first ``start`` (for resuming)."""
        for shape, idx in self.plan(epoch)[start:]:
            yield collate([self.dataset.structures[i] for i in idx], self.batch_size, *shape,
                          dtype=self.dtype, put=self.put)
