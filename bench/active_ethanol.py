"""Acceptance study of on-the-fly active learning on a molecule: ethanol, GFN2-xTB as the oracle.

Start from 20 GFN2-xTB frames of ethanol taken from ``shared/data/ethanol_xtb/train.xyz`` (500 K
MD; by default the 20 of lowest energy, a cold subset), already labelled (eV, eV/Å), so the
oracle labels only what the loop asks for. Run ``jaxpot.active`` (GAP on C/H/O in float64,
Langevin walkers at several temperatures, no strain: the molecule has no cell) up to N oracle
calls; then, with the same number of oracle calls, fit the same GAP on frames picked at random
from the walkers' logged MD (``pool.xyz``) and labelled by the oracle. Both are scored on
held-back frames: ``valid.xyz`` frames (500 K) and frames of our own GFN2-xTB Langevin MD at a
hotter temperature (absent from the start). Prints error vs oracle calls for both and writes
``curves.csv`` and ``curves.png`` under ``--out``.

    taskset -c 1 python bench/active_ethanol.py --out /tmp/active_ethanol --calls 12
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                    "ethanol_xtb")

GAP_OPTIONS = dict(species=("C", "H", "O"), cutoff=5.0, n_max=4, l_max=3, n_sparse=150, zeta=4,
                   sigma=0.5, max_neighbors=16, optimize_noise=False, sigma_energy=0.002,
                   sigma_force=0.05)
"""GAP for a 9-atom molecule: species given (``gap_fitter`` does not infer them), a cutoff
that spans the whole molecule, σ_F a few % of the ~1 eV/Å force RMS."""


def xtb():
    """The oracle's calculator: GFN2-xTB with the settings the data set was made with."""
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", accuracy=0.01, electronic_temperature=300.0, verbosity=0)


def start_frames(path: str, n: int, how: str, seed: int) -> list:
    from ase.io import read

    frames = read(path, ":")
    if how == "coldest":
        order = np.argsort([a.get_potential_energy() for a in frames])
    else:
        order = np.random.default_rng(seed).permutation(len(frames))
    return [frames[int(i)] for i in order[:n]]


def held_back(path: str, n_valid: int, hot_k: float, n_hot: int, seed: int) -> dict:
    """``n_valid`` frames of ``valid.xyz`` and ``n_hot`` frames of GFN2-xTB Langevin MD (ASE,
    0.5 fs) at ``hot_k`` from the first of them, every 40 steps after 400 steps."""
    from ase import units
    from ase.io import read
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    valid = read(path, ":")
    pick = np.random.default_rng(seed).choice(len(valid), n_valid, replace=False)
    sets = {"valid": [valid[int(i)] for i in pick]}
    a = sets["valid"][0].copy()
    a.calc = xtb()
    MaxwellBoltzmannDistribution(a, temperature_K=hot_k, rng=np.random.default_rng(seed))
    dyn = Langevin(a, 0.5 * units.fs, temperature_K=hot_k, friction=0.01 / units.fs,
                   rng=np.random.default_rng(seed + 1))
    dyn.run(400)
    hot = []
    for _ in range(n_hot):
        dyn.run(40)
        hot.append(_single_point(a))
    sets[f"{hot_k:g}K"] = hot
    return sets


