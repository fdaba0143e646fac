"""Molecular dynamics: integrators, the fused run loop, FIRE relaxation.

Example:
  >>> import numpy as np
  >>> from ase.build import bulk
  >>> from jaxpot import md, potentials, System
  >>> pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
  >>> system = System.from_ase(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3))
  >>> res = md.simulate(pot, pot.init(None, system), system, dt_fs=5.0,
  ...                   temperature_kelvin=40.0, steps=20, log_every=10)
  >>> sorted(res.log)[:3]
  ['kinetic_energy_ev', 'potential_energy_ev', 'pressure_gpa']

Building blocks: ``md.nve / md.langevin / md.nose_hoover`` return ``Integrator(init, step)``
pairs whose state carries a :class:`jaxpot.neighbors.Neighbors` list updated every step;
:func:`simulate` fuses steps in jitted ``lax.scan`` blocks and never computes a step on an
overflowed list; :func:`fire` relaxes positions.

Hooks for growth: integrators call a :class:`ForceProvider` (``md.provider(potential, params)``:
energy, forces, stress and per-atom outputs) instead of closing over the potential; the state
carries the bath ``kT`` (and a target ``pressure``) so drivers can ramp them; ``simulate`` takes
``observers`` (traced at log points) and a ``stop`` predicate (host, between blocks), returns the
trajectory as arrays (:class:`Trajectory`), and raises :class:`SimulationUnstable` when a run
blows up. :mod:`jaxpot.md.blocks` holds the overflow → reallocate → redo loop shared by
``simulate``, ``fire`` and :mod:`jaxpot.testing`.

Not provided yet: NPT. JAX MD's ``npt_nose_hoover`` integrates fractional coordinates in a
``space.periodic_general`` box that changes every step, while jaxpot's jitted cell list fixes its
bin grid at allocation (bins would become narrower than the cutoff as the box shrinks) and its
potentials take Cartesian positions and a cell; bridging the two (fractional wrapper, box-aware
reallocation, barostat pressure from ``energy_forces_stress``) is left for later.
"""

from jaxpot.md.blocks import NeighborKeeper, NeighborListError, run_checked
from jaxpot.md.checks import SimulationUnstable, check_params_finite
from jaxpot.md.forces import ForceOutput, ForceProvider, provider
from jaxpot.md.integrators import (
    Integrator,
    LangevinState,
    NoseHooverState,
    NVEState,
    degrees_of_freedom,
    kinetic_energy,
    langevin,
    maxwell_boltzmann,
    nose_hoover,
    nve,
    remove_net_momentum,
    temperature,
)
from jaxpot.md.minimize import fire
from jaxpot.md.run import ENSEMBLES, MDResult, Observer, StopPredicate, simulate
from jaxpot.md.trajectory import Trajectory, write_trajectory

__all__ = [
    "ENSEMBLES",
    "ForceOutput",
    "ForceProvider",
    "Integrator",
    "LangevinState",
    "MDResult",
    "NVEState",
    "NeighborKeeper",
    "NeighborListError",
    "NoseHooverState",
    "Observer",
    "SimulationUnstable",
    "StopPredicate",
    "Trajectory",
    "check_params_finite",
    "degrees_of_freedom",
    "fire",
    "kinetic_energy",
    "langevin",
    "maxwell_boltzmann",
    "nose_hoover",
    "nve",
    "provider",
    "remove_net_momentum",
    "run_checked",
    "simulate",
    "temperature",
    "write_trajectory",
]
