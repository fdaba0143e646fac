"""Plots for docs/analysis.md: the RDF and MSD of a Lennard-Jones argon liquid simulated with
jaxpot (RDF recorded in the fused loop, against ASE's get_rdf of the saved frames), and a PMF of
a double well from umbrella windows (WHAM with bootstrap errors, pymbar's MBAR, the exact curve).

Run from the repository root: ``python docs/plots/make_analysis_plots.py`` (a minute or two on a
CPU); it writes ``docs/img/analysis_rdf.png``, ``analysis_msd.png`` and ``analysis_pmf.png``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.geometry.rdf import get_rdf  # noqa: E402

from jaxpot import System, md, potentials, units  # noqa: E402
from jaxpot.analysis import structure, transport, wham  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "img"


def liquid_argon():
    """256 LJ argon atoms at Rahman's state point (94.4 K, 1.374 g/cm³), melted first."""
    rho = 1.374 / (39.948 * 1.66053907e-24) * 1e-24
    atoms = bulk("Ar", "fcc", a=(4 / rho) ** (1 / 3), cubic=True).repeat(4)
    system = System.from_ase(atoms)
    pot = potentials.lennard_jones(sigma=3.4, epsilon=120.0 * units.kB, cutoff=2.25 * 3.4)
    params = pot.init(None, system)
    eq = md.simulate(pot, params, system, ensemble="langevin", dt_fs=10.0,
                     temperature_kelvin=lambda s: np.where(s < 800, 250.0, 94.4), steps=2000,
                     log_every=50)
    obs = structure.rdf_observer(eq.final_system, r_max=8.0, n_bins=80)
    res = md.simulate(pot, params, eq.final_system, dt_fs=10.0, temperature_kelvin=94.4,
                      momenta=eq.final_state.momenta, steps=4000, log_every=10,
                      trajectory_every=10, observers=[obs])
    return res, obs


def rdf_plot(res, obs) -> None:
    g_loop = structure.rdf_from_log(res.log["rdf"], obs)
    frames = res.to_atoms()[::10]
    g_ase, r = get_rdf(frames, 8.0, 80)
    n_c = structure.coordination_number(g_loop)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(g_loop.r, g_loop.total, lw=2, label="jaxpot, in the MD loop (every 10 steps)")
    ax.plot(r, g_ase, "k.", ms=3, label="ASE get_rdf, every 100th step")
    ax.axhline(1.0, color="0.7", lw=0.8)
    ax.set(xlabel="r (Å)", ylabel="g(r)",
           title=f"LJ argon, 94.4 K: first-shell coordination {n_c:.1f}")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "analysis_rdf.png", dpi=110)


def msd_plot(res) -> None:
    x = res.trajectory.positions
    dt = 100.0  # fs between frames
    m = transport.msd(x)
    d = transport.diffusion_coefficient(x, dt, n_blocks=4, fit=(1500.0, 4500.0))
    t = np.arange(len(m)) * dt
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(t / 1000, m, lw=2, label="MSD")
    fit = (t >= d.fit[0]) & (t <= d.fit[1])
    ax.plot(t[fit] / 1000, 6 * d.D * t[fit] + d.intercept, "k--",
            label=f"D = {d.D * 1e4:.2f} ± {d.error * 1e4:.2f} ×10⁻⁵ cm²/s (Rahman: 2.43)")
    ax.set(xlabel="t (ps)", ylabel="MSD (Å²)", xlim=(0, t[len(t) // 2] / 1000),
           ylim=(0, m[len(t) // 2] * 1.1))
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "analysis_msd.png", dpi=110)


def pmf_plot() -> None:
    kT, eb = 0.025, 0.1
    centers = np.linspace(-1.6, 1.6, 17)
    grid = np.linspace(-2.6, 2.6, 20001)
    rng = np.random.default_rng(0)
    data = []
    for c in centers:
        w = np.exp(-(eb * (grid ** 2 - 1) ** 2 + 0.5 * (grid - c) ** 2) / kT)
        cdf = np.cumsum(w)
        data.append(np.interp(rng.random(1500) * cdf[-1], cdf, grid))
    pmf = wham.wham(data, centers, 1.0, kT, bins=40, range=(-1.5, 1.5), n_bootstrap=40)
    mb = wham.mbar_pmf(data, centers, 1.0, kT, bins=40, range=(-1.5, 1.5))
    b = wham.barrier(pmf, (-1.6, -0.4), (0.4, 1.6))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    s = np.linspace(-1.5, 1.5, 400)
    ax.plot(s, eb * (s ** 2 - 1) ** 2, "k-", lw=1, label="exact")
    ax.errorbar(pmf.s, pmf.F, yerr=2 * pmf.error, fmt="o", ms=3, label="WHAM ± 2σ (bootstrap)")
    ax.plot(mb.s, mb.F, "x", ms=4, label="pymbar MBAR")
    ax.set(xlabel="s (Å)", ylabel="F(s) (eV)",
           title=f"barrier {b['barrier'] * 1000:.1f} ± {b['error'] * 1000:.1f} meV (exact 100)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "analysis_pmf.png", dpi=110)


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    OUT.mkdir(exist_ok=True)
    pmf_plot()
    res, obs = liquid_argon()
    rdf_plot(res, obs)
    msd_plot(res)


if __name__ == "__main__":
    main()
