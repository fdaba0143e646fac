"""A jaxpot potential as an ASE calculator.

::

    from jaxpot.ase import Calculator
    atoms.calc = Calculator(jaxpot.potentials.lennard_jones(3.4, 0.0104, 8.5))
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.calc = Calculator.from_file("model.jaxpot")

Each call builds the edges on the host (exact neighbour list for ``potential.cutoff``), pads
atoms and edges up to geometric bucket sizes (:func:`jaxpot.system.default_buckets`) and runs
one jitted ``energy_forces_stress`` per calculator, so structures of similar size (an ASE
optimisation or MD run) reuse the same compiled function. Arrays use JAX's default float dtype
(float64 under ``jax_enable_x64``); results are returned to ASE as float64 NumPy arrays.
"""

from __future__ import annotations

import jax
import numpy as np
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from jaxpot.potential import Potential, energy_forces_stress
from jaxpot.system import System, bucket, default_buckets

__all__ = ["Calculator"]


def _bucket_size(n: int, minimum: int) -> int:
    return bucket(n, default_buckets(max(n, minimum), minimum=minimum))


class Calculator(_AseCalculator):
    """ASE calculator for a jaxpot :class:`~jaxpot.Potential`.

    Properties: ``energy`` and ``free_energy`` (eV), ``forces`` (``[n_atoms, 3]`` eV/Å) and
    ``stress`` (Voigt ``[6]`` eV/Å³, ASE sign and order xx, yy, zz, yz, xz, xy). Stress needs
    a cell with non-zero volume; asking for it otherwise raises ASE's
    ``PropertyNotImplementedError``.

    Args:
      potential: the potential.
      params: its parameters; default ``potential.init(jax.random.key(0), system)`` on the
        first structure seen.
      dtype: float dtype of the System arrays (default: JAX's default float).
      min_atoms, min_edges: smallest bucket sizes (padding targets grow by 25 % per bucket).

    Attributes:
      potential, params: as given.
      n_compiles: number of distinct padded shapes seen so far (each compiles once).

    Example:
      >>> from ase.build import bulk
      >>> from jaxpot.potentials import lennard_jones
      >>> atoms = bulk("Ar", "fcc", a=5.26)
      >>> atoms.calc = Calculator(lennard_jones(3.4, 0.0104, 8.5))
      >>> round(atoms.get_potential_energy(), 2)
      -0.08
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    nolabel = True

    def __init__(self, potential: Potential, params=None, *, dtype=None, min_atoms: int = 8,
                 min_edges: int = 64, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(potential, Potential):
            raise TypeError(f"Calculator needs a jaxpot Potential, got {type(potential).__name__}")
        self.potential = potential
        self.params = params
        self.dtype = dtype
        self.min_atoms = int(min_atoms)
        self.min_edges = int(min_edges)
        self._efs = jax.jit(energy_forces_stress(potential))
        self._shapes: set[tuple[int, int]] = set()

    @classmethod
    def from_file(cls, path, **kwargs) -> Calculator:
        """A calculator for a model file written by :func:`jaxpot.save_model`."""
        from jaxpot.serialization import load_model

        potential, params = load_model(path)
        return cls(potential, params, **kwargs)

    @property
    def n_compiles(self) -> int:
        """Number of distinct ``(n_atoms, n_edges)`` padded shapes evaluated."""
        return len(self._shapes)

    def system(self, atoms) -> System:
        """The padded :class:`~jaxpot.System` (with edges) this calculator evaluates."""
        system = System.from_ase(atoms, cutoff=self.potential.cutoff, dtype=self.dtype)
        n_atoms = _bucket_size(len(atoms), self.min_atoms)
        n_edges = _bucket_size(system.n_edges, self.min_edges)
        return system.pad(n_atoms, n_edges)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Compute energy, forces and (for cells with volume) stress; see ASE's Calculator."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        has_volume = atoms.cell.rank == 3 and abs(atoms.cell.volume) > 0
        if "stress" in properties and not has_volume:
            raise PropertyNotImplementedError(
                "stress needs a cell with non-zero volume (this structure has cell "
                f"{atoms.cell.tolist()})"
            )
        system = self.system(atoms)
        if self.params is None:
            self.params = self.potential.init(jax.random.key(0), system)
        self._shapes.add((system.n_atoms, system.n_edges))
        energy, forces, stress = self._efs(self.params, system)
        energy = float(energy)
        if not np.isfinite(energy):
            raise ValueError(f"structure {atoms.get_chemical_formula()}: the potential returned "
                             f"a non-finite energy ({energy})")
        n = len(atoms)
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.asarray(forces, np.float64)[:n].copy(),
        }
        if has_volume:
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(stress, np.float64))
