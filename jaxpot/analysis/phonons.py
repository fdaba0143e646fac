"""Phonons of crystals: force constants from the exact Hessian of a supercell, handed to phonopy.

jaxpot supplies the force constants; phonopy (a kept library) does the rest: the dynamical
matrix at any q, band structures, densities of states and thermal properties. The force
constants are the exact second derivatives ``Φ_{iα,jβ} = ∂²E/∂x_iα ∂x_jβ`` (eV/Å²) of the
periodic supercell (:func:`jaxpot.potential.hessian`), the quantity phonopy otherwise estimates
from finite displacements; no displacement, symmetrisation or force call is needed.

Units: phonopy's defaults for eV, Å and amu: frequencies in THz (``THZ_TO_CM`` converts to
cm⁻¹), q-points in reduced coordinates of the primitive cell's reciprocal lattice, DOS in
states/THz per primitive cell.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxpot.potential import Potential, check_species, hessian
from jaxpot.system import System

__all__ = ["force_constants", "phonopy_from_model", "band_structure", "total_dos",
           "to_phonopy_atoms", "THZ_TO_CM"]

THZ_TO_CM = 33.35640951981521
"""cm⁻¹ per THz (1e12 / c in cm/s)."""

_JITS: dict = {}


def to_phonopy_atoms(atoms):
    """A ``PhonopyAtoms`` with the symbols, cell, scaled positions and masses of ``atoms``."""
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.asarray(atoms.cell[:]),
                        scaled_positions=atoms.get_scaled_positions(wrap=False),
                        masses=atoms.get_masses())


def force_constants(potential: Potential, params, positions, numbers, cell) -> np.ndarray:
    """Exact force constants ``[N, N, 3, 3]`` (eV/Å²) of a periodic supercell.

    Args:
      potential, params: the potential and its parameters.
      positions: ``[N, 3]`` Å, numbers: ``[N]`` atomic numbers, cell: ``[3, 3]`` rows are
        lattice vectors (Å) of the supercell (periodic in 3-D).

    Returns:
      ``fc[i, j, α, β] = ∂²E/∂x_iα ∂x_jβ`` in phonopy's layout (a NumPy array).
    """
    numbers = np.asarray(numbers)
    check_species(potential, numbers, where="phonon supercell")
    system = System.from_arrays(positions, numbers, cell=cell, pbc=True,
                                cutoff=potential.cutoff, where="phonon supercell")
    key = potential.energy
    if key not in _JITS:
        _JITS[key] = jax.jit(hessian(potential))
    h = np.asarray(_JITS[key](params, system), np.float64)  # [N, 3, N, 3]
    h = 0.5 * (h + h.transpose(2, 3, 0, 1))  # exact up to rounding; symmetric as phonopy expects
    return np.ascontiguousarray(h.transpose(0, 2, 1, 3))


def phonopy_from_model(potential: Potential, params, unitcell, supercell_matrix, *,
                       primitive_matrix=None):
    """A ``phonopy.Phonopy`` object whose force constants come from the exact Hessian.

    Args:
      potential, params: the potential and its parameters.
      unitcell: ``ase.Atoms`` (periodic); supercell_matrix: ``[3, 3]`` integers or three
        repeats, as for phonopy (the supercell should be large enough that the force
        constants have decayed at half its width, as with finite displacements).
      primitive_matrix: passed to phonopy (default: the unit cell is primitive).

    Returns:
      ``Phonopy`` with ``force_constants`` set; call its ``run_band_structure``, ``run_mesh``,
      ``run_total_dos``, ``run_thermal_properties`` (or :func:`band_structure`,
      :func:`total_dos`).
    """
    from phonopy import Phonopy

    if not all(unitcell.pbc):
        raise ValueError("phonopy_from_model: the unit cell must be periodic in 3-D")
    phonon = Phonopy(to_phonopy_atoms(unitcell), supercell_matrix=supercell_matrix,
                     primitive_matrix=primitive_matrix)
    sc = phonon.supercell
    phonon.force_constants = force_constants(potential, params, sc.positions, sc.numbers,
                                             sc.cell)
    return phonon


def band_structure(phonon, unitcell, *, path: str | None = None, npoints: int = 100) -> dict:
    """Frequencies along a high-symmetry path (ASE's ``cell.bandpath``).

    Args:
      phonon: a ``Phonopy`` with force constants (:func:`phonopy_from_model`).
      unitcell: the ``ase.Atoms`` whose cell defines the path; it must be the primitive cell
        phonopy uses (q in its reduced reciprocal coordinates).
      path: e.g. ``"GXWKGLUWLK"`` (default: ASE's standard path for the lattice).
      npoints: points along the whole path.

    Returns:
      dict with ``qpoints`` (``[k, 3]`` reduced), ``x`` (``[k]`` path length, 1/Å),
      ``frequencies`` (``[k, 3 n_prim]`` THz, ascending; imaginary negative),
      ``frequencies_cm`` (cm⁻¹), ``labels`` and ``label_x`` (special points).
    """
    bp = unitcell.cell.bandpath(path, npoints=npoints)
    phonon.run_qpoints(bp.kpts)
    freqs = np.asarray(phonon.qpoints.frequencies)
    x, label_x, labels = bp.get_linear_kpoint_axis()
    return {"qpoints": bp.kpts, "x": np.asarray(x), "frequencies": freqs,
            "frequencies_cm": freqs * THZ_TO_CM, "labels": list(labels),
            "label_x": np.asarray(label_x)}


def total_dos(phonon, *, mesh=(20, 20, 20), sigma: float | None = None) -> dict:
    """Phonon density of states on a Γ-centred q mesh (phonopy's tetrahedron method, or
    Gaussian smearing of width ``sigma`` THz).

    Returns:
      dict with ``frequencies`` (THz), ``dos`` (states/THz per primitive cell) and
      ``frequencies_cm``.
    """
    phonon.run_mesh(list(mesh), is_gamma_center=True)
    phonon.run_total_dos(sigma=sigma)
    d = phonon.get_total_dos_dict()
    f = np.asarray(d["frequency_points"])
    return {"frequencies": f, "dos": np.asarray(d["total_dos"]), "frequencies_cm": f * THZ_TO_CM}
