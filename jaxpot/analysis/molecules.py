"""Molecules in a structure: found by connectivity, then their forces, torques and inertia.

Units: positions Å, masses amu, forces eV/Å, torques eV (eV/Å × Å), inertia amu·Å².

:func:`find_molecules` (host side) bonds two atoms when they are closer than
``scale · (r_cov,i + r_cov,j)`` (ASE's covalent radii), across periodic boundaries, and labels
the connected components; it also records, for every atom, the integer image shift that makes
its molecule whole (unbroken by the cell). The per-molecule sums (:func:`molecular_forces`,
:func:`torques`, :func:`inertia_tensors`, :func:`centers_of_mass`) are JAX
(``segment_sum`` over labels), jittable, and drop padding atoms (label ``n_molecules``).

The torque of molecule ``m`` is ``τ_m = Σ_{i∈m} (r_i − R_m) × F_i`` about its centre of mass
``R_m``; for a conservative, rotation-invariant energy the total torque on an isolated molecule
is zero (as is the total force).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Molecules", "find_molecules", "whole_positions", "centers_of_mass",
           "molecular_forces", "torques", "inertia_tensors", "molecular_properties"]


@dataclasses.dataclass
class Molecules:
    """Connectivity of a structure.

    Attributes:
      labels: ``[n_atoms]`` int molecule index of each atom (``n_molecules`` for padding).
      n_molecules: number of molecules.
      images: ``[n_atoms, 3]`` integer shifts: ``positions + images @ cell`` keeps each
        molecule whole.
      sizes: ``[n_molecules]`` atoms per molecule.
    """

    labels: np.ndarray
    n_molecules: int
    images: np.ndarray
    sizes: np.ndarray


def find_molecules(numbers, positions, cell=None, pbc=False, *, scale: float = 1.2,
                   mask=None) -> Molecules:
    """Molecules as connected components of the covalent-bond graph (host side).

    Args:
      numbers: ``[n_atoms]`` atomic numbers.
      positions: ``[n_atoms, 3]`` Å.
      cell: ``[3, 3]`` Å (rows are lattice vectors); zeros or None when not periodic.
      pbc: bool or three bools.
      scale: bond when ``d < scale · (r_cov,i + r_cov,j)`` (ASE's ``covalent_radii``).
      mask: optional ``[n_atoms]`` bool of real atoms (padding gets label ``n_molecules``).

    Raises:
      ValueError: a molecule bonded to its own periodic image (an infinite chain or a network:
        no finite molecule to make whole).
    """
    from ase.data import covalent_radii
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from jaxpot.neighbors import neighbor_list

    x = np.asarray(positions, np.float64)
    z = np.asarray(numbers).reshape(-1)
    real = np.ones(len(z), bool) if mask is None else np.asarray(mask, bool)
    idx = np.flatnonzero(real)
    xr, zr = x[idx], z[idx]
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    radii = covalent_radii[zr]
    recv, send, shifts = neighbor_list(xr, cell, pbc, float(scale * 2 * radii.max()))
    d = np.linalg.norm(xr[send] - xr[recv] + shifts @ cell, axis=1)
    bond = d < scale * (radii[send] + radii[recv])
    recv, send, shifts = recv[bond], send[bond], shifts[bond]
    n = len(zr)
    graph = coo_matrix((np.ones(len(recv)), (recv, send)), shape=(n, n)).tocsr()
    n_mol, lab = connected_components(graph, directed=False)
    images = _images(n, recv, send, shifts, lab, n_mol)
    labels = np.full(len(z), n_mol, np.int64)
    labels[idx] = lab
    all_images = np.zeros((len(z), 3))
    all_images[idx] = images
    return Molecules(labels=labels, n_molecules=int(n_mol), images=all_images,
                     sizes=np.bincount(lab, minlength=n_mol))


def _images(n, recv, send, shifts, labels, n_mol) -> np.ndarray:
    """Image shift of every atom relative to its molecule's first atom, by breadth-first search
    over bonds (bond i→j with shift S: image_j = image_i + S)."""
    order = np.argsort(recv, kind="stable")
    recv, send, shifts = recv[order], send[order], shifts[order]
    start = np.searchsorted(recv, np.arange(n + 1))
    images = np.full((n, 3), np.nan)
    for m in range(n_mol):
        root = int(np.flatnonzero(labels == m)[0])
        images[root] = 0.0
        queue = [root]
        while queue:
            i = queue.pop()
            for e in range(start[i], start[i + 1]):
                j, target = send[e], images[i] + shifts[e]
                if np.isnan(images[j, 0]):
                    images[j] = target
                    queue.append(j)
                elif not np.array_equal(images[j], target):
                    raise ValueError(f"find_molecules: molecule {m} (atoms {root}, {j}, ...) is "
                                     f"bonded to its own periodic image (a chain or network), "
                                     f"so it has no finite centre of mass")
    return images


def whole_positions(positions, cell, molecules: Molecules):
    """``[n_atoms, 3]`` positions with every molecule unbroken by the cell (Å; JAX or NumPy)."""
    cell = jnp.zeros((3, 3)) if cell is None else cell
    return positions + jnp.matmul(jnp.asarray(molecules.images, positions.dtype), cell,
                                  precision=jax.lax.Precision.HIGHEST)


def _sum(values, labels, n_mol):
    return jax.ops.segment_sum(values, jnp.asarray(labels), num_segments=n_mol + 1)[:n_mol]


def centers_of_mass(positions, masses, labels, n_molecules: int):
    """``[n_molecules, 3]`` centres of mass, Å, of whole-molecule ``positions``."""
    m = jnp.asarray(masses)
    total = _sum(m, labels, n_molecules)
    return _sum(m[:, None] * positions, labels, n_molecules) / total[:, None]


def molecular_forces(forces, labels, n_molecules: int):
    """``[n_molecules, 3]`` total force on each molecule, eV/Å."""
    return _sum(forces, labels, n_molecules)


def torques(positions, forces, masses, labels, n_molecules: int):
    """``[n_molecules, 3]`` torque ``Σ (r_i − R_com) × F_i`` about each centre of mass, eV.

    ``positions`` must be whole molecules (:func:`whole_positions`)."""
    com = centers_of_mass(positions, masses, labels, n_molecules)
    lab = jnp.minimum(jnp.asarray(labels), n_molecules - 1)
    rel = positions - com[lab]
    return _sum(jnp.cross(rel, forces), labels, n_molecules)


def inertia_tensors(positions, masses, labels, n_molecules: int):
    """``[n_molecules, 3, 3]`` inertia tensors about the centres of mass, amu·Å²:
    ``I = Σ m_i (|d_i|² 𝟙 − d_i d_iᵀ)`` with ``d_i = r_i − R_com``."""
    com = centers_of_mass(positions, masses, labels, n_molecules)
    lab = jnp.minimum(jnp.asarray(labels), n_molecules - 1)
    d = positions - com[lab]
    m = jnp.asarray(masses)[:, None, None]
    outer = d[:, :, None] * d[:, None, :]
    per = m * (jnp.sum(d * d, -1)[:, None, None] * jnp.eye(3, dtype=d.dtype) - outer)
    return _sum(per, labels, n_molecules)


def molecular_properties(potential, params, system, molecules: Molecules | None = None) -> dict:
    """Forces, torques, centres of mass and inertia of every molecule of ``system``.

    Args:
      potential: a :class:`~jaxpot.Potential`.
      params: its parameters.
      system: a :class:`~jaxpot.System` with edges for ``potential.cutoff``.
      molecules: from :func:`find_molecules` (found here when None).

    Returns:
      ``{"energy": eV, "forces": [n_mol, 3] eV/Å, "torques": [n_mol, 3] eV,
      "centers": [n_mol, 3] Å, "inertia": [n_mol, 3, 3] amu·Å², "atom_forces": [n_atoms, 3]
      eV/Å, "molecules": Molecules}`` (the force evaluation is jitted).
    """
    from jaxpot.potential import energy_and_forces

    if molecules is None:
        molecules = find_molecules(system.species, system.positions, system.cell, system.pbc,
                                   mask=system.atom_mask)
    e, f = jax.jit(energy_and_forces(potential))(params, system)
    pos = whole_positions(system.positions, system.cell, molecules)
    lab, n = molecules.labels, molecules.n_molecules
    return {"energy": e, "forces": molecular_forces(f, lab, n),
            "torques": torques(pos, f, system.masses, lab, n),
            "centers": centers_of_mass(pos, system.masses, lab, n),
            "inertia": inertia_tensors(pos, system.masses, lab, n), "atom_forces": f,
            "molecules": molecules}
