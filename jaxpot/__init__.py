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
