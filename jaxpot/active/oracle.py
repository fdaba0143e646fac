"""Oracles: whatever labels a structure with reference energies, forces and stresses.

Any ASE calculator is an oracle (EMT, a DFT code, xTB). :func:`make_oracle` accepts

- a string ``"module:Name"`` (or ``"module.Name"``), imported with :mod:`importlib`: a
  calculator class or a factory, called with no arguments (``"ase.calculators.emt:EMT"``);
- an ASE calculator instance;
- a callable of no arguments returning a calculator (a class, a ``functools.partial``);
- a callable of one argument ``atoms -> ase.Atoms`` (labelled) or ``atoms -> dict`` with
  ``energy`` (eV), ``forces`` (``[n, 3]`` eV/Å) and optionally ``stress`` (eV/Å³).

The returned :class:`Oracle` labels copies of the frames it is given and counts its calls.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Oracle", "make_oracle", "labelled"]


class Oracle:
    """Labels structures with a reference method.

    Attributes:
      name: a short description (the spec it came from).
      calls: how many structures it has labelled.
    """

    def __init__(self, label_fn: Callable[[Any], dict], name: str):
        self._label = label_fn
        self.name = name
        self.calls = 0

    def __call__(self, atoms):
        """A copy of ``atoms`` carrying the oracle's energy, forces (and stress for a fully
        periodic cell) as a ``SinglePointCalculator`` (written by extxyz as labels).

        Raises:
          ValueError: the oracle gave no energy or forces, or non-finite values.
        """
        from ase.calculators.singlepoint import SinglePointCalculator

        out = atoms.copy()
        out.calc = None
        values = self._label(atoms.copy())
        self.calls += 1
        energy = values.get("energy")
        forces = values.get("forces")
        if energy is None or forces is None:
            raise ValueError(f"oracle {self.name}: it returned no energy or forces for "
                             f"{atoms.get_chemical_formula()}")
        results = {"energy": float(energy), "forces": np.asarray(forces, np.float64)}
        if values.get("stress") is not None:
            results["stress"] = np.asarray(values["stress"], np.float64)
        bad = [k for k, v in results.items() if not np.all(np.isfinite(v))]
        if bad:
            raise ValueError(f"oracle {self.name}: non-finite {bad} for "
                             f"{atoms.get_chemical_formula()}")
        out.calc = SinglePointCalculator(out, **results)
        return out


def _from_calculator(calc) -> Callable[[Any], dict]:
    def label(atoms):
        atoms.calc = calc
        out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if all(atoms.get_pbc()) and "stress" in getattr(calc, "implemented_properties", ()):
            out["stress"] = atoms.get_stress(voigt=False)
        return out

    return label


def _from_function(fn) -> Callable[[Any], dict]:
    def label(atoms):
        got = fn(atoms)
        if isinstance(got, dict):
            return got
        if got is None or not hasattr(got, "get_potential_energy"):
            raise ValueError(f"oracle function {fn!r} must return a labelled ase.Atoms or a "
                             f"dict of energy/forces/stress, got {type(got).__name__}")
        out = {"energy": got.get_potential_energy(), "forces": got.get_forces()}
        try:
            if all(got.get_pbc()):
                out["stress"] = got.get_stress(voigt=False)
        except Exception:  # noqa: BLE001 - calculators without stress raise many types
            pass
        return out

    return label


def _is_calculator(obj) -> bool:
    return hasattr(obj, "get_potential_energy") and hasattr(obj, "calculate")


def _import(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"oracle {spec!r}: expected 'module:Name' (e.g. "
                         "'ase.calculators.emt:EMT')")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"oracle {spec!r}: cannot import module {module_name!r} ({err})"
                         ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"oracle {spec!r}: module {module_name!r} has no {attr!r}") from None


def _n_required(fn) -> int | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in sig.parameters.values())


def make_oracle(spec) -> Oracle:
    """An :class:`Oracle` from a spec (see the module docstring).

    Raises:
      ValueError: the spec cannot be imported or does not give a calculator or labeller.
    """
    if isinstance(spec, Oracle):
        return spec
    name = spec if isinstance(spec, str) else getattr(spec, "__name__", type(spec).__name__)
    obj = _import(spec) if isinstance(spec, str) else spec
    if _is_calculator(obj) and not inspect.isclass(obj):
        return Oracle(_from_calculator(obj), name)
    if not callable(obj):
        raise ValueError(f"oracle {name!r} is neither an ASE calculator nor callable")
    if inspect.isclass(obj) or _n_required(obj) == 0:
        try:
            calc = obj()
        except Exception as err:  # noqa: BLE001 - report any constructor failure as bad input
            raise ValueError(f"oracle {name!r}: creating the calculator failed: {err}") from None
        if not _is_calculator(calc):
            raise ValueError(f"oracle {name!r} did not give an ASE calculator (got "
                             f"{type(calc).__name__})")
        return Oracle(_from_calculator(calc), name)
    return Oracle(_from_function(obj), name)


def labelled(atoms) -> bool:
    """Whether ``atoms`` carries an energy and forces (in ``info``/``arrays`` or results)."""
    calc = atoms.calc
    results = getattr(calc, "results", {}) if calc is not None else {}
    has_e = "energy" in results or "energy" in atoms.info
    has_f = "forces" in results or "forces" in atoms.arrays
    return bool(has_e and has_f)
