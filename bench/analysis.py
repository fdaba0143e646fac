"""Analysis benchmarks: jaxpot against the tool a practitioner would otherwise use, same run.

1. RDF: ``jaxpot.analysis.structure.rdf_arrays`` against ``ase.geometry.rdf.get_rdf`` on the
   same frames (a random liquid-density Lennard-Jones-like box, periodic), results compared
   first.
2. PMF from umbrella data: ``jaxpot.analysis.wham.wham`` against pymbar's MBAR
   (``wham.mbar_pmf``, which calls ``pymbar.FES``) on the same synthetic windows.
3. NEB: ``jaxpot.analysis.neb.neb`` against ASE's ``NEB(method="improvedtangent", climb=True)``
   with FIRE, same Morse potential (jaxpot's ASE calculator), images and spring constant.

Every timing is taken after a warm-up call (compilation excluded), median of ``--repeats``;
printed as jaxpot time, peer time and peer/jaxpot (> 1: jaxpot faster).

Usage::

    python bench/analysis.py            # default sizes
    python bench/analysis.py --quick    # a smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)


def _timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_rdf(n_atoms, n_frames, repeats):
    from ase import Atoms
    from ase.geometry.rdf import get_rdf

    from jaxpot.analysis import structure

    rng = np.random.default_rng(0)
    side = (n_atoms / 0.021) ** (1 / 3)
    cell = np.diag([side, side, side])
    x = rng.random((n_frames, n_atoms, 3)) * side
    frames = [Atoms("Ar" * n_atoms, positions=p, cell=cell, pbc=True) for p in x]
    r_max, n_bins = 0.49 * side, 100
    t_j, ours = _timed(lambda: structure.rdf_arrays(x, cell, [18] * n_atoms, r_max=r_max,
                                                    n_bins=n_bins), repeats)
    t_a, ref = _timed(lambda: get_rdf(frames, r_max, n_bins, no_dists=True), repeats)
    err = float(np.abs(ours.total - ref).max())
    return f"RDF {n_atoms} atoms x {n_frames} frames, {n_bins} bins", t_j, t_a, \
        f"max |g - g_ASE| = {err:.1e}"


def bench_wham(n_windows, n_samples, repeats):
    from jaxpot.analysis import wham

    kT, centers = 0.025, np.linspace(-1.6, 1.6, n_windows)
    grid = np.linspace(-2.6, 2.6, 20001)
    rng = np.random.default_rng(1)
    data = []
    for c in centers:
        w = np.exp(-(0.1 * (grid ** 2 - 1) ** 2 + 0.5 * (grid - c) ** 2) / kT)
        cdf = np.cumsum(w)
        data.append(np.interp(rng.random(n_samples) * cdf[-1], cdf, grid))
    data = np.stack(data)
    kw = dict(bins=40, range=(-1.5, 1.5))
    t_j, ours = _timed(lambda: wham.wham(data, centers, 1.0, kT, **kw), repeats)
    t_m, ref = _timed(lambda: wham.mbar_pmf(data, centers, 1.0, kT, **kw), repeats)
    d = ours.F - ref.F
    return f"PMF {n_windows} windows x {n_samples} samples (WHAM vs pymbar MBAR)", t_j, t_m, \
        f"max |F_WHAM - F_MBAR| (offset removed) = {np.nanmax(np.abs(d - np.nanmean(d))):.1e} eV"


def bench_neb(repeats):
    from ase.build import add_adsorbate, fcc100
    from ase.constraints import FixAtoms
    from ase.mep import NEB
    from ase.optimize import BFGS, FIRE

    from jaxpot import System, potentials
    from jaxpot.analysis import neb
    from jaxpot.ase import Calculator

    pot = potentials.morse(D=0.3429, alpha=1.3588, r0=2.866, cutoff=4.5)
    params = pot.init(None, None)
    slab = fcc100("Cu", size=(2, 2, 2), a=3.61, vacuum=6.0)
    add_adsorbate(slab, "Cu", 1.7, "hollow")
    fix = FixAtoms(indices=[a.index for a in slab if a.tag == 2])
    slab.set_constraint(fix)
    initial, final = slab.copy(), slab.copy()
    final.positions[-1] += [slab.cell[0, 0] / 2, 0.0, 0.0]
    for atoms in (initial, final):
        atoms.calc = Calculator(pot, params)
        BFGS(atoms, logfile=None).run(fmax=1e-4)
    n_images = 7
    template = System.from_ase(initial)
    start = neb.interpolate(template, System.from_ase(final), n_images)
    fixed = np.array([a.tag == 2 for a in initial])

    def ours():
        return neb.neb(pot, params, start, template, k_spring=0.1, climb=True, fmax=1e-3,
                       fixed=fixed, max_steps=5000)

    def ase_neb():
        images = [initial.copy() for _ in range(n_images)]
        calc = Calculator(pot, params)
        for im, p in zip(images, start, strict=True):
            im.positions = p
            im.set_constraint(FixAtoms(indices=fix.index))
            im.calc = calc
        band = NEB(images, k=0.1, climb=True, method="improvedtangent",
                   allow_shared_calculator=True)
        FIRE(band, logfile=None).run(fmax=1e-3, steps=5000)
        return np.array([im.get_potential_energy() for im in images])

    t_j, res = _timed(ours, repeats)
    t_a, e_ase = _timed(ase_neb, repeats)
    return (f"NEB Cu(100) adatom hop, {len(initial)} atoms x {n_images} images, Morse", t_j, t_a,
            f"barrier {res.barrier:.6f} vs ASE {e_ase.max() - e_ase[0]:.6f} eV "
            f"({res.steps} FIRE steps)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    q = args.quick
    rows = [bench_rdf(200 if q else 1000, 2 if q else 10, args.repeats),
            bench_wham(9 if q else 17, 500 if q else 5000, args.repeats),
            bench_neb(1 if q else args.repeats)]
    print(f"{'case':<64} {'jaxpot s':>9} {'peer s':>9} {'peer/jaxpot':>12}")
    for name, t_j, t_p, note in rows:
        print(f"{name:<64} {t_j:9.3f} {t_p:9.3f} {t_p / t_j:12.2f}   {note}")


if __name__ == "__main__":
    main()
