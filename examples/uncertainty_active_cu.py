# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Knowing what the model does not know: uncertainty and active learning on copper
#
# A potential fitted to a few frames is trustworthy only near them. This example
#
# 1. fits a GAP model (a sparse Gaussian process, which states a posterior variance) to 20
#    frames of 32-atom copper labelled by ASE's EMT;
# 2. asks it how sure it is on held-back frames: some like the training frames, some hotter or
#    strongly strained (absent from training). The predicted force spread and the Mahalanobis
#    distance of each atom's SOAP features from the training distribution should both rank the
#    frames by their actual error and flag the unfamiliar ones;
# 3. lets it grow its own training set: Langevin MD walkers run with the model, the run stops
#    when the spread passes a threshold, EMT labels that frame, the model is refitted, and the
#    walkers go on (`jaxpot.active`).
#
# Run it as a script (`python examples/uncertainty_active_cu.py`) or as a notebook (jupytext; on
# Colab: `pip install "jaxpot @ git+<repository URL>"` first). The defaults take a few minutes on
# one CPU core. Neural models say the same things when trained as ensembles
# (`jaxpot train --ensemble 4`); see `docs/uncertainty.md`.

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
from ase.calculators.emt import EMT

from jaxpot import active, data
from jaxpot.uncertainty.calibration import auroc, spearman
from jaxpot.uncertainty.distance import fit_feature_density, mahalanobis
from jaxpot.uncertainty.evaluate import structure_uncertainty

# %% [markdown]
# ## Frames labelled by EMT
# Training frames: 2×2×2 cubic cells, atoms displaced by 0.05 Å, lattice within ±1 %. Held-back:
# the same kind, and unfamiliar ones (0.25 Å displacements, as in a very hot crystal; ±8 % strain).


# %%
def cu_frames(n: int, *, rattle: float, strain: tuple[float, float], seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        s = 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(*strain)
        a.set_cell(a.cell * s, scale_atoms=True)
        a.rattle(rattle, seed=int(rng.integers(1 << 30)))
        a.calc = EMT()
        a.get_potential_energy()
        a.get_forces()
        a.get_stress()
        out.append(a)
    return out


# %% [markdown]
# ## How sure is the fitted model?


# %%
def rank_uncertainty(pot, params, train, held, is_new) -> dict:
    density = fit_feature_density(pot, params, data.from_atoms(train, cutoff=pot.cutoff))
    rows = structure_uncertainty(pot, params, data.from_atoms(held, cutoff=pot.cutoff).structures,
                                 score=mahalanobis(pot, density))
    err = np.array([1e3 * np.mean(np.abs(r["force_error"])) for r in rows])
    std = np.array([1e3 * np.mean(r["forces_std"]) for r in rows])
    maha = np.array([float(np.max(r["mahalanobis"])) for r in rows])
    return {"force_mae_mev": err, "force_std_mev": std, "mahalanobis": maha,
            "spearman_std": spearman(std, err), "spearman_mahalanobis": spearman(maha, err),
            "auroc_std": auroc(std, is_new), "auroc_mahalanobis": auroc(maha, is_new)}


def plot_ranking(r: dict, is_new: np.ndarray, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "force_std_mev", "predicted force spread (meV/Å)"),
                           (axes[1], "mahalanobis", "Mahalanobis distance (max over atoms)")):
        for new, c, name in ((False, "C0", "like training"), (True, "C3", "hot / strained")):
            m = is_new == new
            ax.loglog(r[key][m], r["force_mae_mev"][m], "o", color=c, label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("actual force MAE (meV/Å)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# %% [markdown]
# ## Growing the training set where the model is unsure


# %%
def main(out_dir="uncertainty_active_output", calls: int = 8, steps: int = 300,
         temperatures=(300.0, 900.0)) -> dict:
    with jax.enable_x64(True):  # GAP's variances need float64
        return _run(Path(out_dir), calls, steps, temperatures)


def _run(out: Path, calls: int, steps: int, temperatures) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    train = cu_frames(20, rattle=0.05, strain=(0.0, 0.01), seed=0)
    held = (cu_frames(8, rattle=0.05, strain=(0.0, 0.01), seed=1)
            + cu_frames(4, rattle=0.25, strain=(0.0, 0.01), seed=2)
            + cu_frames(4, rattle=0.05, strain=(0.07, 0.09), seed=3))
    is_new = np.array([False] * 8 + [True] * 8)
    fit = active.gap_fitter()
    pot, params = fit(train)
    r = rank_uncertainty(pot, params, train, held, is_new)
    plot_ranking(r, is_new, out / "uncertainty_ranking.png")
    cfg = active.ActiveConfig(temperatures=tuple(temperatures), steps_per_walker=steps,
                              criteria=active.StoppingCriteria(max_oracle_calls=calls))
    result = active.run_active(train, "ase.calculators.emt:EMT", fit, str(out / "active"), cfg,
                               test_frames=held, verbose=False)
    summary = {k: float(r[k]) for k in ("spearman_std", "spearman_mahalanobis", "auroc_std",
                                        "auroc_mahalanobis")}
    rows = result.history
    summary.update(stop_reason=str(result.stop_reason), n_iterations=len(rows),
                   oracle_calls=int(rows[-1]["oracle_calls"]) if rows else 0,
                   n_data=len(result.frames))
    if rows:
        summary.update(test_force_rmse_start_mev=1e3 * float(rows[0]["test_force_rmse"]),
                       test_force_rmse_end_mev=1e3 * float(rows[-1]["test_force_rmse"]))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
