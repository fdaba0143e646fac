"""Thermal expansion of copper with EMT: jaxpot NPT (stochastic cell rescaling) vs ASE's
``IsotropicMTKNPT`` (ASE's own EMT calculator), at 300 K and 900 K and zero pressure.

Both start from the same fcc supercell (a = 3.6 Å; ``--cells`` 4 → 256 atoms), thermalize,
then average the lattice constant a = (V / n_cells³)^(1/3) over the production run; the error
bars are block averages (10 blocks). jaxpot uses ``jaxpot.potentials.emt`` (ASE's EMT ported to
a jitted Potential). Both codes are timed per step in the same run (after compilation).

Usage: ``python bench/npt_cu.py [--cells 4] [--steps 20000] [--equil 4000] [--dt 2]``
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from ase import units as ase_units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.nose_hoover_chain import IsotropicMTKNPT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from jaxpot import System, md
from jaxpot.potentials.emt import emt

jax.config.update("jax_enable_x64", True)


def _blocks(x, n=10):
    means = np.array([b.mean() for b in np.array_split(np.asarray(x), n)])
    return float(np.mean(x)), float(means.std(ddof=1) / np.sqrt(n))


def run_jaxpot(kelvin, cells, steps, equil, dt):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(cells)
    system = System.from_ase(atoms)
    pot = emt()
    res = md.simulate(pot, pot.init(None, system), system, ensemble="npt", dt_fs=dt,
                      temperature_kelvin=kelvin, steps=steps + equil, log_every=20,
                      pressure_gpa=0.0, tau_p_fs=1000.0, compressibility_per_gpa=0.007,
                      friction_per_fs=0.01, thermalize_ps=1.0)
    keep = res.log["step"] > equil
    a = (res.log["volume_a3"][keep] / cells**3) ** (1 / 3)
    return _blocks(a), res.wall_s / (steps + equil)


def run_ase(kelvin, cells, steps, equil, dt):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(cells)
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=kelvin, rng=np.random.default_rng(1))
    Stationary(atoms)
    dyn = IsotropicMTKNPT(atoms, timestep=dt * ase_units.fs, temperature_K=kelvin,
                          pressure_au=0.0, tdamp=100 * dt * ase_units.fs,
                          pdamp=1000 * dt * ase_units.fs)
    dyn.run(equil)
    a = []
    t0 = time.perf_counter()
    for _ in range(steps // 20):
        dyn.run(20)
        a.append((atoms.get_volume() / cells**3) ** (1 / 3))
    return _blocks(a), (time.perf_counter() - t0) / steps


def main(cells: int = 4, steps: int = 20000, equil: int = 4000, dt: float = 2.0):
    for kelvin in (300.0, 900.0):
        (aj, ej), tj = run_jaxpot(kelvin, cells, steps, equil, dt)
        (aa, ea), ta = run_ase(kelvin, cells, steps, equil, dt)
        print(f"{kelvin:.0f} K, {4 * cells**3} atoms: a(jaxpot) = {aj:.5f} ± {ej:.5f} Å, "
              f"a(ASE MTK) = {aa:.5f} ± {ea:.5f} Å, difference {aj - aa:+.5f} Å "
              f"({abs(aj - aa) / max(np.hypot(ej, ea), 1e-12):.1f} σ); time per step "
              f"ASE/jaxpot {ta / tj:.1f} ({tj * 1e3:.2f} vs {ta * 1e3:.2f} ms)", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--equil", type=int, default=4000)
    ap.add_argument("--dt", type=float, default=2.0)
    a = ap.parse_args()
    main(a.cells, a.steps, a.equil, a.dt)
