"""A jaxpot potential as an ASE calculator.

::

    from jaxpot.ase import Calculator
    atoms.calc = Calculator(jaxpot.potentials.lennard_jones(3.4, 0.0104, 8.5))
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.calc = Calculator.from_file("model.jaxpot")

What happens at a call, and why it is fast at ASE scale (optimisers, MD, NEB, phonons):

* **Host neighbour list, O(N), reused.** Edges are built on the host by
  :func:`jaxpot.neighbors.neighbor_list` (a cell list) for ``cutoff + skin``. While the cell,
  the atomic numbers, the masses and pbc stay the same and no atom has moved more than
  ``skin / 2`` since that build, the next call reuses the padded edges on the device and sends
  only the new positions (edges longer than the cutoff contribute exactly zero, by the
  :class:`~jaxpot.Potential` contract).
* **Compiled once per model, not per calculator.** The jitted function is cached at module
  level under the model's config (JSON), the float dtype and whether per-atom outputs are
  wanted; it takes ``params`` as an argument. Atoms and edges are padded up to geometric
  bucket sizes (:func:`jaxpot.system.default_buckets`), so every calculator of the same model
  file on structures of similar size reuses one executable, and new ``params`` never compile.
* **Precision.** Positions are translated on the host in float64 (wrapped into the cell along
  periodic directions, centred along the others) before the cast to the System dtype, so a
  float32 model gives the same result for coordinates far from the origin.

Arrays use JAX's default float dtype (float64 under ``jax_enable_x64``) unless ``dtype`` is
given; results are returned to ASE as float64 NumPy arrays.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from jaxpot import neighbors
from jaxpot.models.cells import fit_cells
from jaxpot.potential import Potential, atomic_outputs, check_species, energy_forces_stress
from jaxpot.registry import factory, from_config
from jaxpot.serialization import _json_default, load_model
from jaxpot.system import (
    System,
    bucket,
    default_buckets,
    find_edges,
    pad_arrays,
    validate_arrays,
)
from jaxpot.uncertainty.spread import spread_fn

__all__ = ["Calculator", "clear_cache"]

# (model key, dtype name, with per-atom outputs) -> jitted (params, system) -> dict; the oldest
# entries go first beyond _MAX_FUNCTIONS (each holds compiled executables)
_FUNCTIONS: dict[tuple, Any] = {}
_MAX_FUNCTIONS = 16


def clear_cache() -> None:
    """Forget the compiled functions shared by all calculators (frees their executables)."""
    _FUNCTIONS.clear()


def _registered(config) -> bool:
    try:
        factory(config["name"])
        return True
    except (KeyError, TypeError, ValueError):
        return False


def _code(fn) -> Any:
    return getattr(fn, "__code__", fn)


def _model_key(potential: Potential) -> tuple:
    """Registered potentials are keyed by their config and the code of their energy and
    per-atom functions (a model file loaded twice shares one key; a ``_replace``d variant
    with another ``energy`` or ``atomic`` does not); anything else by object identity."""
    config = potential.config
    if _registered(config):
        return ("config", json.dumps(config, sort_keys=True, default=_json_default),
                _code(potential.energy), _code(potential.atomic))
    return ("object", id(potential.energy), potential.energy, potential.atomic)


def _evaluate(potential: Potential, dtype_name: str, with_atomic: bool):
    """The shared jitted ``(params, system) -> {"energy", "forces", "stress", ...}`` (with
    ``energy_std`` and ``forces_std`` for a model that states a spread)."""
    key = (_model_key(potential), dtype_name, with_atomic)
    fn = _FUNCTIONS.get(key)
    if fn is None:
        efs = energy_forces_stress(potential)
        atomic = atomic_outputs(potential) if with_atomic else None
        spread = spread_fn(potential)

        def evaluate(params, system):
            energy, forces, stress = efs(params, system)
            out = {"energy": energy, "forces": forces, "stress": stress}
            if spread is not None:
                sp = spread(params, system)
                out.update(energy_std=sp["energy_std"], forces_std=sp["forces_std"])
            if atomic is not None:
                out.update({f"atomic_{k}": v for k, v in atomic(params, system).items()
                            if k in ("energy", "charges")})
            return out

        while len(_FUNCTIONS) >= _MAX_FUNCTIONS:
            _FUNCTIONS.pop(next(iter(_FUNCTIONS)))
        fn = _FUNCTIONS[key] = jax.jit(evaluate)
    return fn


def _bucket_size(n: int, minimum: int) -> int:
    return bucket(n, default_buckets(max(n, minimum), minimum=minimum))


def _host_offsets(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """``[n, 3]`` float64 translations that wrap atoms into the cell along periodic directions
    and centre them along the others (applied in float64 before any cast to float32)."""
    wrapped, _ = neighbors.wrap_positions(positions, cell, pbc)
    offsets = positions - wrapped
    if not pbc.all():
        basis = neighbors.complete_basis(cell, pbc)
        centre = (wrapped.mean(axis=0) @ np.linalg.inv(basis)) * ~pbc
        offsets = offsets + np.round(centre) @ basis
    return offsets


class Calculator(_AseCalculator):
    """ASE calculator for a jaxpot :class:`~jaxpot.Potential`.

    Properties: ``energy`` and ``free_energy`` (eV), ``forces`` (``[n_atoms, 3]`` eV/Å),
    ``stress`` (Voigt ``[6]`` eV/Å³, ASE sign and order xx, yy, zz, yz, xz, xy) for cells with
    non-zero volume (otherwise ASE's ``PropertyNotImplementedError``), and, when the model
    declares per-atom outputs (``potential.atomic``), ``energies`` (``[n_atoms]`` eV) and
    ``charges`` (``[n_atoms]`` e, if ``"charges" in potential.outputs``).

    A model that states its uncertainty (an ensemble, GAP: see :mod:`jaxpot.uncertainty`) also
    puts ``energy_std`` (eV, total energy) and ``forces_std`` (``[n_atoms]`` eV/Å, per atom,
    calibrated) into ``calc.results`` at every calculation; with a feature density (a model
    file that holds one, or ``feature_density=``) ``mahalanobis`` (``[n_atoms]``) too.

    Args:
      potential: the potential.
      params: its parameters; default ``potential.init(jax.random.key(0), system)`` on the
        first structure seen. Assigning ``calc.params`` (or ``calc.set(params=...)``) later
        discards cached results; it never recompiles.
      dtype: float dtype of the System arrays (default: JAX's default float).
      skin: Verlet skin, Å: edges are built for ``cutoff + skin`` and reused while no atom
        has moved more than ``skin / 2`` (0 rebuilds at every call).
      min_atoms, min_edges: smallest bucket sizes (padding targets grow by 25 % per bucket).
      feature_density: a :class:`jaxpot.uncertainty.distance.FeatureDensity` of the training
        set's atomic features (:meth:`from_file` reads the model file's).

    Attributes:
      potential, params: as given.
      n_compiles: number of distinct padded shapes this calculator evaluated (each compiles
        at most once per process, shared with every calculator of the same model and dtype).
      n_neighbor_builds: host neighbour-list builds so far (the rest reused the skin).

    A calculator pickles (with ``Atoms``, for multiprocessing) as the potential's config and
    its params as NumPy arrays, like a model file; the potential must be registered.

    Example:
      >>> from ase.build import bulk
      >>> from jaxpot.potentials import lennard_jones
      >>> atoms = bulk("Ar", "fcc", a=5.26)
      >>> atoms.calc = Calculator(lennard_jones(3.4, 0.0104, 8.5))
      >>> round(atoms.get_potential_energy(), 2)
      -0.08
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies",
                              "charges"]
    nolabel = True

    def __init__(self, potential: Potential, params=None, *, dtype=None, skin: float = 0.5,
                 min_atoms: int = 8, min_edges: int = 64, feature_density=None, **kwargs):
        if not isinstance(potential, Potential):
            raise TypeError(f"Calculator needs a jaxpot Potential, got {type(potential).__name__}")
        if not (np.isfinite(skin) and skin >= 0):
            raise ValueError(f"Calculator: skin must be a finite distance >= 0 Å, got {skin!r}")
        self.potential = potential
        self._params = params
        self.dtype = dtype
        self.skin = float(skin)
        self.min_atoms = int(min_atoms)
        self.min_edges = int(min_edges)
        self._shapes: set[tuple[int, int]] = set()
        self._edges: dict | None = None
        self.n_neighbor_builds = 0
        self._density = feature_density
        self._score = self._score_fn()
        super().__init__(**kwargs)
        self.implemented_properties = self._properties(potential)

    def _score_fn(self):
        if self._density is None:
            return None
        from jaxpot.uncertainty.distance import mahalanobis

        return jax.jit(mahalanobis(self.potential, self._density))

    @staticmethod
    def _properties(potential: Potential) -> list[str]:
        names = ["energy", "free_energy", "forces", "stress"]
        if potential.atomic is not None and "energy" in potential.outputs:
            names.append("energies")
        if potential.atomic is not None and "charges" in potential.outputs:
            names.append("charges")
        return names

    @classmethod
    def from_file(cls, path, **kwargs) -> Calculator:
        """A calculator for a model file written by :func:`jaxpot.save_model`."""
        from jaxpot.uncertainty.distance import read_density

        potential, params = load_model(path)
        if "feature_density" not in kwargs:
            kwargs["feature_density"] = read_density(path)
        return cls(potential, params, **kwargs)

    # ------------------------------------------------------------------ parameters
    @property
    def params(self):
        """The potential's parameters; assigning new ones discards cached results."""
        return self._params

    @params.setter
    def params(self, value) -> None:
        self._params = value
        self.results = {}

    def set(self, **kwargs):
        """ASE's ``set``; ``params=...`` replaces the parameters (and discards results)."""
        if "params" in kwargs:
            self.params = kwargs.pop("params")
        return super().set(**kwargs)

    @property
    def n_compiles(self) -> int:
        """Number of distinct ``(n_atoms, n_edges)`` padded shapes evaluated."""
        return len(self._shapes)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        config = self.potential.config
        if not _registered(config):
            raise TypeError(
                f"cannot pickle a Calculator for potential {config.get('name')!r}: it is not "
                "registered, so it could not be rebuilt from its config") from None
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("potential", "_params", "_edges", "_score")}
        state["potential_config"] = json.loads(json.dumps(config, default=_json_default))
        state["params_numpy"] = (None if self._params is None
                                 else jax.tree.map(np.asarray, self._params))
        state["dtype"] = None if self.dtype is None else np.dtype(self.dtype).name
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        potential = from_config(state.pop("potential_config"))
        params = state.pop("params_numpy")
        self.__dict__.update(state)
        self.potential = potential
        self._params = params
        self._edges = None
        self._score = self._score_fn()

    # ------------------------------------------------------------------ evaluation
    def system(self, atoms) -> System:
        """The padded :class:`~jaxpot.System` (edges up to ``cutoff + skin``) for ``atoms``."""
        return self._build(atoms)["system"]

    def _where(self, atoms) -> str:
        return f"structure {atoms.get_chemical_formula()}"

    def _build(self, atoms) -> dict:
        """Wrap, list edges for ``cutoff + skin`` on the host, pad to buckets, put on device."""
        positions = atoms.get_positions()
        numbers = atoms.get_atomic_numbers()
        cell = np.asarray(atoms.get_cell(), np.float64)
        pbc = np.asarray(atoms.get_pbc(), bool)
        masses = atoms.get_masses()
        where = self._where(atoms)
        validate_arrays(positions, numbers, cell, pbc, masses=masses, where=where)
        check_species(self.potential, numbers, where=where)
        offsets = _host_offsets(positions, cell, pbc)
        local = positions - offsets
        receivers, senders, shifts = find_edges(local, cell, pbc,
                                                self.potential.cutoff + self.skin, where=where)
        arrays = pad_arrays(local, numbers, cell=cell, pbc=pbc, masses=masses,
                            receivers=receivers, senders=senders, shifts=shifts,
                            n_atoms=_bucket_size(len(atoms), self.min_atoms),
                            n_edges=_bucket_size(receivers.size, self.min_edges),
                            dtype=self.dtype, where=where)
        self.n_neighbor_builds += 1
        return {"system": System.from_padded(arrays), "reference": positions.copy(),
                "offsets": offsets, "numbers": numbers.copy(), "cell": cell, "pbc": pbc,
                "masses": masses.copy(), "dtype": arrays["positions"].dtype}

    def _reusable(self, atoms) -> bool:
        """Same cell, numbers, masses and pbc, and no atom moved more than skin/2."""
        edges = self._edges
        if edges is None or self.skin <= 0 or len(atoms) != len(edges["numbers"]):
            return False
        positions = atoms.get_positions()
        if not (np.array_equal(atoms.get_atomic_numbers(), edges["numbers"])
                and np.array_equal(np.asarray(atoms.get_pbc(), bool), edges["pbc"])
                and np.array_equal(np.asarray(atoms.get_cell(), np.float64), edges["cell"])
                and np.array_equal(atoms.get_masses(), edges["masses"])
                and np.all(np.isfinite(positions))):
            return False
        moved = np.einsum("ij,ij->i", positions - edges["reference"],
                          positions - edges["reference"])
        return bool(moved.max() < (0.5 * self.skin) ** 2)

    def _current_system(self, atoms) -> System:
        if self._reusable(atoms):
            edges = self._edges
            system = edges["system"]
            local = np.zeros((system.n_atoms, 3), edges["dtype"])
            local[: len(atoms)] = atoms.get_positions() - edges["offsets"]
            return system.replace(positions=jax.device_put(local))
        self._edges = None  # a failed build must not leave a stale list behind
        self._edges = self._build(atoms)
        return self._edges["system"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Compute energy, forces, stress (cells with volume) and per-atom outputs if asked."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        has_volume = atoms.cell.rank == 3 and abs(atoms.cell.volume) > 0
        if "stress" in properties and not has_volume:
            raise PropertyNotImplementedError(
                "stress needs a cell with non-zero volume (this structure has cell "
                f"{atoms.cell.tolist()})"
            )
        if atoms.pbc.any():  # a cell longer than the model's lattice sums were made for
            self.potential = fit_cells(self.potential, [atoms.cell.array])
        system = self._current_system(atoms)
        if self._params is None:
            self._params = self.potential.init(jax.random.key(0), system)
        with_atomic = bool({"energies", "charges"} & set(properties))
        fn = _evaluate(self.potential, np.dtype(system.positions.dtype).name, with_atomic)
        self._shapes.add((system.n_atoms, system.n_edges))
        out = jax.device_get(fn(self._params, system))
        if self._score is not None:
            out["mahalanobis"] = jax.device_get(self._score(self._params, system))
        self.results = self._results(atoms, out, has_volume)

    def _results(self, atoms, out: dict, has_volume: bool) -> dict:
        n = len(atoms)
        energy = float(out["energy"])
        if not np.isfinite(energy):
            raise ValueError(f"{self._where(atoms)}: the potential returned a non-finite "
                             f"energy ({energy})")
        results = {"energy": energy, "free_energy": energy,
                   "forces": np.asarray(out["forces"], np.float64)[:n].copy()}
        if has_volume:
            results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(out["stress"], np.float64))
        if "atomic_energy" in out:
            results["energies"] = np.asarray(out["atomic_energy"], np.float64)[:n].copy()
        if "atomic_charges" in out:
            results["charges"] = np.asarray(out["atomic_charges"], np.float64)[:n].copy()
        if "energy_std" in out:
            results["energy_std"] = float(out["energy_std"])
        for k in ("forces_std", "mahalanobis"):
            if k in out:
                results[k] = np.asarray(out[k], np.float64)[:n].copy()
        return results


