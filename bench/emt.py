"""jaxpot's EMT port vs ASE's EMT calculator: energy + forces of rattled fcc copper.

    python bench/emt.py                 # 108, 864 and 4000 atoms
    python bench/emt.py --sizes 108 --repeats 3

Both run on the same structure in the same process; jaxpot's time is after compilation
(jitted energy and forces with the edges already built, float64), ASE's includes its own
neighbour list (which it needs for every new structure, as does jaxpot's host-side
``System.from_ase``; that build time is printed separately). The agreement is printed too.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(sizes=(108, 864, 4000), repeats=3):
    """Print one line per size: times, ratio and the largest force difference."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from jaxpot.potential import energy_and_forces
    from jaxpot.potentials.emt import emt
    from jaxpot.system import System

    pot = emt(["Cu"])
    params = pot.init(None, None)
    ef = jax.jit(energy_and_forces(pot))
    rows = []
    for n in sizes:
        reps = round((n / 4) ** (1 / 3))
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(reps)
        atoms.rattle(0.05, rng=np.random.default_rng(0))
        t0 = time.perf_counter()
        system = System.from_ase(atoms, cutoff=pot.cutoff)
        t_build = time.perf_counter() - t0
        e, f = jax.block_until_ready(ef(params, system))  # compile
        t_jax = _best(lambda s=system: jax.block_until_ready(ef(params, s)), repeats)

        def ase_call(a=atoms):
            a.calc = EMT()
            return a.get_potential_energy(), a.get_forces()

        t_ase = _best(ase_call, max(1, repeats if len(atoms) < 2000 else 1))
        e_ref, f_ref = ase_call()
        diff = float(np.abs(np.asarray(f) - f_ref).max())
        rows.append((len(atoms), t_jax, t_ase, t_build))
        print(f"EMT energy+forces, {len(atoms):5d} Cu atoms: jaxpot {t_jax * 1e3:8.2f} ms, "
              f"ASE {t_ase * 1e3:9.1f} ms, ratio {t_ase / t_jax:6.1f}x "
              f"(edges on the host {t_build * 1e3:.0f} ms; |ΔE| {abs(float(e) - e_ref):.1e} eV, "
              f"max|ΔF| {diff:.1e} eV/Å)", flush=True)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=(108, 864, 4000))
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    main(a.sizes, a.repeats)
