"""Memory and time of NequIP and MACE energy + forces from 10³ to 10⁵ atoms.

Each (family, size) runs in its own process so that its peak resident memory is its own: fcc
copper, rattled, default model options (species Cu, cutoff 5 Å), float32, one jitted
energy + forces call timed after compilation (median of repeats). Prints one JSON line per case
with the time, the time per atom, the peak RSS, the memory per atom (peak minus the process's
memory before the model ran, over the atom count), and the size that would fill the machine's
available memory at that rate (an extrapolation, not a run).

    python bench/scale.py                       # 1e3, 1e4, 1e5 atoms, nequip and mace
    python bench/scale.py --sizes 1000 8000 --families nequip
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    return float("nan")


def one_case(family: str, n_atoms: int, repeats: int) -> dict:
    import jax
    import numpy as np
    from ase.build import bulk

    from jaxpot import System, registry
    from jaxpot.potential import energy_and_forces

    reps = max(1, round((n_atoms / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(reps)
    atoms.rattle(0.05, seed=0)
    pot = registry.from_config({"name": family, "kwargs": {"species": ["Cu"], "cutoff": 5.0}})
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    base = _rss_mb()
    params = pot.init(jax.random.key(0), system)
    fn = jax.jit(energy_and_forces(pot))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, system))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, system))
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(atoms)
    per_atom_mb = max(peak - base, 0.0) / n
    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**20
    return {"family": family, "n_atoms": n, "n_edges": int(np.sum(np.asarray(system.edge_mask))),
            "compile_s": compile_s, "ef_s": float(np.median(times)),
            "us_per_atom": 1e6 * float(np.median(times)) / n, "peak_rss_mb": peak,
            "mb_per_atom": per_atom_mb,
            "fits_in_available_memory_atoms": int(avail / per_atom_mb) if per_atom_mb else None,
            "device": str(jax.devices()[0].platform)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--families", nargs="+", default=["nequip", "mace"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case[0], int(args.case[1]), args.repeats)))
        return
    for family in args.families:
        for n in args.sizes:
            proc = subprocess.run([sys.executable, __file__, "--case", family, str(n),
                                   "--repeats", str(args.repeats)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(json.dumps({"family": family, "n_atoms": n, "failed":
                                  proc.stderr.strip().splitlines()[-1:]}))
                continue
            print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
