"""D3(BJ) benchmark: jaxpot's ``d3`` against the ``dftd3`` package, in one process.

Two structures: a molecule (C60 with a few small molecules around it) and a ~500-atom periodic
cell (rattled, slightly sheared rocksalt NaCl, 4×4×4 conventional cells = 512 atoms). Both
codes evaluate the two-body D3(BJ)-PBE energy, forces and (periodic) stress with the same
real-space cutoffs (``--cutoff`` and ``--cn-cutoff`` in bohr; dftd3 set with
``set_realspace_cutoff``, jaxpot with ``shift=False``). Agreement is checked first, then both
are timed after compilation, interleaved round by round so that both see the same load; the
median over ``--rounds`` is reported with the ratio dftd3 / jaxpot.

jaxpot's time is the jitted energy + forces + stress on a prebuilt neighbour list; the host
neighbour-list build (needed once per list, not per MD step with a skin) is timed separately.
dftd3's time is one ``get_dispersion(grad=True)`` call, which enumerates its lattice
translations itself.

Usage::

    python bench/dispersion.py                 # 30 / 20 bohr cutoffs, 5 rounds
    python bench/dispersion.py --cutoff 60 --cn-cutoff 40   # dftd3's defaults
    python bench/dispersion.py --quick         # tiny smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from ase.units import Bohr, Hartree  # noqa: E402

from jaxpot.potential import energy_forces_stress  # noqa: E402
from jaxpot.potentials.dispersion import d3  # noqa: E402
from jaxpot.system import System  # noqa: E402


def structures(quick: bool):
    """The molecule and the periodic cell."""
    mol = molecule("C60")
    for k, name in enumerate(("H2O", "NH3", "CH4", "CH3OH")):
        other = molecule(name)
        other.positions += [8.0 * (-1) ** k, 2.0 * k, 1.0]
        mol += other
    mol.rattle(0.05, seed=1)
    reps = (2, 2, 2) if quick else (4, 4, 4)
    cell = bulk("NaCl", "rocksalt", a=5.6, cubic=True).repeat(reps)
    cell.set_cell(cell.cell @ (np.eye(3) + [[0, 0.02, 0], [0, 0, 0.01], [0, 0, 0]]),
                  scale_atoms=True)
    cell.rattle(0.05, seed=2)
    return {"molecule": mol, "periodic": cell}


def dftd3_call(atoms, cutoff, cn_cutoff):
    """A function computing dftd3's energy (eV), forces (eV/Å) and stress (eV/Å³)."""
    from dftd3.interface import DispersionModel, RationalDampingParam

    periodic = bool(atoms.pbc.all())
    model = DispersionModel(atoms.numbers, atoms.positions / Bohr,
                            lattice=np.asarray(atoms.cell) / Bohr if periodic else None,
                            periodic=atoms.pbc if periodic else None)
    model.set_realspace_cutoff(cutoff, cutoff, cn_cutoff)
    param = RationalDampingParam(method="pbe")
    volume = atoms.get_volume() if periodic else 1.0

    def run():
        r = model.get_dispersion(param, grad=True)
        return (float(r["energy"]) * Hartree, -r["gradient"] * Hartree / Bohr,
                r["virial"] * Hartree / volume if periodic else np.zeros((3, 3)))

    return run


def jaxpot_call(atoms, cutoff, cn_cutoff):
    pot = d3("pbe", shift=False, cutoff=cutoff * Bohr, cn_cutoff=cn_cutoff * Bohr,
             species=sorted(set(atoms.numbers)))
    t0 = time.perf_counter()
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    t_list = time.perf_counter() - t0
    fn = jax.jit(energy_forces_stress(pot))
    params = pot.init(None, system)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, system))
    t_compile = time.perf_counter() - t0

    def run():
        e, f, s = jax.block_until_ready(fn(params, system))
        return float(e), np.asarray(f), np.asarray(s)

    return run, t_list, t_compile, system.n_edges


def bench(name, atoms, args):
    ref = dftd3_call(atoms, args.cutoff, args.cn_cutoff)
    ours, t_list, t_compile, n_edges = jaxpot_call(atoms, args.cutoff, args.cn_cutoff)
    (e0, f0, s0), (e1, f1, s1) = ref(), ours()
    times = {"dftd3": [], "jaxpot": []}
    for _ in range(args.rounds):
        for label, fn in (("dftd3", ref), ("jaxpot", ours)):
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    t_ref, t_ours = (statistics.median(times[k]) for k in ("dftd3", "jaxpot"))
    print(f"{name:9s} {len(atoms):5d} atoms {n_edges:8d} edges | |dE| {abs(e1 - e0):.1e} eV "
          f"|dF| {np.abs(f1 - f0).max():.1e} eV/Å |dS| {np.abs(s1 - s0).max():.1e} eV/Å³ | "
          f"dftd3 {1e3 * t_ref:8.1f} ms  jaxpot {1e3 * t_ours:8.1f} ms  ratio "
          f"{t_ref / t_ours:5.2f}x | list {1e3 * t_list:.0f} ms, compile {t_compile:.1f} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cutoff", type=float, default=30.0, help="two-body cutoff, bohr")
    ap.add_argument("--cn-cutoff", type=float, default=20.0, help="CN cutoff, bohr")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.cutoff, args.cn_cutoff, args.rounds = 15.0, 10.0, 1
    print(f"D3(BJ)-PBE two-body, energy+forces+stress, float64, cutoffs {args.cutoff:g} / "
          f"{args.cn_cutoff:g} bohr, {jax.devices()[0].platform}, median of {args.rounds}")
    for name, atoms in structures(args.quick).items():
        bench(name, atoms, args)


if __name__ == "__main__":
    main()
