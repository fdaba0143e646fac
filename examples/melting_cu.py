# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # The melting point of EMT copper by solid–liquid coexistence
#
# A crystal and its melt coexist only at T_m: above it the interfaces advance into the crystal,
# below it the liquid freezes. We build an elongated fcc copper cell whose upper half is molten
# (the lower half tethered to its lattice sites while the upper half melts at 2500 K), release
# it at several temperatures, follow the fraction of crystalline atoms (an atom is solid when
# at least 7 of its bonds are "solid-like": the normalised overlap of the two atoms' Steinhardt
# q6 vectors exceeds 0.7), and find where that fraction stands still.
# The potential is jaxpot's exact JAX port of ASE's EMT (`jaxpot.potentials.emt`); pass
# `model=` a jaxpot model file trained on EMT copper to measure that model's T_m too.
#
# Run it as a script (`python examples/melting_cu.py`) or open it as a notebook with jupytext.
# The default sizes take about ten minutes for EMT on one CPU core (a trained NequIP model,
# about 70 times slower per step here, takes longer); `bench/melting_cu.py` runs the study of
# `docs/melting.md`: T_m(EMT) = 1384 ± 21 K, T_m(NequIP trained on cu_emt) = 1294 ± 15 K.

# %%
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write PNG files; no display needed
import matplotlib.pyplot as plt
import numpy as np
from ase.build import bulk

from jaxpot import System
from jaxpot.analysis import melting
from jaxpot.files import atomic_write_text
from jaxpot.potentials.emt import emt

# %% [markdown]
# ## One potential: half-melted cell, coexistence runs, heating curve
#
# `crystal_at` first scales the crystal to its NPT cell in the middle of the window (built at
# the 0 K lattice, the molten half would be compressed and recrystallise). `classifier_check`
# runs a free crystal and the liquid at the middle temperature (NPT): their solid fractions
# must read about 1 and 0. `half_melted_cell` returns the coexisting cell, brought to a
# temperature above the window (`prep_kelvin`, default 100 K above it) so that its molten half
# stays molten; `coexistence` runs it
# at each temperature (NPT at 0 GPa, each cell length on its own, so that the liquid and the
# crystal find their own densities) and fits T_m; `heating_curve` heats a perfect crystal
# until it collapses (the superheating limit, an upper bound on T_m).


# %%
def study(potential, params, *, reps, temps, steps, prep_steps, heat_steps, dt_fs, ensemble,
          check_steps, prep_kelvin):
    crystal = System.from_ase(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(reps))
    npt = {"pressure_gpa": 0.0, "cell_dof": "aniso"} if ensemble == "npt" else {}
    if ensemble == "npt":  # the crystal at its own density in the window, not at 0 K
        crystal = melting.crystal_at(potential, params, crystal,
                                     temperature_kelvin=float(np.mean(temps)),
                                     steps=prep_steps, dt_fs=dt_fs)
    check = (float("nan"), float("nan"))
    if check_steps:  # a free crystal and the liquid at the middle temperature: ~1 and ~0
        check = melting.classifier_check(potential, params, crystal,
                                         temperature_kelvin=float(np.mean(temps)),
                                         steps=check_steps, dt_fs=dt_fs, ensemble=ensemble,
                                         **npt)
    cell = melting.half_melted_cell(
        potential, params, crystal, melt_temperature_kelvin=2500.0,
        temperature_kelvin=prep_kelvin or max(temps) + 100.0, melt_steps=prep_steps,
        steps=max(1, prep_steps // 2), dt_fs=dt_fs, k=2.0)
    co = melting.coexistence(potential, params, cell, temps, steps=steps, ensemble=ensemble,
                             dt_fs=dt_fs, log_every=max(5, steps // 30), **npt)
    out = {"check_crystal": check[0], "check_liquid": check[1],
           "temperatures": co.temperatures.tolist(),
           "rates_per_ps": co.rates.tolist(), "rate_errors_per_ps": co.rate_errors.tolist(),
           "t_melt": co.melting_point, "t_melt_error": co.melting_point_error,
           "times_ps": co.times_ps.tolist(), "fractions": co.fractions.tolist(),
           "wall_s": cell.wall_s + co.wall_s}
    if heat_steps:
        heat = melting.heating_curve(potential, params, crystal, t_start=800.0,
                                     t_end=2.0 * max(temps), steps=heat_steps,
                                     ensemble=ensemble, dt_fs=dt_fs,
                                     log_every=max(5, heat_steps // 40), **npt)
        out.update(superheating=heat.superheating, wall_s=out["wall_s"] + heat.wall_s)
    return out


# %% [markdown]
# ## Run and plot


# %%
def main(reps=(3, 3, 6), temps=(1250.0, 1350.0, 1450.0, 1550.0), steps=1000, prep_steps=600,
         heat_steps=1500, dt_fs=4.0, ensemble="npt", model=None, out_dir="melting_cu_output",
         check_steps=600, prep_kelvin=None):
    """Coexistence study of EMT copper (and of ``model``); writes summary.json and a plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pots = {"EMT": (emt(["Cu"]), None)}
    if model is not None:
        import jaxpot

        pots["model"] = jaxpot.load_model(model)
    summary = {}
    for name, (pot, params) in pots.items():
        params = pot.init(None, None) if params is None else params
        summary[name] = study(pot, params, reps=reps, temps=list(temps), steps=steps,
                              prep_steps=prep_steps, heat_steps=heat_steps, dt_fs=dt_fs,
                              ensemble=ensemble, check_steps=check_steps,
                              prep_kelvin=prep_kelvin)
    fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 3.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], summary.items(), strict=True):
        for t, f in zip(r["temperatures"], r["fractions"], strict=True):
            ax.plot(r["times_ps"], f, label=f"{t:.0f} K")
        ax.set(xlabel="t (ps)", ylabel="solid fraction",
               title=f"{name}: T_m = {r['t_melt']:.0f} ± {r['t_melt_error']:.0f} K")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "solid_fraction.png", dpi=80)
    plt.close(fig)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary


# %%
if __name__ == "__main__":
    result = main()
    for name, r in result.items():
        print(f"{name}: T_m = {r['t_melt']:.0f} ± {r['t_melt_error']:.0f} K, "
              f"superheating {r.get('superheating', float('nan')):.0f} K, {r['wall_s']:.0f} s")
