"""Training data: read labelled structures, check them, split, summarise, and batch them.

Everything here runs on the host with NumPy. The pipeline is::

    train = data.read_extxyz("train.xyz", cutoff=5.0)        # edges precomputed (exact, host)
    train, valid = data.split(train, valid_fraction=0.1, seed=0)
    stats = data.statistics(train)                           # element refs, force RMS, ...
    loader = data.BatchLoader(train, batch_size=8, shuffle=True, seed=0)
    for batch in loader.batches(epoch=0):                    # fixed-shape :class:`Batch`
        ...

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

from jaxpot.system import System

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
]


# ---------------------------------------------------------------------------------------------
# One labelled structure, and a list of them
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
    """One labelled structure with its edges, as host-side NumPy arrays (no padding).

    Attributes:
      positions: ``[n, 3]`` Å.
      numbers: ``[n]`` atomic numbers.
      masses: ``[n]`` amu.
      cell: ``[3, 3]`` rows are lattice vectors, Å.
      pbc: ``[3]`` bool.
      senders, receivers: ``[n_edges]`` int32 edge ends (neighbour j, centre i).
      shifts: ``[n_edges, 3]`` integer image shifts (float array).
      energy: total energy, eV.
      forces: ``[n, 3]`` eV/Å, or None when the structure has no force labels.
      stress: ``[3, 3]`` eV/Å³ (ASE sign), or None.
      source: where it came from, used in messages (``"train.xyz frame 12"``).
    """

    positions: np.ndarray
    numbers: np.ndarray
    masses: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    energy: float
    forces: np.ndarray | None
    stress: np.ndarray | None
    source: str = ""

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.senders.shape[0])

    def system(self, *, n_atoms: int | None = None, n_edges: int | None = None,
               dtype=None) -> System:
        """This structure as an unbatched :class:`~jaxpot.System` (optionally padded)."""
        return System.from_arrays(
            self.positions, self.numbers, cell=self.cell, pbc=self.pbc, masses=self.masses,
            cutoff=None, n_atoms=n_atoms, n_edges=0, dtype=dtype, where=self.source,
        ).replace(**_edge_arrays(self, n_atoms or self.n_atoms, n_edges or self.n_edges, dtype))


def _edge_arrays(s: Structure, n_pad: int, e_pad: int, dtype) -> dict:
    snd = np.full(e_pad, n_pad, np.int32)
    rcv = np.full(e_pad, n_pad, np.int32)
    shf = np.zeros((e_pad, 3))
    snd[: s.n_edges] = s.senders
    rcv[: s.n_edges] = s.receivers
    shf[: s.n_edges] = s.shifts
    fdtype = jnp.zeros((), dtype).dtype if dtype is not None else jnp.zeros(()).dtype
    put = jax.device_put  # jnp.asarray would compile a copy per new shape
    return {"senders": put(snd), "receivers": put(rcv), "shifts": put(shf.astype(fdtype))}


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
        """``[n_structures]`` total energies, eV."""
        return np.array([s.energy for s in self.structures], np.float64)

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


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _voigt_or_matrix(value, where: str) -> np.ndarray:
    v = np.asarray(value, np.float64).reshape(-1)
    if v.size == 9:
        return v.reshape(3, 3)
    if v.size == 6:  # ASE Voigt order: xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = v
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise ValueError(f"{where}: stress must have 6 (Voigt) or 9 components, got {v.size}")


def _get_label(atoms, key: str | None, standard: str):
    """Look ``key`` up in info, arrays, then the attached calculator's results."""
    if key is None:
        return None
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    calc = atoms.calc
    if calc is not None:
        results = getattr(calc, "results", {}) or {}
        for k in (key, standard) if key == standard else (key,):
            if k in results:
                return results[k]
        if key == standard and standard in ("energy", "forces"):
            # A live calculator (EMT, DFT, ...) that was attached but not run yet.
            try:
                if standard == "energy":
                    return atoms.get_potential_energy()
                return atoms.get_forces()
            except Exception:  # noqa: BLE001 - calculators raise many types; treat as missing
                return None
    return None


