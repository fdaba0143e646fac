# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Liquid argon with Lennard-Jones: NVT then NVE
#
# We melt an fcc argon crystal at liquid density with a Langevin thermostat, continue the same
# trajectory at constant energy (NVE, velocity Verlet), then switch to a Nosé–Hoover chain
# (NVT). Every run is one call to `jaxpot.md.simulate`, which fuses the steps in jitted
# `lax.scan` blocks with a neighbour list that is rebuilt on the fly and never silently
# overflows. At the end we plot total, potential and kinetic energy and the temperature against
# time.
#
# Run it as a script (`python examples/nve_lj.py`) or open it as a notebook with jupytext.

# %%
from __future__ import annotations

import json
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")  # write PNG files; no display needed
import matplotlib.pyplot as plt
import numpy as np
from ase.build import bulk

from jaxpot import System, md, potentials

# %% [markdown]
# ## The model and the starting structure
#
# Argon's classic Lennard-Jones parameters are σ = 3.4 Å and ε = 0.0104 eV (≈ 120 K); the cutoff
# is 2.5 σ. A cubic fcc cell with a = 5.8 Å has the density of liquid argon near its boiling
# point (≈ 1.37 g/cm³), so the crystal melts quickly at 120 K.

# %%
SIGMA, EPSILON = 3.4, 0.0104  # Å, eV


def make_system(repeat: int = 4, lattice_constant: float = 5.8) -> System:
    """An fcc argon crystal with ``4 * repeat**3`` atoms (no edges: MD builds its own list)."""
    atoms = bulk("Ar", "fcc", a=lattice_constant, cubic=True).repeat(repeat)
    return System.from_ase(atoms)


# %% [markdown]
# ## Three runs, one trajectory
#
# Each run starts from the previous run's final structure and momenta. The log holds
# `time_fs`, `potential_energy_ev`, `kinetic_energy_ev`, `total_energy_ev`, `temperature_k` and
# (for periodic cells) `pressure_gpa`, one row every `log_every` steps.

# %%


def run_phases(steps: int, *, repeat: int, dt_fs: float, temperature_kelvin: float,
               log_every: int, seed: int):
    pot = potentials.lennard_jones(sigma=SIGMA, epsilon=EPSILON, cutoff=2.5 * SIGMA)
    system = make_system(repeat)
    params = pot.init(jax.random.key(seed), system)
    common = dict(dt_fs=dt_fs, temperature_kelvin=temperature_kelvin, steps=steps,
                  log_every=log_every, seed=seed)
    phases = {}
    momenta = None
    for name, ensemble in [("Langevin NVT (melt)", "langevin"), ("NVE", "nve"),
                           ("Nosé–Hoover NVT", "nose-hoover")]:
        res = md.simulate(pot, params, system, ensemble=ensemble, momenta=momenta, **common)
        phases[name] = res
        system, momenta = res.final_system, res.final_state.momenta
        print(f"{name:22s} T = {res.log['temperature_k'][-1]:7.1f} K   "
              f"E = {res.log['total_energy_ev'][-1]:9.4f} eV   "
              f"{res.atom_steps_per_s:10.3g} atom-steps/s   (compile {res.compile_s:.1f} s)")
    return phases, int(np.sum(np.asarray(system.atom_mask)))


# %% [markdown]
# ## Plots and a summary
#
# In the NVE segment the total energy is flat while potential and kinetic energy exchange; the
# drift per atom is the number to watch when choosing a time step.

# %%


def plot(phases: dict, out_dir: Path, n_atoms: int) -> list[Path]:
    fig, (ax_e, ax_t) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    offset = 0.0
    for i, (name, res) in enumerate(phases.items()):
        log, color = res.log, f"C{i}"
        t_ps = (log["time_fs"] + offset) / 1000.0
        ax_e.plot(t_ps, log["total_energy_ev"] / n_atoms, color=color)
        ax_e.plot(t_ps, log["potential_energy_ev"] / n_atoms, color=color, ls="--", lw=0.8)
        ax_t.plot(t_ps, log["temperature_k"], color=color, label=name)
        offset += float(log["time_fs"][-1])
        ax_e.axvline(offset / 1000.0, color="grey", lw=0.5)
        ax_t.axvline(offset / 1000.0, color="grey", lw=0.5)
    ax_e.set_ylabel("energy per atom (eV)\n(solid: total, dashed: potential)")
    ax_t.set_ylabel("temperature (K)")
    ax_t.set_xlabel("time (ps)")
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    energy_png = out_dir / "energy_temperature.png"
    fig.savefig(energy_png, dpi=120)
    plt.close(fig)

    nve = phases["NVE"].log
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(nve["time_fs"] / 1000.0,
            (nve["total_energy_ev"] - nve["total_energy_ev"][0]) / n_atoms * 1e3)
    ax.set_xlabel("time in the NVE run (ps)")
    ax.set_ylabel("E(t) − E(0) per atom (meV)")
    fig.tight_layout()
    drift_png = out_dir / "nve_drift.png"
    fig.savefig(drift_png, dpi=120)
    plt.close(fig)
    return [energy_png, drift_png]


def main(steps: int = 2000, out_dir: str | Path = "nve_lj_output", *, repeat: int = 4,
         dt_fs: float = 5.0, temperature_kelvin: float = 120.0, log_every: int = 20,
         seed: int = 0) -> dict:
    """Run Langevin, NVE and Nosé–Hoover segments of ``steps`` steps each; write plots.

    Args:
      steps: time steps per segment.
      out_dir: folder for ``energy_temperature.png``, ``nve_drift.png`` and ``summary.json``.
      repeat: the cubic fcc cell is repeated ``repeat`` times along each axis
        (``4 * repeat**3`` atoms).
      dt_fs: time step, fs.
      temperature_kelvin: thermostat (and initial) temperature, K.
      log_every: steps between log rows.
      seed: seed of the initial momenta and the Langevin noise.

    Returns:
      The summary written to ``summary.json``: atoms, steps, mean temperatures of each segment,
      NVE drift per atom (eV), speed, and the paths of the plots.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_every = max(1, min(log_every, steps))
    phases, n_atoms = run_phases(steps, repeat=repeat, dt_fs=dt_fs,
                                 temperature_kelvin=temperature_kelvin, log_every=log_every,
                                 seed=seed)
    pngs = plot(phases, out, n_atoms)
    nve = phases["NVE"].log
    summary = {
        "n_atoms": n_atoms,
        "steps_per_segment": steps,
        "dt_fs": dt_fs,
        "mean_temperature_k": {k: float(np.mean(r.log["temperature_k"][1:]))
                               for k, r in phases.items()},
        "nve_max_drift_ev_per_atom": float(
            np.max(np.abs(nve["total_energy_ev"] - nve["total_energy_ev"][0])) / n_atoms),
        "nve_atom_steps_per_s": float(phases["NVE"].atom_steps_per_s),
        "plots": [str(p) for p in pngs],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


# %%
if __name__ == "__main__":
    main()
