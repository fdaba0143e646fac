"""CLI plugin: ``jaxpot relax MODEL STRUCTURE [--cell] [--fmax] [--pressure-gpa] -o OUT.xyz``.

Relaxes the structure with :func:`jaxpot.md.relax` (FIRE; with ``--cell`` the cell too, as
ASE's ``FrechetCellFilter``), writes the relaxed structure (energy, forces and stress attached)
to ``OUT.xyz`` atomically, and prints a JSON summary on stdout: energy, energy per atom, the
cell, lattice parameters, the largest force, the number of steps and whether it converged.
Exit code 0 when converged, 3 when the step limit was reached first, 2 for bad input.
"""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["register"]


def register(subparsers) -> None:
    """Add the ``relax`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "relax", help="relax a structure (positions, and with --cell the cell) with FIRE",
        description="Relax positions (and the cell with --cell) with FIRE until every force "
                    "is below --fmax; the jitted counterpart of ASE's FIRE + "
                    "FrechetCellFilter. Prints a JSON summary on stdout.")
    p.add_argument("model", metavar="MODEL", help="model file (jaxpot train output)")
    p.add_argument("structure", metavar="STRUCTURE", help="structure file (any ASE format)")
    p.add_argument("--cell", action="store_true", help="relax the cell too")
    p.add_argument("--fmax", type=float, default=0.05, metavar="eV/Å",
                   help="convergence threshold on the largest force (default 0.05)")
    p.add_argument("--pressure-gpa", type=float, default=0.0, metavar="GPa",
                   help="target hydrostatic pressure with --cell (default 0)")
    p.add_argument("--steps", type=int, default=1000, help="largest number of FIRE steps")
    p.add_argument("-o", "--out", required=True, metavar="OUT.xyz",
                   help="relaxed structure (extxyz), written atomically")
    p.set_defaults(func=_cmd_relax)


def _check_args(args) -> None:
    from jaxpot.files import check_outputs

    if not (np.isfinite(args.fmax) and args.fmax > 0):
        raise ValueError(f"--fmax must be a number > 0 eV/Å, got {args.fmax!r}")
    if not np.isfinite(args.pressure_gpa):
        raise ValueError(f"--pressure-gpa must be finite, got {args.pressure_gpa!r}")
    if args.pressure_gpa != 0 and not args.cell:
        raise ValueError("--pressure-gpa needs --cell (a fixed cell feels no pressure)")
    if args.steps < 0:
        raise ValueError(f"--steps must be ≥ 0, got {args.steps}")
    for name, path in (("MODEL", args.model), ("STRUCTURE", args.structure)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: no such file {path!r}")
    directory = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--out: output directory {directory!r} does not exist")
    check_outputs({"--out": args.out}, {"MODEL": args.model, "STRUCTURE": args.structure})


def _cmd_relax(args) -> int:
    from ase.calculators.singlepoint import SinglePointCalculator

    from jaxpot import io
    from jaxpot.md.relax import relax
    from jaxpot.models.cells import CELL_MARGIN, fit_cells
    from jaxpot.potential import check_species, energy_forces_stress
    from jaxpot.serialization import load_model
    from jaxpot.system import System

    _check_args(args)
    potential, params = load_model(args.model)
    atoms = io.read_structure(args.structure)
    where = f"structure {args.structure!r} ({atoms.get_chemical_formula()})"
    check_species(potential, atoms.get_atomic_numbers(), where=where)
    if args.cell and not all(atoms.pbc):
        raise ValueError(f"{where}: --cell needs a cell periodic along every direction "
                         f"(pbc={atoms.pbc.tolist()})")
    if atoms.pbc.any():  # lattice sums sized for the cell, with room for a cell relaxation
        potential = fit_cells(potential, [CELL_MARGIN * atoms.cell.array])
    system = System.from_ase(atoms, cutoff=float(potential.cutoff), where=where)
    relaxed, info = relax(potential, params, system, cell=args.cell, fmax=args.fmax,
                          pressure_gpa=args.pressure_gpa, max_steps=args.steps)
    e, f, sigma = energy_forces_stress(potential)(params, relaxed)
    out = relaxed.to_ase()
    n = len(out)
    voigt = np.asarray(sigma)[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    out.calc = SinglePointCalculator(out, energy=float(e), forces=np.asarray(f)[:n],
                                     stress=voigt if all(out.pbc) else None)
    io.write(args.out, out)
    summary = {"energy_ev": info["energy"], "energy_per_atom_ev": info["energy"] / n,
               "enthalpy_ev": info["enthalpy"],
               "cell": np.asarray(out.cell).tolist(),
               "lattice_parameters": out.cell.cellpar().tolist(),
               "volume_a3": float(out.get_volume()) if all(out.pbc) else None,
               "max_force_ev_a": info["fmax"], "steps": info["steps"],
               "converged": bool(info["converged"]), "out": args.out}
    print(json.dumps(summary, indent=2, allow_nan=False))
    return 0 if info["converged"] else 3
