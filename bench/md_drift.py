"""NVE energy conservation of a trained model: 108-atom fcc Cu at 800 K, 1 fs, 20 ps.

The acceptance run for a trained copper potential (issue: no blow-up, drift below
1 meV/atom/ps). The lattice (3×3×3 conventional cells at the model's equilibrium-ish lattice
constant 3.61 Å) is first thermalised with Langevin dynamics at the target temperature
(``--equil-ps``, friction 0.02/fs) so that the NVE part starts from an equilibrated 800 K state
rather than from a cold lattice with 800 K velocities (which equipartition would take down to
~400 K). Then NVE velocity Verlet runs for ``--ps`` picoseconds.

Reported (JSON on stdout, a table on stderr):

- ``drift_mev_per_atom_per_ps``: slope of a least-squares line through the total energy per
  atom against time (the systematic drift), and ``max_dev_mev_per_atom``: the largest
  excursion of the total energy from its initial value;
- the mean and spread of the temperature, and whether the run finished without a non-finite
  energy or a neighbour-list failure;
- speed: atom-steps/s and ns/day of the NVE part, and, for scale, ASE's EMT (the labelling
  calculator) on the same cell.

Usage::

    python bench/md_drift.py runs/cu_nequip/model            # 2 ps Langevin + 20 ps NVE
    python bench/md_drift.py MODEL --ps 2 --equil-ps 0.5     # quick look
    python bench/md_drift.py MODEL --float64                 # double precision
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="model file (jaxpot.save_model / jaxpot train's DIR/model)")
    p.add_argument("--temperature", type=float, default=800.0, help="K")
    p.add_argument("--dt", type=float, default=1.0, help="fs")
    p.add_argument("--ps", type=float, default=20.0, help="NVE length, ps")
    p.add_argument("--equil-ps", type=float, default=2.0, help="Langevin equilibration, ps")
    p.add_argument("--reps", type=int, default=3, help="conventional cells per side")
    p.add_argument("--a", type=float, default=3.61, help="lattice constant, Å")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float64", action="store_true")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)

    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    from ase.build import bulk
    from ase.calculators.emt import EMT

    import jaxpot
    from jaxpot import md

    pot, params = jaxpot.load_model(args.model)
    atoms = bulk("Cu", "fcc", a=args.a, cubic=True).repeat((args.reps,) * 3)
    system = jaxpot.System.from_ase(atoms)
    n = len(atoms)

    eq_steps = int(round(1000 * args.equil_ps / args.dt))
    t0 = time.monotonic()
    if eq_steps > 0:
        eq = md.simulate(pot, params, system, ensemble="langevin", dt_fs=args.dt,
                         temperature_kelvin=args.temperature, steps=eq_steps,
                         log_every=args.log_every, seed=args.seed, friction_per_fs=0.02)
        system, momenta = eq.final_system, eq.final_state.momenta
    else:
        momenta = None
    steps = int(round(1000 * args.ps / args.dt))
    res = md.simulate(pot, params, system, ensemble="nve", dt_fs=args.dt,
                      temperature_kelvin=args.temperature, steps=steps,
                      log_every=args.log_every, seed=args.seed + 1, momenta=momenta)
    wall = time.monotonic() - t0
    log = res.log
    e = np.asarray(log["total_energy_ev"]) / n
    t_ps = np.asarray(log["time_fs"]) / 1000.0
    finite = bool(np.all(np.isfinite(e)))
    slope = float(np.polyfit(t_ps, e, 1)[0]) if finite else float("nan")
    temp = np.asarray(log["temperature_k"])

    # ASE EMT on the same cell for scale (a few steps' worth of force calls).
    atoms.calc = EMT()
    atoms.rattle(0.05, seed=1)
    atoms.get_forces()
    n_emt = 20
    t1 = time.perf_counter()
    for k in range(n_emt):
        atoms.positions[0, 0] += 1e-4 * (-1) ** k
        atoms.get_forces()
    emt_s = (time.perf_counter() - t1) / n_emt

    out = {
        "model": args.model, "n_atoms": n, "temperature_k_target": args.temperature,
        "dt_fs": args.dt, "nve_ps": steps * args.dt / 1000.0, "equil_ps": args.equil_ps,
        "dtype": "float64" if args.float64 else "float32",
        "finished": finite, "n_reallocations": res.n_reallocations,
        "drift_mev_per_atom_per_ps": 1e3 * slope,
        "max_dev_mev_per_atom": 1e3 * float(np.max(np.abs(e - e[0]))) if finite else None,
        "temperature_k_mean": float(np.mean(temp)), "temperature_k_std": float(np.std(temp)),
        "atom_steps_per_s": res.atom_steps_per_s, "ns_per_day": res.ns_per_day,
        "ase_emt_atom_steps_per_s": n / emt_s, "compile_s": res.compile_s,
        "wall_s_total": wall,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    print(f"\n{n} Cu atoms, NVE {out['nve_ps']:.1f} ps at dt {args.dt} fs after "
          f"{args.equil_ps} ps Langevin: T = {out['temperature_k_mean']:.0f} ± "
          f"{out['temperature_k_std']:.0f} K; drift {out['drift_mev_per_atom_per_ps']:+.4f} "
          f"meV/atom/ps (max |ΔE| {out['max_dev_mev_per_atom']:.3f} meV/atom); "
          f"{out['atom_steps_per_s']:.3g} atom-steps/s ({out['ns_per_day']:.2f} ns/day), "
          f"EMT {out['ase_emt_atom_steps_per_s']:.3g}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
