"""``jaxpot properties`` (registered into :mod:`jaxpot.cli`).

::

    jaxpot properties MODEL STRUCTURE [--what eos,elastic,phonons,vibrations,vacancy]
                      [--relax-cell] [--supercell N] [--temperature K] [-o out.json]

Prints one JSON object with a section per requested property (units in the key names:
``_GPa``, ``_eV``, ``_A3``, ``_cm1``, ``_THz``); ``-o`` also writes it to a file (atomically,
never over an input). The default ``--what`` is ``eos,elastic,phonons`` for a periodic structure
and ``vibrations`` for a molecule. Everything runs in float64.
"""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["register", "compute_properties", "PERIODIC", "MOLECULAR"]

PERIODIC = ("eos", "elastic", "phonons", "vibrations", "vacancy")
"""Properties of a periodic structure (``vibrations`` = Γ-point modes of the given cell)."""
MOLECULAR = ("vibrations",)
"""Properties of a non-periodic structure."""


def _what(text: str | None, periodic: bool) -> list[str]:
    allowed = PERIODIC if periodic else MOLECULAR
    if text is None:
        return ["eos", "elastic", "phonons"] if periodic else ["vibrations"]
    items = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in items if w not in allowed]
    if bad or not items:
        kind = "a periodic" if periodic else "a non-periodic"
        raise ValueError(f"--what: {', '.join(bad) or 'nothing'} not available for {kind} "
                         f"structure; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def _vibrations(potential, params, system, temperature: float) -> dict:
    from jaxpot.analysis import vibrations as vib

    out = vib.vibrations(potential, params, system)
    n = int(out.n_modes)
    f = np.asarray(out.frequencies)[:n]
    th = vib.harmonic_thermo(f, temperature)
    return {"frequencies_cm1": f.tolist(), "n_imaginary": int(np.sum(f < 0)),
            "zpe_eV": th.zpe, "temperature_K": temperature,
            "free_energy_eV": th.free_energy, "entropy_eV_per_K": th.entropy,
            "internal_energy_eV": th.energy}


def _elastic(potential, params, system) -> dict:
    from jaxpot.analysis import crystal

    c = crystal.elastic_tensor(potential, params, system)
    m = crystal.moduli(0.5 * (c["C"] + c["C"].T))
    return {"C_GPa": c["C"].tolist(), "C_clamped_GPa": c["C_clamped"].tolist(),
            "residual_stress_GPa": c["stress"].tolist(),
            **{f"{k}_GPa": float(v) for k, v in m.items() if k != "S"}}


def _phonons(potential, params, atoms, supercell: int) -> dict:
    from jaxpot.analysis import phonons

    ph = phonons.phonopy_from_model(potential, params, atoms, [supercell] * 3)
    bs = phonons.band_structure(ph, atoms, npoints=60)
    special = {}
    for label, x in zip(bs["labels"], bs["label_x"], strict=True):
        k = int(np.argmin(np.abs(bs["x"] - x)))
        special.setdefault(label, bs["frequencies"][k].tolist())
    f = bs["frequencies"]
    return {"supercell": [supercell] * 3, "frequencies_at_special_points_THz": special,
            "max_frequency_THz": float(f.max()), "min_frequency_THz": float(f.min())}


def compute_properties(potential, params, atoms, what, *, relax_cell: bool = False,
                       supercell: int = 3, temperature: float = 298.15) -> dict:
    """The properties ``what`` of ``atoms`` as a JSON-ready dict (what the CLI prints).

    Args:
      potential, params: the model.
      atoms: ``ase.Atoms``.
      what: names from :data:`PERIODIC` or :data:`MOLECULAR`.
      relax_cell: relax positions and cell (:func:`jaxpot.md.relax.relax`, zero pressure)
        before anything else; otherwise only positions are relaxed for vibrations.
      supercell: repeats of the cell along each axis for phonons and the vacancy.
      temperature: K, for the harmonic free energy and entropy.
    """
    from jaxpot.analysis import crystal
    from jaxpot.md.relax import relax
    from jaxpot.models.cells import CELL_MARGIN, fit_cells
    from jaxpot.system import System

    periodic = bool(np.all(atoms.pbc))
    if atoms.pbc.any():  # lattice sums for the strained cells and the phonon/vacancy supercell
        potential = fit_cells(potential, [CELL_MARGIN * atoms.cell.array,
                                          max(supercell, 1) * atoms.cell.array])
    system = System.from_ase(atoms, cutoff=potential.cutoff)
    result: dict = {"formula": atoms.get_chemical_formula(), "n_atoms": len(atoms)}
    if relax_cell or "vibrations" in what:
        system, info = relax(potential, params, system, cell=relax_cell and periodic,
                             fmax=1e-4, max_steps=5000)
        result["relaxation"] = {"energy_eV": info["energy"], "fmax_eV_per_A": info["fmax"],
                                "converged": bool(info["converged"]), "cell_relaxed":
                                relax_cell and periodic}
        atoms = system.to_ase()
        system = System.from_ase(atoms, cutoff=potential.cutoff)
    for name in what:
        if name == "vibrations":
            result[name] = _vibrations(potential, params, system, temperature)
        elif name == "elastic":
            result[name] = _elastic(potential, params, system)
        elif name == "phonons":
            result[name] = _phonons(potential, params, atoms, supercell)
        elif name == "eos":
            e = crystal.equation_of_state(potential, params, atoms, relax=len(atoms) > 1)
            result[name] = {"E0_eV": e["E0"], "V0_A3": e["V0"], "B_GPa": e["B"],
                            "B_prime": e["B_prime"], "V0_per_atom_A3": e["V0_per_atom"],
                            "E0_per_atom_eV": e["E0_per_atom"], "fit_rms_eV": e["rms"],
                            "volumes_A3": e["volumes"].tolist(),
                            "energies_eV": e["energies"].tolist()}
        elif name == "vacancy":
            v = crystal.vacancy_formation_energy(potential, params, atoms.repeat(supercell))
            result[name] = {"E_f_eV": v["E_f"], "E_f_unrelaxed_eV": v["E_unrelaxed"],
                            "supercell": [supercell] * 3}
    return result


def _load(args):
    from jaxpot.io import read_structure
    from jaxpot.potential import check_species
    from jaxpot.serialization import load_model, nonfinite_params

    potential, params = load_model(args.model)
    bad = nonfinite_params(params)
    if bad:
        raise ValueError(f"model {args.model!r}: parameter(s) {', '.join(bad[:5])} hold NaN or "
                         f"infinity")
    atoms = read_structure(args.structure)
    where = f"structure {args.structure!r} ({atoms.get_chemical_formula()})"
    check_species(potential, atoms.get_atomic_numbers(), where=where)
    if any(atoms.pbc) and not all(atoms.pbc):
        raise ValueError(f"{where}: periodic along some directions only (pbc="
                         f"{atoms.pbc.tolist()}); properties need a crystal (all periodic) or "
                         f"a molecule (none)")
    return potential, params, atoms


def _check_args(args) -> None:
    from jaxpot.files import check_outputs

    if args.supercell < 1:
        raise ValueError(f"--supercell must be >= 1, got {args.supercell}")
    if not (np.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature must be >= 0 K, got {args.temperature}")
    if args.output is not None:
        if os.path.isdir(args.output):
            raise ValueError(f"-o {args.output!r} is a directory; give a file name")
        check_outputs({"-o": args.output}, {"MODEL": args.model, "STRUCTURE": args.structure})


def _cmd_properties(args) -> int:
    import jax

    from jaxpot.files import atomic_write_text

    _check_args(args)
    with jax.enable_x64(True):
        potential, params, atoms = _load(args)
        what = _what(args.what, bool(np.all(atoms.pbc)))
        result = compute_properties(potential, params, atoms, what, relax_cell=args.relax_cell,
                                    supercell=args.supercell, temperature=args.temperature)
    text = json.dumps(result, indent=2, allow_nan=False)
    if args.output is not None:
        atomic_write_text(args.output, text + "\n")
    print(text)
    return 0


def register(subparsers) -> None:
    """Add the ``properties`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "properties", help="vibrations, phonons, EOS, elastic constants of a structure",
        description="Compute properties of STRUCTURE with MODEL and print them as JSON: "
                    "eos (Birch-Murnaghan E0, V0, B, B'), elastic (C_ij and VRH moduli, "
                    "relaxed-ion), phonons (exact force constants through phonopy), "
                    "vibrations (frequencies, ZPE, harmonic free energy), vacancy.")
    p.add_argument("model", metavar="MODEL", help="model file")
    p.add_argument("structure", metavar="STRUCTURE", help="structure file (any ASE format)")
    p.add_argument("--what", metavar="LIST",
                   help=f"comma-separated, from {','.join(PERIODIC)} (periodic) or vibrations "
                        f"(molecule); default eos,elastic,phonons or vibrations")
    p.add_argument("--relax-cell", action="store_true",
                   help="relax positions and cell at zero pressure first")
    p.add_argument("--supercell", type=int, default=3,
                   help="repeats per axis for phonons and the vacancy (default 3)")
    p.add_argument("--temperature", type=float, default=298.15, metavar="K",
                   help="temperature for the harmonic free energy (default 298.15)")
    p.add_argument("-o", "--output", metavar="FILE.json", help="also write the JSON here")
    p.set_defaults(func=_cmd_properties)
