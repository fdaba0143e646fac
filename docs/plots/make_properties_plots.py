"""Plots for docs/properties.md: the phonon band structure and DOS of EMT copper (force
constants from the exact Hessian through phonopy) and its Birch–Murnaghan equation of state.

Run from the repository root: ``python docs/plots/make_properties_plots.py`` (a few seconds);
it writes ``docs/img/properties_phonons.png`` and ``docs/img/properties_eos.png``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402

from jaxpot import units  # noqa: E402
from jaxpot.analysis import crystal, phonons  # noqa: E402
from jaxpot.potentials.emt import emt  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "img"


def phonon_plot(pot, params, atoms) -> None:
    ph = phonons.phonopy_from_model(pot, params, atoms, [4, 4, 4])
    bs = phonons.band_structure(ph, atoms, path="GXWKGL", npoints=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dos = phonons.total_dos(ph, mesh=(24, 24, 24), sigma=0.08)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(6.4, 3.4), sharey=True,
                                  gridspec_kw={"width_ratios": [3, 1]})
    ax.plot(bs["x"], bs["frequencies"], color="C0", lw=1.2)
    for x in bs["label_x"]:
        ax.axvline(x, color="0.7", lw=0.6)
    ax.set_xticks(bs["label_x"], [r"$\Gamma$" if s == "G" else s for s in bs["labels"]])
    ax.set_xlim(bs["x"][0], bs["x"][-1])
    ax.set_ylabel("frequency (THz)")
    ax.set_title("EMT Cu: exact force constants (4×4×4) via phonopy", fontsize=9)
    ax2.plot(dos["dos"], dos["frequencies"], color="C1", lw=1.2)
    ax2.set_xlabel("DOS (1/THz)")
    ax2.set_ylim(0, None)
    fig.tight_layout()
    fig.savefig(OUT / "properties_phonons.png", dpi=90)
    plt.close(fig)


def eos_plot(pot, params, atoms) -> None:
    e = crystal.equation_of_state(pot, params, atoms, strain=0.06, points=11, relax=False)
    v = np.linspace(e["volumes"].min(), e["volumes"].max(), 200)
    fit = crystal.bm_energy(v, e["E0"], e["V0"], e["B"] * units.GPa, e["B_prime"])
    fig, ax = plt.subplots(figsize=(4.6, 3.3))
    ax.plot(e["volumes"], e["energies"], "o", label="jaxpot EMT")
    ax.plot(v, fit, "-", label=(f"Birch–Murnaghan: B = {e['B']:.1f} GPa,\n"
                                f"B′ = {e['B_prime']:.2f}, V₀ = {e['V0']:.3f} Å³"))
    ax.set_xlabel("volume per atom (Å³)")
    ax.set_ylabel("energy per atom (eV)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "properties_eos.png", dpi=90)
    plt.close(fig)


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    OUT.mkdir(parents=True, exist_ok=True)
    pot = emt(["Cu"])
    params = pot.init(None, None)
    atoms = bulk("Cu", "fcc", a=3.59)
    phonon_plot(pot, params, atoms)
    eos_plot(pot, params, atoms)


if __name__ == "__main__":
    main()
