"""Cell relaxation: jaxpot's jitted FIRE + Fréchet cell vs ASE's FIRE + FrechetCellFilter.

Both relax the same rattled, strained Lennard-Jones copper-like fcc cell (σ = 2.3 Å,
ε = 0.4 eV, cutoff 5 Å; ASE's ``LennardJones`` and ``jaxpot.potentials.lennard_jones`` shift
the pair energy the same way) to ``fmax`` in float64. Printed: steps (they should be equal:
jaxpot follows ASE's FIRE step for step), the largest lattice-parameter and per-atom energy
differences, ASE's time, jaxpot's time after compilation, the ratio, and the compile time.

Usage::

    python bench/relax.py                 # 2x2x2 conventional cells (32 atoms), fmax 1e-4
    python bench/relax.py --repeat 3      # 108 atoms
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from jaxpot import System, potentials
from jaxpot.md.relax import relax


def main(repeat: int = 2, fmax: float = 1e-4) -> dict:
    jax.config.update("jax_enable_x64", True)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(repeat)
    atoms.set_cell(atoms.cell @ np.array([[1.02, 0.01, 0], [0, 0.99, 0.02], [0, 0, 1.01]]),
                   scale_atoms=True)
    atoms.rattle(0.03, seed=2)
    ref = atoms.copy()
    ref.calc = LennardJones(sigma=2.3, epsilon=0.4, rc=5.0)
    opt = FIRE(FrechetCellFilter(ref), logfile=None)
    t0 = time.perf_counter()
    opt.run(fmax=fmax, steps=5000)
    t_ase = time.perf_counter() - t0
    pot = potentials.lennard_jones(sigma=2.3, epsilon=0.4, cutoff=5.0)
    system = System.from_ase(atoms)
    t0 = time.perf_counter()
    relax(pot, pot.init(None, None), system, fmax=fmax, max_steps=5000)
    t_first = time.perf_counter() - t0  # compile + run
    t0 = time.perf_counter()
    out, info = relax(pot, pot.init(None, None), system, fmax=fmax,
                      max_steps=5000)  # the cached program
    t_jax = time.perf_counter() - t0
    n = len(atoms)
    row = {"atoms": n, "steps_ase": opt.nsteps, "steps_jaxpot": info["steps"],
           "max_cellpar_diff": float(np.abs(out.to_ase().cell.cellpar()
                                            - ref.cell.cellpar()).max()),
           "energy_diff_per_atom": abs(info["energy"] - ref.get_potential_energy()) / n,
           "ase_s": t_ase, "jaxpot_s": t_jax, "compile_s": t_first - t_jax,
           "ratio": t_ase / t_jax}
    print(row)
    return row


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--fmax", type=float, default=1e-4)
    a = ap.parse_args()
    main(a.repeat, a.fmax)
