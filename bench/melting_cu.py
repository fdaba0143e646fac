"""Melting point of EMT copper by solid–liquid coexistence, with jaxpot's EMT and a trained model.

    python bench/melting_cu.py                                   # EMT only
    python bench/melting_cu.py --model runs/cu_bpnn/model        # and a trained jaxpot model
    python bench/melting_cu.py --reps 3 3 6 --steps 1500 --temps 1100 1200 1300 1400

For each potential: build the half-melted cell (tethered crystal half, molten half), run it in
NPT (anisotropic stochastic cell rescaling at 0 GPa) at each temperature, fit the rate of
change of the solid fraction against T and report T_m with its error bar; then a heating curve
of the perfect crystal (superheating limit). Writes ``bench/results/melting_cu.json`` and
``bench/results/melting_cu.png`` and prints the wall times (compilation included).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def study(potential, params, *, reps, temps, steps, prep_steps, heat_steps, dt_fs, ensemble,
          a0, k=2.0, seed=0, prep_kelvin=None):
    """The coexistence study and the heating curve for one potential; a JSON-ready dict."""
    from ase.build import bulk

    from jaxpot.analysis import melting
    from jaxpot.system import System

    t0 = time.perf_counter()
    crystal = System.from_ase(bulk("Cu", "fcc", a=a0, cubic=True).repeat(reps))
    mid = 0.5 * (min(temps) + max(temps))
    prep_kelvin = mid if prep_kelvin is None else prep_kelvin
    npt = dict(pressure_gpa=0.0, cell_dof="aniso") if ensemble == "npt" else {}
    if ensemble == "npt":  # the crystal at its own density in the middle of the window
        crystal = melting.crystal_at(potential, params, crystal, temperature_kelvin=mid,
                                     steps=prep_steps, dt_fs=dt_fs, seed=seed + 7)
        scale = float(crystal.cell[0, 0]) / (a0 * reps[0])
        print(f"  crystal at {mid:.0f} K: lattice x{scale:.4f}", flush=True)
    tc = time.perf_counter()
    check = melting.classifier_check(potential, params, crystal, temperature_kelvin=mid,
                                     steps=prep_steps, dt_fs=dt_fs, seed=seed + 100,
                                     ensemble=ensemble, **npt)
    check_wall = time.perf_counter() - tc
    print(f"  classifier at {mid:.0f} K: free crystal {check[0]:.3f}, liquid {check[1]:.3f} "
          f"({check_wall:.0f} s)", flush=True)
    cell = melting.half_melted_cell(potential, params, crystal, melt_temperature_kelvin=2500.0,
                                    temperature_kelvin=prep_kelvin, melt_steps=prep_steps,
                                    steps=prep_steps // 2, dt_fs=dt_fs, k=k, seed=seed)
    co = melting.coexistence(potential, params, cell, temps, steps=steps, ensemble=ensemble,
                             dt_fs=dt_fs, log_every=max(10, steps // 40), seed=seed, **npt)
    if not heat_steps:
        heat = melting.HeatingCurve(np.zeros(0), np.zeros(0), np.zeros(0), float("nan"), 0.0)
    else:
        heat = melting.heating_curve(
            potential, params, crystal, t_start=800.0, t_end=2.0 * max(temps),
            steps=heat_steps, ensemble=ensemble, dt_fs=dt_fs,
            log_every=max(10, heat_steps // 60), seed=seed, **npt)
    print(f"  rates {np.round(co.rates, 3).tolist()} ± {np.round(co.rate_errors, 3).tolist()} /ps",
          flush=True)
    return {"n_atoms": int(crystal.n_atoms), "q6_threshold_unused": cell.threshold,
            "classifier_check": {"temperature": mid, "crystal": check[0], "liquid": check[1]},
            "temperatures": co.temperatures.tolist(), "times_ps": co.times_ps.tolist(),
            "fractions": co.fractions.tolist(), "rates_per_ps": co.rates.tolist(),
            "rate_errors_per_ps": co.rate_errors.tolist(), "t_melt": co.melting_point,
            "t_melt_error": co.melting_point_error, "superheating": heat.superheating,
            "heat_temperatures": heat.temperatures.tolist(),
            "heat_fractions": heat.fractions.tolist(),
            "heat_energy": heat.potential_energy.tolist(),
            "wall_s": {"check": check_wall,
                       "prepare": cell.wall_s, "coexistence": co.wall_s, "heating": heat.wall_s,
                       "total": time.perf_counter() - t0}}


def plot(results: dict, path: Path) -> None:
    """Solid fraction against time per temperature, rate against T, heating curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 3, figsize=(11, 3.0 * len(results)), squeeze=False)
    for row, (name, r) in zip(axes, results.items(), strict=True):
        cmap = plt.get_cmap("coolwarm")
        temps = np.asarray(r["temperatures"])
        for k, (t, f) in enumerate(zip(temps, r["fractions"], strict=True)):
            color = cmap(k / max(1, len(temps) - 1))
            row[0].plot(r["times_ps"], f, color=color, label=f"{t:.0f} K")
        row[0].set(xlabel="t (ps)", ylabel="solid fraction", title=name)
        row[0].legend(fontsize=7)
        row[1].errorbar(temps, r["rates_per_ps"], r["rate_errors_per_ps"], fmt="o")
        row[1].axhline(0.0, color="k", lw=0.5)
        if np.isfinite(r["t_melt"]):
            row[1].axvspan(r["t_melt"] - r["t_melt_error"], r["t_melt"] + r["t_melt_error"],
                           alpha=0.3, label=f"T_m = {r['t_melt']:.0f} ± {r['t_melt_error']:.0f} K")
            row[1].legend(fontsize=7)
        row[1].set(xlabel="T (K)", ylabel="d(solid fraction)/dt (1/ps)")
        row[2].plot(r["heat_temperatures"], r["heat_fractions"])
        row[2].set(xlabel="bath T (K)", ylabel="solid fraction",
                   title=f"heating: collapses at {r['superheating']:.0f} K")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(reps=(3, 3, 6), temps=(1100.0, 1200.0, 1300.0, 1400.0), steps=1500, prep_steps=800,
         heat_steps=2000, dt_fs=4.0, ensemble="npt", model=None, out="bench/results",
         float64=False, skip_emt=False, prep_kelvin=None):
    """Run the study for EMT (and ``model`` when given); returns the results dict."""
    import jax

    jax.config.update("jax_enable_x64", bool(float64))
    from jaxpot.potentials.emt import emt

    kw = dict(reps=tuple(reps), temps=list(temps), steps=steps, prep_steps=prep_steps,
              heat_steps=heat_steps, dt_fs=dt_fs, ensemble=ensemble, a0=3.61,
              prep_kelvin=prep_kelvin)
    pots = {} if skip_emt else {"EMT (jaxpot port)": (emt(["Cu"]), None)}
    if model:
        import jaxpot

        pots[f"trained ({Path(model).parent.name})"] = jaxpot.load_model(model)
    results = {}
    for name, (pot, params) in pots.items():
        params = pot.init(None, None) if params is None else params
        results[name] = study(pot, params, **kw)
        r = results[name]
        print(f"{name}: T_m = {r['t_melt']:.0f} ± {r['t_melt_error']:.0f} K (coexistence, "
              f"{r['n_atoms']} atoms), superheating {r['superheating']:.0f} K, "
              f"wall {r['wall_s']['total']:.0f} s", flush=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    from jaxpot.files import atomic_write_text

    atomic_write_text(Path(out) / "melting_cu.json", json.dumps(
        {"options": {k: v for k, v in kw.items()}, "model": model, "results": results}, indent=1))
    plot(results, Path(out) / "melting_cu.png")
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, nargs=3, default=(3, 3, 6))
    p.add_argument("--temps", type=float, nargs="+", default=(1100.0, 1200.0, 1300.0, 1400.0))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--prep-steps", type=int, default=800)
    p.add_argument("--heat-steps", type=int, default=2000)
    p.add_argument("--dt-fs", type=float, default=4.0)
    p.add_argument("--prep-kelvin", type=float, default=None,
                   help="temperature the half-melted cell is brought to (default: the middle "
                        "of --temps; above T_m keeps the molten half molten)")
    p.add_argument("--ensemble", default="npt")
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--skip-emt", action="store_true", help="only the --model study")
    a = p.parse_args()
    main(a.reps, a.temps, a.steps, a.prep_steps, a.heat_steps, a.dt_fs, a.ensemble, a.model,
         a.out, skip_emt=a.skip_emt, prep_kelvin=a.prep_kelvin)
