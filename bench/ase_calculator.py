"""ASE calculator benchmark: jaxpot's LJ calculator vs ASE's ``LennardJones``, in one process.

The system is fcc argon (a = 5.26 Å, cubic cell repeated to 864 and 4000 atoms, periodic),
Lennard-Jones σ = 3.4 Å, ε = 0.0104 eV, hard cutoff 8.5 Å with the pair energy shifted to zero
there (ASE: ``LennardJones(rc=8.5, smooth=False)``; jaxpot: ``potentials.lennard_jones``).
The two calculators are first checked to agree on energy, forces and stress.

Timed, after compilation, interleaved round by round so both see the same machine load:

* ``force call after a small move``: every atom moves by a random 0.005 Å (rms per component,
  as an optimiser or an MD step would move them), then ``atoms.get_forces()``; jaxpot reuses its
  neighbour list within its Verlet skin (0.5 Å); ASE's ``LennardJones`` likewise keeps its
  ``ase.neighborlist.NeighborList`` (default skin 0.3 Å) between calls;
* ``force call, list rebuilt``: jaxpot with ``skin=0`` (host neighbour list every call);
* ``second calculator, first call``: a new jaxpot calculator for the same model (same
  structure): a host list, no compilation;
* ``first calculator, first call``: includes the one compilation of the process.

Usage::

    python bench/ase_calculator.py                   # 864 and 4000 atoms, float32 and float64
    python bench/ase_calculator.py --sizes 864 --rounds 20 --dtypes float32
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)  # float64 available; each calculator picks its dtype

import jax.numpy as jnp  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.lj import LennardJones  # noqa: E402

from jaxpot.ase import Calculator  # noqa: E402
from jaxpot.potentials import lennard_jones  # noqa: E402

SIGMA, EPSILON, CUTOFF = 3.4, 0.0104, 8.5
REPEATS = {864: 6, 4000: 10, 2048: 8, 6912: 12, 32: 2}


def argon(n_atoms: int, seed: int = 0):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(REPEATS[n_atoms])
    atoms.rattle(0.05, seed=seed)
    return atoms


def ase_calculator():
    return LennardJones(sigma=SIGMA, epsilon=EPSILON, rc=CUTOFF, smooth=False)


def jaxpot_calculator(dtype, skin=0.5):
    return Calculator(lennard_jones(SIGMA, EPSILON, CUTOFF), dtype=dtype, skin=skin)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def check_agreement(atoms, dtype) -> str:
    ref, ours = atoms.copy(), atoms.copy()
    ref.calc, ours.calc = ase_calculator(), jaxpot_calculator(dtype)
    de = abs(ours.get_potential_energy() - ref.get_potential_energy())
    f_ref = ref.get_forces()
    df = np.abs(ours.get_forces() - f_ref).max() / np.abs(f_ref).max()
    ds = np.abs(ours.get_stress() - ref.get_stress()).max() / np.abs(ref.get_stress()).max()
    rel_e = de / abs(ref.get_potential_energy())
    tol = 5e-5 if dtype == "float32" else 1e-10
    status = "OK" if max(rel_e, df, ds) < tol else "DISAGREE"
    return (f"{status}: |ΔE|/|E| = {rel_e:.1e}, max|ΔF|/max|F| = {df:.1e}, "
            f"max|Δσ|/max|σ| = {ds:.1e} (tolerance {tol:g})")


def bench_size(n_atoms: int, dtype: str, rounds: int, rng) -> dict:
    atoms = argon(n_atoms)
    print(f"\n## {n_atoms} atoms, jaxpot in {dtype}", flush=True)
    print("agreement with ASE:", check_agreement(atoms, dtype), flush=True)
    jdtype = jnp.dtype(dtype)
    ref, ours, rebuilt = atoms.copy(), atoms.copy(), atoms.copy()
    ref.calc = ase_calculator()
    ours.calc = jaxpot_calculator(jdtype)
    rebuilt.calc = jaxpot_calculator(jdtype, skin=0.0)
    first = timed(ours.get_forces)  # compiled already by check_agreement in this process
    timed(ref.get_forces)
    timed(rebuilt.get_forces)
    t_ase, t_ours, t_rebuilt = [], [], []
    for _ in range(rounds):
        step = rng.normal(scale=0.005, size=(n_atoms, 3))
        for a in (ref, ours, rebuilt):
            a.positions += step
        t_ase.append(timed(ref.get_forces))
        t_ours.append(timed(ours.get_forces))
        t_rebuilt.append(timed(rebuilt.get_forces))
    drift = np.abs(ours.get_forces() - ref.get_forces()).max() / np.abs(ref.get_forces()).max()
    second = atoms.copy()
    second.calc = jaxpot_calculator(jdtype)
    t_second = timed(second.get_forces)
    res = {"n": n_atoms, "dtype": dtype, "ase": statistics.median(t_ase),
           "ours": statistics.median(t_ours), "rebuilt": statistics.median(t_rebuilt),
           "second": t_second, "first": first, "builds": ours.calc.n_neighbor_builds,
           "drift": drift, "rounds": rounds}
    print(f"force call after a small move (median of {rounds}): ASE LennardJones "
          f"{1e3 * res['ase']:.1f} ms, jaxpot {1e3 * res['ours']:.1f} ms "
          f"-> jaxpot {res['ase'] / res['ours']:.1f}x faster "
          f"(host lists built {res['builds']} times in {rounds + 1} calls; "
          f"forces still agree to {drift:.1e})")
    print(f"force call, list rebuilt every call (skin 0): jaxpot {1e3 * res['rebuilt']:.1f} ms "
          f"({res['ase'] / res['rebuilt']:.1f}x ASE)")
    print(f"second calculator of the same model, first call (no compile): "
          f"{1e3 * t_second:.1f} ms", flush=True)
    return res


def first_call_with_compile(n_atoms: int, dtype: str) -> float:
    atoms = argon(n_atoms, seed=1)
    atoms.calc = Calculator(lennard_jones(SIGMA, EPSILON, CUTOFF), dtype=jnp.dtype(dtype),
                            min_atoms=9)  # a bucket no other calculator used: compiles
    return timed(atoms.get_forces)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[864, 4000],
                        choices=sorted(REPEATS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"],
                        choices=["float32", "float64"])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; LJ σ={SIGMA} Å, "
          f"ε={EPSILON} eV, cutoff {CUTOFF} Å; jaxpot skin 0.5 Å")
    rows = []
    for n in args.sizes:
        for dtype in args.dtypes:
            compile_s = first_call_with_compile(n, dtype)
            res = bench_size(n, dtype, args.rounds, rng)
            res["compile"] = compile_s
            rows.append(res)
    print("\n| atoms | dtype | ASE LJ / call | jaxpot / call | ratio | jaxpot, list rebuilt "
          "| 2nd calculator, 1st call | 1st call incl. compile |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['n']} | {r['dtype']} | {1e3 * r['ase']:.1f} ms | {1e3 * r['ours']:.1f} ms "
              f"| {r['ase'] / r['ours']:.1f}x | {1e3 * r['rebuilt']:.1f} ms "
              f"| {1e3 * r['second']:.0f} ms | {r['compile']:.2f} s |")


if __name__ == "__main__":
    main()