def from_atoms(
    images: Sequence,
    *,
    cutoff: float,
    energy_key: str = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    source: str = "atoms",
    require_forces: bool = False,
) -> Dataset:
    """Turn ``ase.Atoms`` with labels into a :class:`Dataset` (edges built for ``cutoff``).

    Labels are looked up under the given keys in ``atoms.info`` (energy, stress),
    ``atoms.arrays`` (forces), then in the attached calculator's ``results`` (which is where
    ``ase.io.read`` puts ``energy``/``forces``/``stress``, and where a calculator such as
    ``EMT`` leaves them after ``get_potential_energy()``). A calculator that is attached but has
    not run is asked for energy and forces (never stress).

    Args:
      images: ``ase.Atoms`` objects.
      cutoff: neighbour cutoff for the edges, Å.
      energy_key, forces_key, stress_key: label names; ``None`` ignores that label.
      source: name used in error messages (a file name).
      require_forces: raise if a structure has no forces.

    Returns:
      A :class:`Dataset`; forces/stress are None on structures without those labels.

    Raises:
      ValueError: naming ``source`` and the frame index, for a missing or non-finite energy,
        forces of the wrong shape or non-finite, bad stress, or an invalid structure (see
        :meth:`jaxpot.System.from_arrays`: NaN positions, overlapping atoms, singular cell).
    """
    if cutoff is None or not cutoff > 0:
        raise ValueError(f"cutoff must be a positive distance in Å, got {cutoff!r}")
    out = []
    for i, atoms in enumerate(images):
        where = f"{source}: frame {i}"
        energy = _get_label(atoms, energy_key, "energy")
        if energy is None:
            raise ValueError(f"{where}: no energy label {energy_key!r} (info keys: "
                             f"{sorted(atoms.info)}; calculator results: "
                             f"{sorted(getattr(atoms.calc, 'results', {}) or {})})")
        try:
            energy = float(np.asarray(energy, np.float64).reshape(()))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: energy {energy!r} is not a number") from None
        if not np.isfinite(energy):
            raise ValueError(f"{where}: energy is not finite ({energy})")
        n = len(atoms)
        forces = _get_label(atoms, forces_key, "forces")
        if forces is not None:
            forces = np.asarray(forces, np.float64)
            if forces.shape != (n, 3):
                raise ValueError(f"{where}: forces have shape {forces.shape}, expected ({n}, 3)")
            bad = np.nonzero(~np.all(np.isfinite(forces), axis=1))[0]
            if bad.size:
                raise ValueError(f"{where}: non-finite force on atom {int(bad[0])}")
        elif require_forces:
            raise ValueError(f"{where}: no forces label {forces_key!r}")
        stress = _get_label(atoms, stress_key, "stress")
        if stress is not None:
            stress = _voigt_or_matrix(stress, where)
            if not np.all(np.isfinite(stress)):
                raise ValueError(f"{where}: stress is not finite")
        system = System.from_ase(atoms, cutoff=cutoff, where=where)
        out.append(_structure(atoms, system, energy, forces, stress, where))
    return Dataset(out, cutoff)


def _structure(atoms, system: System, energy, forces, stress, where) -> Structure:
    # Geometry from the Atoms in float64 (the System may be float32); integer edge data
    # (indices, image shifts) from the System.
    e_mask = np.asarray(system.senders) < system.n_atoms  # NumPy: no per-shape compile
    return Structure(
        positions=np.asarray(atoms.get_positions(), np.float64),
        numbers=np.asarray(atoms.get_atomic_numbers(), np.int32),
        masses=np.asarray(atoms.get_masses(), np.float64),
        cell=np.asarray(atoms.get_cell(), np.float64),
        pbc=np.asarray(atoms.get_pbc(), bool),
        senders=np.asarray(system.senders, np.int32)[e_mask],
        receivers=np.asarray(system.receivers, np.int32)[e_mask],
        shifts=np.asarray(system.shifts, np.float64)[e_mask],
        energy=energy, forces=forces, stress=stress, source=where,
    )