def _single_point(atoms):
    from ase.calculators.singlepoint import SinglePointCalculator

    b = atoms.copy()
    b.calc = SinglePointCalculator(b, energy=atoms.get_potential_energy(),
                                   forces=atoms.get_forces())
    return b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="active_ethanol")
    p.add_argument("--data", default=DATA, help="directory of train.xyz / valid.xyz")
    p.add_argument("--calls", type=int, default=12, help="oracle calls of the active run")
    p.add_argument("--steps", type=int, default=1000, help="MD steps (0.5 fs) per segment")
    p.add_argument("--temperatures", default="300,600,1000", help="walker baths, K")
    p.add_argument("--start", choices=("coldest", "random"), default="coldest",
                   help="which 20 train.xyz frames start the run")
    p.add_argument("--hot", type=float, default=1000.0, help="hot held-back MD temperature, K")
    p.add_argument("--factor", type=float, default=2.0, help="threshold factor")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from jaxpot import active
    from jaxpot.active.walkers import force_errors
    from jaxpot.cli import enable_compile_cache

    enable_compile_cache()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    init = start_frames(os.path.join(args.data, "train.xyz"), 20, args.start, args.seed)
    oracle = active.make_oracle(xtb)
    check = oracle(init[0])
    d_e = check.get_potential_energy() - init[0].get_potential_energy()
    d_f = np.abs(check.get_forces() - init[0].get_forces()).max()
    print(f"oracle vs stored label of a start frame: dE {d_e:.2e} eV, max dF {d_f:.2e} eV/Å")
    test = held_back(os.path.join(args.data, "valid.xyz"), 40, args.hot, 20, args.seed + 1)
    all_test = [a for frames in test.values() for a in frames]
    t_setup = time.perf_counter() - t0
    fit = active.gap_fitter(**GAP_OPTIONS)
    temps = tuple(float(t) for t in args.temperatures.split(","))
    config = active.ActiveConfig(
        temperatures=temps, strains=(0.0,), dt_fs=0.5, steps_per_walker=args.steps,
        log_every=10, block_steps=50, threshold_factor=args.factor, seed=args.seed,
        criteria=active.StoppingCriteria(max_oracle_calls=args.calls, max_iterations=60))
    run_dir = os.path.join(args.out, "run")
    t1 = time.perf_counter()
    res = active.run_active(init, oracle, fit, run_dir, config, test_frames=all_test,
                            keep_pool=True)
    t_active = time.perf_counter() - t1
    from ase.io import read

    data = read(os.path.join(run_dir, "data.xyz"), ":")
    pool = read(os.path.join(run_dir, "pool.xyz"), ":")
    n_calls = len(data) - len(init)
    order = np.random.default_rng(args.seed + 7).permutation(len(pool))
    rnd = [oracle(pool[int(i)]) for i in order[:n_calls]]
    rows = []
    step = max(1, n_calls // 4)
    for n in sorted({0, *range(step, n_calls + 1, step), n_calls}):
        row = [n]
        for frames in (data[:len(init) + n], data[:len(init)] + rnd[:n]):
            model = fit(frames)
            err = force_errors(*model, all_test)
            row += [err["force_rmse"] * 1e3, err["energy_rmse"] * 1e3]
            row += [force_errors(*model, t)["force_rmse"] * 1e3 for t in test.values()]
        rows.append(row)
    _report(args.out, rows, list(test), res, len(pool), oracle.calls,
            (t_setup, t_active, time.perf_counter() - t0))


def _report(out, rows, names, res, n_pool, n_oracle, times) -> None:
    from jaxpot.files import write_csv

    cols = ["oracle_calls"]
    for who in ("active", "random"):
        cols += [f"{who}_force_rmse_mev_a", f"{who}_energy_rmse_mev_atom"]
        cols += [f"{who}_force_rmse_{n}_mev_a" for n in names]
    write_csv(os.path.join(out, "curves.csv"), cols, rows)
    k = 2 + len(names)
    print(f"held-back force RMSE (meV/Å; all, then {' / '.join(names)}) and energy RMSE "
          f"(meV/atom) vs oracle calls (random: from {n_pool} logged MD frames)")
    print(f"{'calls':>5} | {'active F':>9} {'E':>6} {'per set':>15} | {'random F':>9} {'E':>6} "
          f"{'per set':>15}")
    for r in rows:
        a, b = r[1:1 + k], r[1 + k:1 + 2 * k]
        print(f"{r[0]:5d} | {a[0]:9.1f} {a[1]:6.2f} {' / '.join(f'{x:.1f}' for x in a[2:]):>15} "
              f"| {b[0]:9.1f} {b[1]:6.2f} {' / '.join(f'{x:.1f}' for x in b[2:]):>15}")
    t_setup, t_active, t_total = times
    print(f"stop: {res.stop_reason}; {len(res.history)} iterations; oracle calls in all "
          f"{n_oracle}; setup {t_setup:.0f} s, active run {t_active:.0f} s, total {t_total:.0f} s")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = np.array(rows, float)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(a[:, 0], a[:, 1], "o-", label="active")
    ax.plot(a[:, 0], a[:, 1 + k], "s--", label="random from same MD")
    ax.set(xlabel="oracle calls", ylabel="held-back force RMSE (meV/Å)",
           title="ethanol, GFN2-xTB oracle, GAP")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
