"""Molecular dynamics: integrators, the fused run loop, NPT, FIRE relaxation.

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
overflowed list; :func:`fire` relaxes positions; :func:`relax.relax` relaxes positions and the
cell (FIRE + ASE's ``FrechetCellFilter`` coordinates); :func:`simulate_replicas` and
:func:`relax_replicas` step many systems together in one vmapped program.

Hooks for growth: integrators call a :class:`ForceProvider` (``md.provider(potential, params)``:
energy, forces, stress and per-atom outputs) instead of closing over the potential; the state
carries the bath ``kT`` (and a target ``pressure``) so drivers can ramp them; ``simulate`` takes
``observers`` (traced at log points) and a ``stop`` predicate (host, between blocks), returns the
trajectory as arrays (:class:`Trajectory`), and raises :class:`SimulationUnstable` when a run
blows up. :mod:`jaxpot.md.blocks` holds the overflow → reallocate → redo loop shared by
``simulate``, ``fire`` and :mod:`jaxpot.testing`.

NPT: ``simulate(ensemble="npt", pressure_gpa=..., cell_dof="iso"|"aniso"|"full",
cell_mask=...)`` runs stochastic cell rescaling (Bernetti & Bussi) with a BAOAB Langevin
thermostat (:mod:`jaxpot.md.npt`); the neighbour list follows the changing cell (its skin test
accounts for the strain since the last rebuild, and a cell the list no longer covers raises its
overflow flag, so the block is redone on a list allocated for the new cell). Martyna–Tobias–Klein
with Nosé–Hoover chains is not provided yet. Start-up: ``thermalize_ps`` (Langevin first) and
``restart`` from a file written by :func:`save_state`.
"""

from jaxpot.md import relax  # the module: md.relax.relax(...)
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
from jaxpot.md.npt import NPTState, c_rescale
from jaxpot.md.replicas import relax_replicas, simulate_replicas
from jaxpot.md.restart import load_state, save_state
from jaxpot.md.run import ENSEMBLES, MDResult, Observer, StopPredicate, simulate
from jaxpot.md.trajectory import Trajectory, TrajectoryWriter, read_trajectory, write_trajectory

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
    "NPTState",
    "Observer",
    "SimulationUnstable",
    "StopPredicate",
    "Trajectory",
    "c_rescale",
    "check_params_finite",
    "degrees_of_freedom",
    "fire",
    "kinetic_energy",
    "langevin",
    "load_state",
    "maxwell_boltzmann",
    "nose_hoover",
    "nve",
    "provider",
    "relax",
    "relax_replicas",
    "remove_net_momentum",
    "run_checked",
    "save_state",
    "simulate",
    "simulate_replicas",
    "temperature",
    "TrajectoryWriter",
    "read_trajectory",
    "write_trajectory",
]