def read_extxyz(
    path: str | os.PathLike,
    *,
    cutoff: float,
    energy_key: str = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    index: str | int | slice = ":",
) -> Dataset:
    """Read an extended-XYZ file into a :class:`Dataset` (see :func:`from_atoms`).

    Args:
      path: extxyz file.
      cutoff: neighbour cutoff for the edges, Å.
      energy_key, forces_key, stress_key: where the labels are (e.g. ``"REF_energy"``).
      index: which frames (ASE syntax, default all).

    Raises:
      ValueError: the file is missing or unreadable, or a frame is invalid (the message names the
        file and the frame index).
    """
    import ase.io

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        images = ase.io.read(path, index=index, format="extxyz")
    except Exception as err:  # noqa: BLE001 - ASE raises many parse errors
        raise ValueError(f"{path}: cannot read as extxyz ({type(err).__name__}: {err})") from err
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise ValueError(f"{path}: no frames")
    return from_atoms(images, cutoff=cutoff, energy_key=energy_key, forces_key=forces_key,
                      stress_key=stress_key, source=path)


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
    refs, *_ = np.linalg.lstsq(a, dataset.energies, rcond=None)
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
      energy: ``[B]`` eV (0 on dummies).
      forces: ``[B, n_atoms, 3]`` eV/Å (0 on padding atoms and where missing).
      stress: ``[B, 3, 3]`` eV/Å³ (0 where missing).
      has_forces: ``[B]`` bool.
      has_stress: ``[B]`` bool.
      n_atoms: ``[B]`` int32 real atom count (0 on dummies).
      weight: ``[B]`` float, 1 for real structures, 0 for dummy padding structures.
    """

    system: System
    energy: jnp.ndarray
    forces: jnp.ndarray
    stress: jnp.ndarray
    has_forces: jnp.ndarray
    has_stress: jnp.ndarray
    n_atoms: jnp.ndarray
    weight: jnp.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(batch_size, n_atoms, n_edges)`` (static)."""
        return (self.energy.shape[0], self.system.positions.shape[-2],
                self.system.senders.shape[-1])


def collate(structures: Sequence[Structure], batch_size: int, n_atoms: int, n_edges: int,
            *, dtype=None) -> Batch:
    """Pad ``structures`` to ``(n_atoms, n_edges)`` and fill up to ``batch_size`` with dummies.

    Dummy structures have no real atoms, no edges, zero labels and ``weight = 0``.
    """
    b = int(batch_size)
    if len(structures) > b:
        raise ValueError(f"{len(structures)} structures do not fit a batch of {b}")
    pos = np.zeros((b, n_atoms, 3))
    num = np.zeros((b, n_atoms), np.int32)
    mas = np.ones((b, n_atoms))
    amask = np.zeros((b, n_atoms), bool)
    cell = np.zeros((b, 3, 3))
    pbc = np.zeros((b, 3), bool)
    snd = np.full((b, n_edges), n_atoms, np.int32)
    rcv = np.full((b, n_edges), n_atoms, np.int32)
    shf = np.zeros((b, n_edges, 3))
    energy = np.zeros(b)
    forces = np.zeros((b, n_atoms, 3))
    stress = np.zeros((b, 3, 3))
    has_f = np.zeros(b, bool)
    has_s = np.zeros(b, bool)
    nat = np.zeros(b, np.int32)
    weight = np.zeros(b)
    for k, s in enumerate(structures):
        n, e = s.n_atoms, s.n_edges
        if n > n_atoms or e > n_edges:
            raise ValueError(f"{s.source}: {n} atoms / {e} edges do not fit the batch shape "
                             f"({n_atoms}, {n_edges})")
        pos[k, :n] = s.positions
        num[k, :n] = s.numbers
        mas[k, :n] = s.masses
        amask[k, :n] = True
        cell[k] = s.cell
        pbc[k] = s.pbc
        snd[k, :e] = s.senders
        rcv[k, :e] = s.receivers
        shf[k, :e] = s.shifts
        energy[k] = s.energy
        if s.forces is not None:
            forces[k, :n] = s.forces
            has_f[k] = True
        if s.stress is not None:
            stress[k] = s.stress
            has_s[k] = True
        nat[k] = n
        weight[k] = 1.0
    f = np.dtype(jnp.zeros((), dtype).dtype if dtype is not None else jnp.zeros(()).dtype)

    def put(x, dt=None):  # NumPy conversion + device_put: no per-shape compile
        return jax.device_put(np.asarray(x, dt))

    system = System(
        positions=put(pos, f), species=put(num), masses=put(mas, f), atom_mask=put(amask),
        cell=put(cell, f), pbc=put(pbc), senders=put(snd), receivers=put(rcv),
        shifts=put(shf, f),
    )
    return Batch(system=system, energy=put(energy, f), forces=put(forces, f),
                 stress=put(stress, f), has_forces=put(has_f), has_stress=put(has_s),
                 n_atoms=put(nat), weight=put(weight, f))


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
    """

    def __init__(self, dataset: Dataset, batch_size: int, *,
                 shapes: Sequence[tuple[int, int]] | None = None, shuffle: bool = True,
                 seed: int = 0, dtype=None):
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
                          dtype=self.dtype)
