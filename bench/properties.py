"""jaxpot's exact Hessians against finite differences: molecule vibrations vs ASE's
``Vibrations`` and crystal force constants vs phonopy's finite displacements, on the same
potential, in the same process, after compilation.

* vibrations: an LJ cluster of N atoms (a relaxed random cluster); jaxpot
  ``analysis.vibrations.vibrations`` (exact Hessian, projection, eigh) against ASE's
  ``Vibrations`` (6N central-difference force calls, ``nfree=2``) run on ``jaxpot.ase.Calculator``
  of the same potential, so both use the same force code; the frequency difference is printed.
* phonons: EMT Cu, fcc, n×n×n supercell of the primitive cell; jaxpot
  ``analysis.phonons.force_constants`` against phonopy's ``generate_displacements`` (plus/minus)
  + forces from ``jaxpot.ase.Calculator`` + ``produce_force_constants``.

Run from the repository root::

    python bench/properties.py                  # cluster 13 and 38 atoms, supercells 3 and 4
    python bench/properties.py --quick          # small sizes, a smoke test
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.optimize import BFGS  # noqa: E402
from ase.vibrations import Vibrations as AseVibrations  # noqa: E402

from jaxpot.analysis import phonons, vibrations  # noqa: E402
from jaxpot.ase import Calculator  # noqa: E402
from jaxpot.potentials import lennard_jones  # noqa: E402
from jaxpot.potentials.emt import emt  # noqa: E402
from jaxpot.system import System  # noqa: E402


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _cluster(n: int, seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    pos = [np.zeros(3)]
    while len(pos) < n:
        p = rng.uniform(-1, 1, 3) * (1.2 * n) ** (1 / 3) * 1.2
        if min(np.linalg.norm(p - q) for q in pos) > 1.0:
            pos.append(p)
    return Atoms(f"Ar{n}", positions=np.array(pos) * 3.4 / 1.12)


def bench_vibrations(n: int, repeats: int) -> None:
    pot = lennard_jones(3.4, 0.0104, 12.0)
    params = pot.init(None, None)
    atoms = _cluster(n)
    atoms.calc = Calculator(pot, params)
    BFGS(atoms, logfile=None).run(fmax=1e-6, steps=5000)
    system = System.from_ase(atoms, cutoff=12.0)

    def ours():
        return jax.block_until_ready(vibrations.vibrations(pot, params, system))

    out = ours()  # compile
    with tempfile.TemporaryDirectory() as tmp:
        def ase_fd():
            v = AseVibrations(atoms, name=f"{tmp}/vib", delta=0.01, nfree=2)
            v.clean()
            v.run()
            f = v.get_frequencies()
            v.clean()
            return f

        ref = ase_fd()  # warms the calculator's compiled shapes
        t_ours, t_ase = _best(ours, repeats), _best(ase_fd, repeats)
    k = int(out.n_modes)
    f = np.asarray(out.frequencies)[:k]
    r = np.sort(ref.real)[-k:]
    big = np.abs(r) > 10
    print(f"vibrations LJ{n:<4d} modes {k:4d}   jaxpot {t_ours * 1e3:8.1f} ms   "
          f"ASE Vibrations {t_ase * 1e3:8.1f} ms   ratio {t_ase / t_ours:7.1f}x   "
          f"max |Δf| {np.abs(f[big] - r[big]).max():.3f} cm⁻¹ (modes > 10 cm⁻¹)")


def bench_phonons(n: int, repeats: int) -> None:
    from phonopy import Phonopy

    pot = emt(["Cu"])
    params = pot.init(None, None)
    atoms = bulk("Cu", "fcc", a=3.59)
    calc = Calculator(pot, params)
    ph = Phonopy(phonons.to_phonopy_atoms(atoms), supercell_matrix=[n] * 3)
    sc = ph.supercell

    def ours():
        return phonons.force_constants(pot, params, sc.positions, sc.numbers, sc.cell)

    def fd():
        ref = Phonopy(phonons.to_phonopy_atoms(atoms), supercell_matrix=[n] * 3)
        ref.generate_displacements(distance=0.01, is_plusminus=True)
        forces = []
        for d in ref.supercells_with_displacements:
            a = Atoms(d.symbols, cell=d.cell, scaled_positions=d.scaled_positions, pbc=True)
            a.calc = calc
            forces.append(a.get_forces())
        ref.forces = np.array(forces)
        ref.produce_force_constants()
        return ref.force_constants

    fc, ref = ours(), fd()  # compile both
    t_ours, t_fd = _best(ours, repeats), _best(fd, repeats)
    print(f"phonons  Cu fcc {n}x{n}x{n} ({len(sc)} atoms)   jaxpot Hessian {t_ours * 1e3:8.1f} ms"
          f"   phonopy FD {t_fd * 1e3:8.1f} ms   ratio {t_fd / t_ours:7.2f}x   "
          f"max |ΔΦ| {np.abs(fc - ref).max():.1e} eV/Å²")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clusters", type=int, nargs="*", default=[13, 38])
    p.add_argument("--supercells", type=int, nargs="*", default=[3, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.clusters, args.supercells, args.repeats = [7], [2], 1
    print(f"device: {jax.devices()[0].device_kind}, float64")
    for n in args.clusters:
        bench_vibrations(n, args.repeats)
    for n in args.supercells:
        bench_phonons(n, args.repeats)


if __name__ == "__main__":
    main()
