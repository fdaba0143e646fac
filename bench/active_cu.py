"""Acceptance study of on-the-fly active learning: copper, EMT as the oracle.

Start from 20 rattled 32-atom fcc frames labelled by EMT; run ``jaxpot.active`` (GAP, MD
walkers at several temperatures and strains) up to N oracle calls; then, with the same number
of oracle calls, fit a GAP on frames picked at random from the same MD (every logged walker
frame, ``pool.xyz``). Both are scored on a held-back set from EMT Langevin MD (ASE) that
includes hotter and strained cells than the start. Prints error vs oracle calls for both and
writes ``curves.csv`` and ``curves.png`` under ``--out``.

    taskset -c 1 python bench/active_cu.py --out /tmp/active_cu --calls 16
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution


def start_frames(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", cubic=True).repeat(2)
        a.rattle(0.05, seed=int(rng.integers(1 << 30)))
        out.append(a)
    return out


def held_back(conditions, per_condition: int, seed: int) -> list:
    """EMT Langevin frames (ASE) at each (temperature K, strain)."""
    frames = []
    for k, (temp, strain) in enumerate(conditions):
        a = bulk("Cu", cubic=True).repeat(2)
        a.set_cell(a.cell * (1 + strain), scale_atoms=True)
        a.calc = EMT()
        MaxwellBoltzmannDistribution(a, temperature_K=temp, rng=np.random.default_rng(seed + k))
        dyn = Langevin(a, 2 * units.fs, temperature_K=temp, friction=0.02,
                       rng=np.random.default_rng(seed + 100 + k))
        dyn.run(300)
        for _ in range(per_condition):
            dyn.run(40)
            b = a.copy()
            b.calc = EMT()
            b.get_potential_energy()
            frames.append(b)
    return frames


def label(frames: list) -> list:
    out = []
    for a in frames:
        b = a.copy()
        b.calc = EMT()
        b.get_potential_energy()
        out.append(b)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="active_cu")
    p.add_argument("--calls", type=int, default=16, help="oracle calls of the active run")
    p.add_argument("--steps", type=int, default=300, help="MD steps per walker segment")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from jaxpot import active
    from jaxpot.active.walkers import force_errors
    from jaxpot.cli import enable_compile_cache

    enable_compile_cache()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    test = held_back([(600, 0.0), (1200, 0.0), (900, 0.03), (900, -0.02)], 4, args.seed + 1)
    fit = active.gap_fitter()
    config = active.ActiveConfig(
        temperatures=(300.0, 800.0, 1300.0), strains=(0.0, 0.03), steps_per_walker=args.steps,
        threshold_factor=2.0, seed=args.seed,
        criteria=active.StoppingCriteria(max_oracle_calls=args.calls, max_iterations=80))
    run_dir = os.path.join(args.out, "run")
    res = active.run_active(start_frames(20, args.seed), "ase.calculators.emt:EMT", fit,
                            run_dir, config, test_frames=test, keep_pool=True)
    t_active = time.perf_counter() - t0
    data = read(os.path.join(run_dir, "data.xyz"), ":")
    pool = read(os.path.join(run_dir, "pool.xyz"), ":")
    n_calls = len(data) - 20
    rng = np.random.default_rng(args.seed + 7)
    order = rng.permutation(len(pool))
    rows = []
    for n in sorted({0, *range(4, n_calls + 1, 4), n_calls}):
        e_act = force_errors(*fit(data[:20 + n]), test)
        e_rnd = force_errors(*fit(data[:20] + label([pool[i] for i in order[:n]])), test)
        rows.append((n, e_act["force_rmse"] * 1e3, e_rnd["force_rmse"] * 1e3,
                     e_act["energy_rmse"] * 1e3, e_rnd["energy_rmse"] * 1e3))
    _report(args.out, rows, res, len(pool), t_active, time.perf_counter() - t0)


def _report(out, rows, res, n_pool, t_active, t_total) -> None:
    from jaxpot.files import write_csv

    cols = ("oracle_calls", "active_force_rmse_mev_a", "random_force_rmse_mev_a",
            "active_energy_rmse_mev_atom", "random_energy_rmse_mev_atom")
    write_csv(os.path.join(out, "curves.csv"), cols, rows)
    print(f"held-back force / energy RMSE vs oracle calls (random: from {n_pool} MD frames)")
    print(f"{'calls':>5} {'active meV/Å':>13} {'random meV/Å':>13} {'active meV/at':>14} "
          f"{'random meV/at':>14}")
    for r in rows:
        print(f"{r[0]:5d} {r[1]:13.1f} {r[2]:13.1f} {r[3]:14.2f} {r[4]:14.2f}")
    print(f"stop: {res.stop_reason}; {len(res.history)} iterations; active run "
          f"{t_active:.0f} s, total {t_total:.0f} s")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = np.array(rows, float)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(a[:, 0], a[:, 1], "o-", label="active")
    ax.plot(a[:, 0], a[:, 2], "s--", label="random from same MD")
    ax.set(xlabel="oracle calls", ylabel="held-back force RMSE (meV/Å)",
           title="Cu, EMT oracle, GAP")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)


if __name__ == "__main__":
    main()
