"""CVs and the harmonic bias (forces by finite differences), WHAM on synthetic umbrella data
with a known PMF (within its bootstrap error), WHAM against pymbar's MBAR on the same data, and
the barrier of a 1-D double well sampled by jaxpot's own umbrella MD (Langevin)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpot import System, energy_and_forces, potentials, units
from jaxpot.analysis import bias, wham
from jaxpot.potential import Potential

EB, A, KT = 0.1, 1.0, 0.025  # barrier (eV), well position (Å), kT (eV)
GRID = np.linspace(-2.6, 2.6, 20001)


def _double_well(s):
    return EB * ((s / A) ** 2 - 1.0) ** 2


def _synthetic(centers, k, n, seed):
    """Independent samples of p_k(s) ∝ exp(−(F(s) + ½k(s − c_k)²)/kT) by inverse CDF."""
    rng = np.random.default_rng(seed)
    out = []
    for c in centers:
        w = np.exp(-(_double_well(GRID) + 0.5 * k * (GRID - c) ** 2) / KT)
        cdf = np.cumsum(w)
        out.append(np.interp(rng.random(n) * cdf[-1], cdf, GRID))
    return np.stack(out)


def _exact_binned(edges):
    """−kT ln(mean of e^{−F/kT} over each bin): the binned PMF WHAM estimates."""
    F = np.empty(len(edges) - 1)
    for b in range(len(F)):
        s = np.linspace(edges[b], edges[b + 1], 201)
        F[b] = -KT * np.log(np.mean(np.exp(-_double_well(s) / KT)))
    return F


CENTERS = np.linspace(-1.6, 1.6, 17)


def test_wham_recovers_a_known_pmf_within_its_bootstrap_error():
    data = _synthetic(CENTERS, 1.0, 1500, seed=0)
    pmf = wham.wham(data, CENTERS, 1.0, KT, bins=30, range=(-1.5, 1.5), n_bootstrap=30)
    exact = _exact_binned(pmf.edges)
    exact -= exact.min()  # both aligned on their minimum, as the bootstrap resamples are
    assert np.all(pmf.error > 0) and pmf.error.max() < 0.01
    z = (pmf.F - exact) / pmf.error
    # errors of neighbouring bins are correlated (a window's offset moves a whole stretch),
    # so the bound is on every bin rather than on a fraction
    assert np.all(np.abs(z) < 4.5)
    assert np.mean(np.abs(z) < 2.0) >= 0.5
    b = wham.barrier(pmf, (-1.6, -0.4), (0.4, 1.6))
    assert b["barrier"] == pytest.approx(EB, abs=3 * b["error"] + 0.005)
    # non-trivial: the pooled biased histogram alone shows less than half the barrier
    hist = np.histogram(data.ravel(), bins=pmf.edges)[0]
    assert KT * np.log(hist.max() / hist[len(hist) // 2]) < 0.5 * EB


def test_wham_agrees_with_pymbar_mbar():
    pytest.importorskip("pymbar")
    data = _synthetic(CENTERS, 1.0, 800, seed=1)
    w = wham.wham(data, CENTERS, 1.0, KT, bins=32, range=(-1.6, 1.6))
    m = wham.mbar_pmf(data, CENTERS, 1.0, KT, bins=32, range=(-1.6, 1.6))
    d = w.F - m.F
    assert np.nanmax(np.abs(d - np.nanmean(d))) < 0.1 * KT
    np.testing.assert_allclose(w.f, m.f, atol=0.05 * KT)


def test_tst_rate_of_the_exact_pmf_matches_the_harmonic_limit():
    # On the exact PMF, the integral TST rate approaches ω/2π e^{−Eb/kT} for Eb ≫ kT.
    kT, m = 0.005, 2.0
    s = np.linspace(-1.5, 1.5, 3001)
    edges = np.concatenate([[s[0] - 5e-4], 0.5 * (s[1:] + s[:-1]), [s[-1] + 5e-4]])
    pmf = wham.PMF(s=s, edges=edges, F=_double_well(s), error=np.zeros_like(s), f=np.zeros(1),
                   iterations=0)
    out = wham.tst_rate(pmf, kT, m, (-1.5, -0.2), (0.2, 1.5))
    omega = np.sqrt(8 * EB / A ** 2 / m) * units.fs * 1e15  # rad/s
    harmonic = omega / (2 * np.pi) * np.exp(-EB / kT)
    assert out["rate_per_s"] == pytest.approx(harmonic, rel=0.1)


def _springs():
    """A cheap analytic model (no edges): springs from every atom to the origin."""
    return Potential(init=lambda key, s: {}, cutoff=2.9, config={"name": "springs", "kwargs": {}},
                     energy=lambda p, s: 0.1 * jnp.sum(s.positions ** 2))


def _cv_system():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 3)) * 1.2
    return System.from_arrays(x, [6, 1, 1, 8, 1], cell=np.eye(3) * 6.0, pbc=True)


@pytest.mark.parametrize("cv", [bias.distance(0, 3), bias.angle(1, 0, 3),
                                bias.dihedral(1, 0, 3, 4), bias.coordination([0], [1, 2, 4], 1.5),
                                bias.from_positions(lambda x: x[0, 0] - x[1, 2] ** 2)])
def test_bias_forces_are_minus_gradient_and_cvs_are_right(cv):
    system = _cv_system()
    pot = (potentials.lennard_jones(sigma=1.0, epsilon=0.01, cutoff=2.9)
           if cv.cv_name.startswith("distance") else _springs())
    biased = bias.harmonic_bias(pot, cv, k=3.0, s0=0.3)
    params = biased.init(None, system)
    sys_e = system.with_edges(2.9)
    e, f = jax.jit(energy_and_forces(biased))(params, sys_e)
    energy = jax.jit(biased.energy)
    e0, _ = energy_and_forces(pot)(params["potential"], sys_e)
    s = float(cv(sys_e))
    assert float(e - e0) == pytest.approx(0.5 * 3.0 * (s - 0.3) ** 2, rel=1e-10)
    h = 1e-5
    x = np.asarray(sys_e.positions)
    for atom, axis in [(0, 0), (1, 2), (3, 1)]:
        xp, xm = x.copy(), x.copy()
        xp[atom, axis] += h
        xm[atom, axis] -= h
        ep = energy(params, sys_e.replace(positions=jnp.asarray(xp)))
        em = energy(params, sys_e.replace(positions=jnp.asarray(xm)))
        assert float(f[atom, axis]) == pytest.approx(-float(ep - em) / (2 * h), abs=1e-6)


def test_cv_values_against_ase():
    atoms = _cv_system().to_ase()
    system = _cv_system()
    assert float(bias.distance(0, 3)(system)) == pytest.approx(atoms.get_distance(0, 3, mic=True))
    assert np.degrees(float(bias.angle(1, 0, 3)(system))) == pytest.approx(
        atoms.get_angle(1, 0, 3, mic=True))
    assert np.degrees(float(bias.dihedral(1, 0, 3, 4)(system))) % 360 == pytest.approx(
        atoms.get_dihedral(1, 0, 3, 4, mic=True))


def _dimer_double_well():
    """Two atoms; E = Eb((dx/a)² − 1)² + ½κ(dy² + dz²) in their separation (no edges needed)."""
    def energy(params, system):
        d = system.positions[1] - system.positions[0]
        return _double_well(d[0]) + 0.5 * 2.0 * (d[1] ** 2 + d[2] ** 2)

    return Potential(init=lambda key, s: {}, energy=energy, cutoff=1.0,
                     config={"name": "dimer_double_well", "kwargs": {}})


def test_umbrella_md_recovers_the_double_well_barrier():
    pot = _dimer_double_well()
    system = System.from_arrays([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]], [2, 2])
    starts = [System.from_arrays([[0.0, 0.0, 0.0], [c, 0.3, 0.0]], [2, 2])
              for c in np.linspace(-1.5, 1.5, 11)]
    cv = bias.from_positions(lambda x: x[1, 0] - x[0, 0], "dx")
    kelvin = KT / units.kB
    centers = np.linspace(-1.5, 1.5, 11)
    umb = bias.umbrella_sampling(pot, {}, system, cv, centers, k=1.5,
                                 temperature_kelvin=kelvin, steps=5000, dt_fs=2.0,
                                 equilibration_steps=400, log_every=10, friction_per_fs=0.02,
                                 starts=starts)
    assert umb.samples.shape == (11, 500)
    pmf = wham.wham(umb.samples, umb.centers, umb.k, umb.kT, bins=30, range=(-1.6, 1.6),
                    n_bootstrap=20)
    b = wham.barrier(pmf, (-1.6, -0.4), (0.4, 1.6))
    assert b["barrier"] == pytest.approx(EB, abs=0.05)
    assert b["barrier"] == pytest.approx(EB, abs=4 * b["error"] + 0.01)
    assert abs(b["s_ts"]) < 0.2
