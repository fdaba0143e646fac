"""Unwrapping, MSD (against a direct double loop), D of Brownian walks and of free Langevin
particles (analytic kT/(mγ), Einstein and Green–Kubo), the VDOS peak of a damped oscillation."""

import numpy as np
import pytest
from ase.geometry import wrap_positions

from jaxpot import units
from jaxpot.analysis import transport

CELL = np.array([[8.0, 0.0, 0.0], [2.5, 7.5, 0.0], [-1.5, 2.0, 9.0]])


def _walk(n_frames, n_atoms, step, seed):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(scale=step, size=(n_frames, n_atoms, 3)), axis=0)


def test_unwrap_recovers_a_walk_in_a_triclinic_cell():
    x = _walk(200, 10, 0.7, seed=0) + 3.0
    wrapped = np.stack([wrap_positions(f, CELL, pbc=True) for f in x])
    assert np.abs(wrapped - x).max() > 5.0  # atoms did cross the boundaries
    u = transport.unwrap(wrapped, CELL)
    np.testing.assert_allclose(u[0], wrapped[0])
    np.testing.assert_allclose(u - u[0], x - x[0], atol=1e-9)


def test_unwrap_with_a_changing_cell():
    rng = np.random.default_rng(1)
    f, n = 50, 6
    frac = 0.3 + np.cumsum(rng.normal(scale=0.05, size=(f, n, 3)), axis=0)
    cells = CELL[None] * (1 + 0.01 * np.sin(np.arange(f)))[:, None, None]
    x = np.einsum("fni,fij->fnj", frac, cells)
    wrapped = np.einsum("fni,fij->fnj", frac - np.floor(frac), cells)
    np.testing.assert_allclose(transport.unwrap(wrapped, cells) - wrapped[:1] + x[:1], x,
                               atol=1e-9)


def test_msd_equals_a_direct_double_loop():
    x = _walk(60, 5, 0.3, seed=2)
    got = transport.msd(x, remove_drift=False)
    ref = np.array([np.mean([np.sum((x[t0 + t] - x[t0]) ** 2, -1).mean()
                             for t0 in range(60 - t)]) for t in range(60)])
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    sel = np.array([True, False, True, False, False])
    ref_sel = np.mean(np.sum((x[7:, sel] - x[:-7, sel]) ** 2, -1))
    assert transport.msd(x, mask=sel, remove_drift=False)[7] == pytest.approx(ref_sel)


def test_diffusion_of_brownian_walks_within_the_error_bar():
    d_true, dt = 0.02, 2.0  # Å²/fs, fs: each step has variance 2 D dt per direction
    z = []
    for seed in range(20):
        x = _walk(1000, 40, np.sqrt(2 * d_true * dt), seed=10 + seed)
        res = transport.diffusion_coefficient(x, dt, n_blocks=5)
        assert 0 < res.error < 0.15 * d_true
        z.append((res.D - d_true) / res.error)
    # the error bar is calibrated: z scatters like a t variable with 4 degrees of freedom
    z = np.asarray(z)
    assert np.mean(abs(z) < 2.0) >= 0.8 and 0.6 < z.std() < 1.6


def test_vdos_peaks_at_the_oscillation_frequency():
    dt, nu0 = 1.0, 5.0  # fs, THz
    t = np.arange(4000) * dt
    c = np.cos(2 * np.pi * nu0 * 1e-3 * t) * np.exp(-t / 800.0)
    nu, wn, dos = transport.vibrational_dos(c, dt)
    assert nu[np.argmax(dos)] == pytest.approx(nu0, abs=0.02)
    assert wn[np.argmax(dos)] == pytest.approx(nu0 * 33.35641, rel=0.01)
    assert np.trapezoid(dos, nu) == pytest.approx(1.0)


