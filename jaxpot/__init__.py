"""jaxpot: machine-learned interatomic potentials and jit-compiled molecular dynamics in JAX."""

from jaxpot import neighbors, potentials, units
from jaxpot.potential import (
    Potential,
    energy_and_forces,
    energy_forces_stress,
    forces,
    from_config,
    hessian,
    stress,
    sum_potentials,
)
from jaxpot.serialization import load_model, read_model_info, save_model
from jaxpot.system import System, stack, unstack

__version__ = "0.1.0"

# Heavier submodules load on first use (``jaxpot.md`` imports JAX MD, which takes seconds).
_LAZY = ("md", "models", "descriptors", "data", "train", "testing", "io", "ase", "nn", "demo")


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"jaxpot.{name}")
    raise AttributeError(f"module 'jaxpot' has no attribute {name!r}")

__all__ = [
    "Potential",
    "System",
    "energy_and_forces",
    "energy_forces_stress",
    "forces",
    "from_config",
    "hessian",
    "load_model",
    "neighbors",
    "potentials",
    "read_model_info",
    "save_model",
    "stack",
    "stress",
    "sum_potentials",
    "units",
    "unstack",
    "__version__",
]
