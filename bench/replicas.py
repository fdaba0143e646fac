"""Many replicas in one run: atom-steps/s of ``simulate_replicas`` for 1, 8, 64 replicas.

The system is a 108-atom argon fcc cell (3×3×3 conventional cells, a = 5.26 Å, LJ σ = 3.4 Å,
ε = 0.0104 eV, cutoff 8.5 Å, skin 0.5 Å), Langevin at temperatures spread over 20–80 K,
dt = 5 fs, float32. For each replica count R, ``jaxpot.md.simulate_replicas`` runs all R in
one vmapped, fused program (timed after compilation); the peer is R sequential
``jaxpot.md.simulate`` runs of the same replicas (their time after compilation, summed, from
``MDResult.wall_s``; each of those also compiles once, which the ratio leaves out). Printed:
atom-steps/s of the batch, of the sequential runs, and their ratio.

Usage::

    python bench/replicas.py                      # R = 1, 8, 64; 200 steps
    python bench/replicas.py --replicas 1 8 --steps 100
    python bench/replicas.py --quick              # smoke test (tiny cell, few steps)
"""

from __future__ import annotations

import argparse

import numpy as np
from ase.build import bulk

from jaxpot import System, md, potentials


def main(replicas=(1, 8, 64), steps=200, repeat=3, quick=False) -> list[dict]:
    cell = (1, 1, 1) if quick else (repeat, repeat, repeat)
    pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=4.6 if quick else 8.5)
    params = pot.init(None, None)
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(cell)
    system = System.from_ase(atoms, dtype=np.float32)
    n = len(atoms)
    rows = []
    for r in replicas:
        temps = np.linspace(20.0, 80.0, r)
        res = md.simulate_replicas(pot, params, [system] * r, ensemble="langevin", dt_fs=5.0,
                                   temperatures_kelvin=temps, steps=steps, log_every=steps,
                                   block_steps=steps)
        seq = 0.0
        for k in range(r):
            one = md.simulate(pot, params, system, ensemble="langevin", dt_fs=5.0,
                              temperature_kelvin=float(temps[k]), steps=steps, log_every=steps,
                              seed=k, block_steps=steps)
            seq += one.wall_s
        row = {"replicas": r, "atoms": n, "batch_atom_steps_per_s": res.atom_steps_per_s,
               "sequential_atom_steps_per_s": n * r * steps / seq,
               "compiles": res.n_compiles}
        row["ratio"] = row["batch_atom_steps_per_s"] / row["sequential_atom_steps_per_s"]
        rows.append(row)
        print(f"R={r:3d}  N={n}  batch {row['batch_atom_steps_per_s']:.3g} atom-steps/s  "
              f"sequential {row['sequential_atom_steps_per_s']:.3g}  "
              f"ratio {row['ratio']:.2f}x  compiles {row['compiles']}", flush=True)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    main(tuple(a.replicas), a.steps, quick=a.quick)