@pytest.mark.slow  # a long Langevin run; the MSD and error-bar tests stay in the default run
def test_free_langevin_particles_diffuse_at_kt_over_m_gamma():
    """BAOAB Langevin without forces: D = kT/(mγ) exactly, C(t) = (3kT/m) e^{−γt}."""
    import jax.numpy as jnp

    from jaxpot import System, md
    from jaxpot.potential import Potential

    zero = Potential(init=lambda key, s: {}, energy=lambda p, s: 0.0 * jnp.sum(s.positions),
                     cutoff=1.0, config={"name": "zero", "kwargs": {}})
    g = np.arange(4) * 5.0
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    system = System.from_arrays(grid, [18] * 64, cell=np.eye(3) * 20.0, pbc=True)
    kelvin, gamma, dt = 300.0, 0.01, 5.0
    res = md.simulate(zero, {}, system, ensemble="langevin", dt_fs=dt, friction_per_fs=gamma,
                      temperature_kelvin=kelvin, steps=2000, log_every=5, trajectory_every=5)
    mass = system.masses[0]
    d_exact = units.kB * kelvin / float(mass) * units.fs ** 2 / gamma  # Å²/fs
    frames_dt = 5 * dt
    ein = transport.diffusion_coefficient(res.trajectory.positions, frames_dt, n_blocks=4,
                                          fit=(300.0, 1200.0))
    assert abs(ein.D - d_exact) < 3 * ein.error + 0.03 * d_exact
    c = transport.vacf(transport.velocities_of(res))
    assert c[0] == pytest.approx(3 * units.kB * kelvin / float(mass) * units.fs ** 2, rel=0.1)
    gk = transport.green_kubo_diffusion(c, frames_dt)
    plateau = gk[(np.arange(c.size) * frames_dt > 500) & (np.arange(c.size) * frames_dt < 900)]
    assert plateau.mean() == pytest.approx(d_exact, rel=0.12)


@pytest.mark.slow
def test_lj_argon_diffusion_matches_rahman_1964():
    """Rahman, Phys. Rev. 136, A405 (1964): 864 LJ argon atoms (σ = 3.4 Å, ε/k = 120 K,
    r_c = 2.25σ), 94.4 K, 1.374 g/cm³: D = 2.43e-5 cm²/s. NVE production after a Langevin
    equilibration; we allow our block error bar (3σ) plus 10 % for the literature value's own
    statistics, the cutoff treatment (ours is shifted) and the finite size."""
    from ase.build import bulk

    from jaxpot import System, md, potentials

    mass = 39.948
    rho = 1.374 / (mass * 1.66053907e-24) * 1e-24  # atoms/Å³
    atoms = bulk("Ar", "fcc", a=(4 / rho) ** (1 / 3), cubic=True).repeat(6)  # 864 atoms
    system = System.from_ase(atoms)
    pot = potentials.lennard_jones(sigma=3.4, epsilon=120.0 * units.kB, cutoff=2.25 * 3.4)
    params = pot.init(None, system)
    # melt the lattice (a hot, then a cooling Langevin run), then equilibrate at 94.4 K
    eq = md.simulate(pot, params, system, ensemble="langevin", dt_fs=10.0, friction_per_fs=0.01,
                     temperature_kelvin=lambda s: np.where(s < 1000, 250.0, 94.4), steps=3000,
                     log_every=50)
    res = md.simulate(pot, params, eq.final_system, dt_fs=10.0, temperature_kelvin=94.4,
                      momenta=eq.final_state.momenta, steps=8000, log_every=10,
                      trajectory_every=10)
    t_mean = res.log["temperature_k"].mean()
    assert abs(t_mean - 94.4) < 4.0
    d = transport.diffusion_coefficient(res.trajectory.positions, 100.0, n_blocks=5,
                                        fit=(2000.0, 8000.0))
    d_cm2 = d.D * transport.CM2_PER_S
    print(f"D = {d_cm2:.3e} ± {d.error * transport.CM2_PER_S:.1e} cm²/s at {t_mean:.1f} K "
          f"(Rahman 1964: 2.43e-5)")
    assert abs(d_cm2 - 2.43e-5) < 3 * d.error * transport.CM2_PER_S + 0.1 * 2.43e-5
