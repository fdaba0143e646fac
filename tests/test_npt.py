"""NPT: stochastic cell rescaling, neighbour lists for a changing cell, masks, shear, start-up.

References are independent: the host neighbour list (vesin / jaxpot's exact host list checked
against ASE elsewhere) and fresh energy evaluations for the changing-cell lists; the
Johnson–Zollweg–Gubbins equation of state (implemented here from the paper's coefficients) for
the Lennard-Jones density (slow).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from jaxpot import System, md, neighbors, potentials, units
from jaxpot.potential import energy_forces_stress

SIGMA, EPS = 3.4, 0.0104  # argon-like LJ, Å and eV


def _lj_system(a: float, rep: int) -> System:
    return System.from_ase(bulk("Ar", "fcc", a=a, cubic=True).repeat(rep))


def _host_pairs(positions, cell, cutoff) -> set:
    """Pairs (receiver, sender, shift) within ``cutoff`` from the host list (vesin)."""
    r, s, sh = neighbors.neighbor_list(np.asarray(positions), np.asarray(cell),
                                       np.ones(3, bool), cutoff)
    shifts = map(tuple, np.rint(sh).astype(int).tolist())
    return set(zip(r.tolist(), s.tolist(), shifts, strict=True))


def _list_pairs(nbrs, positions, cell, cutoff) -> set:
    """Pairs of a jitted list that are within ``cutoff`` at (positions, cell)."""
    snd, rcv = np.asarray(nbrs.senders), np.asarray(nbrs.receivers)
    sh = np.asarray(nbrs.shifts)
    x = np.asarray(positions, np.float64)
    ok = snd < x.shape[0]
    d = x[snd[ok]] - x[rcv[ok]] + sh[ok] @ np.asarray(cell, np.float64)
    near = np.linalg.norm(d, axis=1) < cutoff
    return set(zip(rcv[ok][near].tolist(), snd[ok][near].tolist(),
                   map(tuple, np.rint(sh[ok][near]).astype(int).tolist()), strict=False))


@pytest.mark.parametrize("method", ["brute", "cell"])
def test_update_follows_a_shrinking_cell(method):
    """Scale a box down step by step: ``update`` either holds every pair within the cutoff
    (same set as a fresh host list) or raises ``overflow`` -- never a silently short list."""
    rep = 3 if method == "cell" else 2
    system = _lj_system(5.9, rep)
    cutoff, skin = 5.0, 0.6
    nbrs = neighbors.allocate(system, cutoff, skin=skin, method=method, capacity_multiplier=1.5)
    upd = jax.jit(neighbors.update)
    rng = np.random.default_rng(0)
    x0, h0 = np.asarray(system.positions), np.asarray(system.cell)
    rebuilt = flagged = checked = 0
    for lam in np.linspace(1.0, 0.8, 11)[1:]:
        h = h0 * lam
        x = x0 * lam + rng.normal(scale=0.02, size=x0.shape)
        moved = system.replace(positions=jnp.asarray(x), cell=jnp.asarray(h))
        ref = np.asarray(nbrs.reference_positions)
        nbrs = upd(nbrs, moved)
        rebuilt += not np.array_equal(ref, np.asarray(nbrs.reference_positions))
        if bool(nbrs.overflow):
            flagged += 1
            nbrs = neighbors.allocate(moved, cutoff, skin=skin, method="auto")
            continue
        assert _list_pairs(nbrs, x, h, cutoff) == _host_pairs(x, h, cutoff)
        checked += 1
    assert rebuilt >= 2 and checked >= 5
    if method == "cell":  # 3 × 5.9 Å shrinks below 3 bins of 5.6 Å: must be flagged
        assert flagged >= 1


def _cutoff_pairs_observer(cutoff):
    def observe(state, out):
        x, cell = state.system.positions, state.system.cell
        snd, rcv = out.neighbors.senders, out.neighbors.receivers
        n = x.shape[0]
        xe = jnp.concatenate([x, jnp.zeros((1, 3), x.dtype)])
        d = xe[snd] - xe[rcv] + out.neighbors.shifts @ cell
        near = (snd < n) & (jnp.sum(d * d, axis=1) < cutoff ** 2)
        return {"pairs_in_cutoff": jnp.sum(near)}
    return observe


def test_npt_compression_never_steps_on_a_wrong_list():
    """A dilute LJ box under 3 GPa shrinks by > 20 % in length; at every logged step the list
    of the state holds exactly the host list's pairs and the logged energy equals a fresh
    evaluation at that step's positions and cell."""
    cutoff = 6.0
    pot = potentials.lennard_jones(SIGMA, EPS, cutoff)
    system = _lj_system(7.0, 2)
    params = pot.init(None, system)
    res = md.simulate(pot, params, system, ensemble="npt", dt_fs=4.0, temperature_kelvin=120.0,
                      steps=240, log_every=10, trajectory_every=10, pressure_gpa=3.0,
                      tau_p_fs=100.0, compressibility_per_gpa=1.0, skin=0.5,
                      friction_per_fs=0.02, observers=_cutoff_pairs_observer(cutoff))
    cells = res.trajectory.cells
    assert cells[-1, 0, 0] < 0.8 * cells[0, 0, 0]
    fresh = jax.jit(energy_forces_stress(pot))
    n, slots = system.positions.shape[0], 64 * system.positions.shape[0]
    for k, step in enumerate(res.trajectory.step):
        x, h = res.trajectory.positions[k], cells[k]
        r, snd, sh = neighbors.neighbor_list(x, h, np.ones(3, bool), cutoff)
        row = int(np.flatnonzero(res.log["step"] == step)[0])
        assert int(res.log["pairs_in_cutoff"][row]) == len(r)
        pad = slots - len(r)  # host edges padded to a fixed size (one compilation)
        sys_k = system.replace(
            positions=jnp.asarray(x), cell=jnp.asarray(h),
            receivers=jnp.asarray(np.r_[r, np.full(pad, n)], jnp.int32),
            senders=jnp.asarray(np.r_[snd, np.full(pad, n)], jnp.int32),
            shifts=jnp.asarray(np.r_[sh, np.zeros((pad, 3))], x.dtype))
        np.testing.assert_allclose(res.trajectory.potential_energy_ev[k],
                                   float(fresh(params, sys_k)[0]), rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_slab_mask_keeps_the_vacuum_and_aniso_moves_the_rest():
    """A slab with z masked keeps its cell height exactly while x, y relax under pressure."""
    atoms = bulk("Ar", "fcc", a=5.6, cubic=True).repeat((2, 2, 2))
    atoms.center(vacuum=8.0, axis=2)
    system = System.from_ase(atoms)
    pot = potentials.lennard_jones(SIGMA, EPS, 6.0)
    res = md.simulate(pot, pot.init(None, system), system, ensemble="npt", dt_fs=5.0,
                      temperature_kelvin=30.0, steps=100, log_every=20, pressure_gpa=0.5,
                      cell_dof="aniso", cell_mask=(True, True, False), tau_p_fs=200.0,
                      compressibility_per_gpa=0.5)
    np.testing.assert_array_equal(res.log["cell_c"], res.log["cell_c"][0])
    assert np.ptp(res.log["cell_a"]) > 0.01 and np.ptp(res.log["cell_b"]) > 0.01
    z = np.asarray(res.final_system.positions)[:, 2]
    assert z.max() - z.min() < float(atoms.cell[2, 2]) - 10.0  # the vacuum is still there


def test_sheared_cell_relaxes_its_shear_stress():
    """A crystal in a sheared cell under hydrostatic pressure: with ``cell_dof='full'`` the
    shear stress decays to zero on average (it starts far from it)."""
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat(2)
    cell = np.array(atoms.cell)
    cell[1, 0] += 1.0  # shear xy
    atoms.set_cell(cell, scale_atoms=True)
    system = System.from_ase(atoms)
    pot = potentials.lennard_jones(SIGMA, EPS, 6.0)
    params = pot.init(None, system)
    s0 = np.asarray(energy_forces_stress(pot)(
        params, neighbors.allocate(system, 6.0).attach(system))[2])
    res = md.simulate(pot, params, system, ensemble="npt", dt_fs=5.0, temperature_kelvin=5.0,
                      steps=1000, log_every=10, pressure_gpa=0.1,
                      cell_dof="full", tau_p_fs=200.0, compressibility_per_gpa=0.3,
                      observers=lambda s, o: {"shear": o.stress[0, 1]})
    shear = res.log["shear"][len(res.log["shear"]) // 2:]
    assert abs(s0[0, 1]) > 1e-4
    assert abs(shear.mean()) < 0.1 * abs(s0[0, 1])


def test_npt_options_are_checked():
    system = _lj_system(5.6, 2)
    pot = potentials.lennard_jones(SIGMA, EPS, 6.0)
    params = pot.init(None, system)
    kw = dict(ensemble="npt", dt_fs=5.0, temperature_kelvin=50.0, steps=2)
    with pytest.raises(ValueError, match="barostat"):
        md.simulate(pot, params, system, barostat="berendsen", **kw)
    with pytest.raises(ValueError, match="isotropic only"):
        md.simulate(pot, params, system, barostat="mtk", cell_dof="aniso", **kw)
    with pytest.raises(ValueError, match="cell_dof"):
        md.simulate(pot, params, system, cell_dof="triclinic", **kw)
    with pytest.raises(ValueError, match="every lattice direction"):
        md.simulate(pot, params, system, cell_mask=(False, False, False), **kw)
    with pytest.raises(ValueError, match="tau_p_fs"):
        md.simulate(pot, params, system, tau_p_fs=-1.0, **kw)
    with pytest.raises(ValueError, match="fully periodic"):
        md.simulate(pot, params, system.replace(pbc=jnp.array([True, True, False])), **kw)


# --------------------------------------------------------------------- LJ equation of state

# Johnson, Zollweg & Gubbins, Mol. Phys. 78, 591 (1993), Table 10: x1..x32, gamma = 3.
_JZG_X = np.array([
    0.8623085097507421, 2.976218765822098, -8.402230115796038, 0.1054136629203555,
    -0.8564583828174598, 1.582759470107601, 0.7639421948305453, 1.753173414312048,
    2.798291772190376e3, -4.8394220260857657e-2, 0.9963265197721935, -3.698000291272493e1,
    2.084012299434647e1, 8.305402124717285e1, -9.574799715203068e2, -1.477746229234994e2,
    6.398607852471505e1, 1.603993673294834e1, 6.805916615864377e1, -2.791293578795945e3,
    -6.245128304568454, -8.116836104958410e3, 1.488735559561229e1, -1.059346754655084e4,
    -1.131607632802822e2, -8.867771540418822e3, -3.986982844450543e1, -4.689270299917261e3,
    2.593535277438717e2, -2.694523589434903e3, -7.218487631550215e2, 1.721802063863269e2])


def jzg_pressure(rho: float, t: float) -> float:
    """Reduced pressure of the full LJ fluid (modified Benedict–Webb–Rubin form)."""
    x = np.r_[0.0, _JZG_X]
    a = [x[1] * t + x[2] * np.sqrt(t) + x[3] + x[4] / t + x[5] / t**2,
         x[6] * t + x[7] + x[8] / t + x[9] / t**2, x[10] * t + x[11] + x[12] / t, x[13],
         x[14] / t + x[15] / t**2, x[16] / t, x[17] / t + x[18] / t**2, x[19] / t**2]
    b = [x[20] / t**2 + x[21] / t**3, x[22] / t**2 + x[23] / t**4,
         x[24] / t**2 + x[25] / t**3, x[26] / t**2 + x[27] / t**4,
         x[28] / t**2 + x[29] / t**3, x[30] / t**2 + x[31] / t**3 + x[32] / t**4]
    f = np.exp(-3.0 * rho**2)
    return (rho * t + sum(a[i] * rho ** (i + 2) for i in range(8))
            + f * sum(b[i] * rho ** (2 * i + 3) for i in range(6)))


def truncated_lj_density(p: float, t: float, rc: float) -> float:
    """Density of the LJ fluid truncated at ``rc`` (forces; the energy shift changes no
    force) at reduced pressure ``p``: JZG minus the long-range pressure tail (g = 1 beyond
    rc), solved by bisection on the liquid-side branch."""
    def p_trunc(rho):
        tail = 16.0 / 3.0 * np.pi * rho**2 * (2.0 / 3.0 * rc**-9 - rc**-3)
        return jzg_pressure(rho, t) - tail
    lo, hi = 0.05, 1.2
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if p_trunc(mid) < p else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("t", [1.5, 2.0])
def test_jzg_second_virial_coefficient(t):
    """Independent check of the EOS implementation: its low-density slope (Z − 1)/ρ equals
    the second virial coefficient B2(T) integrated from the LJ pair potential."""
    from scipy.integrate import quad

    def mayer(r):
        return (np.exp(-4.0 * (r**-12 - r**-6) / t) - 1.0) * r * r

    b2 = -2.0 * np.pi * quad(mayer, 1e-6, 50.0, limit=500)[0]
    rho = 1e-4
    slope = (jzg_pressure(rho, t) / (rho * t) - 1.0) / rho
    assert abs(b2) > 1.0 and abs(slope - b2) < 0.01 * abs(b2)
    # the liquid at the LJ triple point (T* ≈ 0.69, ρ* ≈ 0.845) is at nearly zero pressure
    assert abs(jzg_pressure(0.845, 0.69)) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("t_star,p_star", [(1.5, 1.0), (2.0, 2.0)])
def test_lj_density_matches_jzg(t_star, p_star):
    """Mean NPT density of the LJ fluid (truncated at 3 sigma) within 0.5 % of the JZG EOS,
    allowing two block-averaged standard errors of the run itself (which must be small).

    Measured 2026-11-30 at T* = 1.5, P* = 1.0 (20 000 steps): +0.33 % to +0.53 % from JZG;
    LAMMPS ``fix npt`` on the same system +0.25 %."""
    from jaxpot.analysis.stats import block_average

    rc = 3.0
    pot = potentials.lennard_jones(SIGMA, EPS, rc * SIGMA)
    rho0 = truncated_lj_density(p_star, t_star, rc)
    a = (4.0 / rho0) ** (1 / 3) * SIGMA
    system = _lj_system(a, 4)  # 256 atoms
    res = md.simulate(pot, pot.init(None, system), system, ensemble="npt", dt_fs=10.0,
                      temperature_kelvin=t_star * EPS / units.kB, steps=40000, log_every=10,
                      pressure_gpa=p_star * EPS / SIGMA**3 / units.GPa, tau_p_fs=2000.0,
                      compressibility_per_gpa=2.0, friction_per_fs=0.005)
    rho = 256 * SIGMA**3 / res.log["volume_a3"][len(res.log["volume_a3"]) // 8:]
    avg = block_average(rho)
    assert avg.sem / rho0 < 0.003, avg  # the run resolves a 0.5 % deviation
    assert abs(avg.mean / rho0 - 1.0) < 0.005 + 2.0 * avg.sem / rho0, (avg, rho0)


# --------------------------------------------------------------------- start-up and restart


@pytest.mark.slow
def test_restart_continues_like_an_uninterrupted_run(tmp_path):
    """NPT (cell, momenta and noise key all matter): 2 × 20 steps through a restart file give
    the same trajectory end as 40 steps in one run."""
    system = _lj_system(5.6, 2)
    pot = potentials.lennard_jones(SIGMA, EPS, 6.0)
    params = pot.init(None, system)
    kw = dict(ensemble="npt", dt_fs=5.0, temperature_kelvin=60.0, log_every=10,
              pressure_gpa=0.2, tau_p_fs=200.0, compressibility_per_gpa=0.5, seed=3)
    full = md.simulate(pot, params, system, steps=40, **kw)
    half = md.simulate(pot, params, system, steps=20, **kw)
    path = tmp_path / "final_state.npz"
    md.save_state(path, half.final_state, ensemble="npt", step=20)
    rest = md.simulate(pot, params, system, steps=20, restart=path, **kw)
    a, b = full.final_state, rest.final_state
    assert np.ptp(full.log["volume_a3"]) > 1.0  # the cell did move
    np.testing.assert_allclose(b.system.cell, a.system.cell, rtol=1e-10)
    np.testing.assert_allclose(b.system.positions, a.system.positions, atol=1e-8)
    np.testing.assert_allclose(b.momenta, a.momenta, atol=1e-8)
    with pytest.raises(ValueError, match="restart was written by"):
        md.simulate(pot, params, system, **{**kw, "ensemble": "langevin"}, steps=2,
                    restart=path)


@pytest.mark.slow
def test_thermalize_brings_a_crystal_to_its_temperature():
    """NVE from a perfect crystal with Maxwell–Boltzmann velocities settles near T/2
    (equipartition with the potential energy); after ``thermalize_ps`` of Langevin it stays
    near the set temperature."""
    system = _lj_system(5.3, 3)
    pot = potentials.lennard_jones(SIGMA, EPS, 6.0)
    params = pot.init(None, system)
    kw = dict(ensemble="nve", dt_fs=5.0, temperature_kelvin=40.0, steps=300, log_every=10)
    cold = md.simulate(pot, params, system, **kw)
    warm = md.simulate(pot, params, system, thermalize_ps=2.0, friction_per_fs=0.02, **kw)
    t_cold = cold.log["temperature_k"][10:].mean()
    t_warm = warm.log["temperature_k"][10:].mean()
    assert t_cold < 0.7 * 40.0
    assert abs(t_warm / 40.0 - 1.0) < 0.2


@pytest.mark.slow
def test_cli_npt_log_final_state_and_restart(tmp_path):
    import ase.io

    import jaxpot
    from jaxpot import cli

    pot = potentials.lennard_jones(SIGMA, EPS, 6.0)
    model, crystal = tmp_path / "ar.jaxpot", tmp_path / "ar.xyz"
    jaxpot.save_model(model, pot, pot.init(None, None))
    ase.io.write(crystal, bulk("Ar", "fcc", a=5.5, cubic=True).repeat(2), format="extxyz")
    base = ["md", str(model), str(crystal), "--ensemble", "npt", "--pressure-gpa", "0.2",
            "--temperature", "50", "--dt", "5", "--steps", "20", "--log-every", "10",
            "--tau-p", "200", "--compressibility", "0.5"]
    state = tmp_path / "state.npz"
    assert cli.main(base + ["--log", str(tmp_path / "a.csv"), "--final-state", str(state)]) == 0
    header = (tmp_path / "a.csv").read_text().splitlines()[0].split(",")
    assert {"volume_a3", "cell_a", "density_g_cm3", "pressure_gpa"} <= set(header)
    assert cli.main(base + ["--restart-from", str(state)]) == 0
    assert cli.main(base + ["--barostat", "mtk", "--cell-dof", "aniso"]) == 2


def test_cli_npt_option_errors(tmp_path):
    from jaxpot import cli

    base = ["md", str(tmp_path / "m.jaxpot"), str(tmp_path / "s.xyz"), "--ensemble", "npt"]
    assert cli.main(base + ["--cell-mask", "1,1"]) == 2
    assert cli.main(base + ["--tau-p", "-5"]) == 2
    assert cli.main(base + ["--thermalize-ps", "nan"]) == 2
    assert cli.main(base + ["--restart-from", str(tmp_path / "missing.npz")]) == 2


@pytest.mark.slow
def test_mtk_conserved_quantity_is_bounded_and_second_order():
    """Isotropic MTK + Nosé–Hoover chains: the extended energy stays within a bound measured
    at dt = 5 fs (32 LJ atoms, 2 ps: |H − H₀| ≲ 3e-4 eV, with no trend) and its error falls
    by about 4× when dt is halved (a second-order integrator), while the volume moves."""
    system = _lj_system(5.5, 2)
    pot = potentials.lennard_jones(SIGMA, EPS, 6.0)
    params = pot.init(None, system)
    err = []
    for dt in (5.0, 2.5):
        res = md.simulate(pot, params, system, ensemble="npt", barostat="mtk", dt_fs=dt,
                          temperature_kelvin=60.0, steps=int(2000 / dt),
                          log_every=int(100 / dt), pressure_gpa=0.1, tau_fs=200.0,
                          tau_p_fs=1000.0)
        h = res.log["conserved_ev"]
        err.append(np.abs(h - h[0]).max())
        assert np.ptp(res.log["volume_a3"]) > 20.0
        slope = np.polyfit(res.log["time_fs"], h, 1)[0] * 1000.0  # eV/ps
        assert abs(slope) < 1e-4
    assert err[0] < 1e-3
    assert 2.5 < err[0] / err[1] < 6.0


def test_c_rescale_ideal_gas_volume_distribution():
    """Exact check of the sampled volume distribution: an ideal gas (no forces) of N atoms in
    the isothermal–isobaric ensemble has V ~ Gamma(N + 1, kT/P0), so <V> = (N + 1) kT/P0 and
    Var V = (N + 1)(kT/P0)². For N = 4 the neighbouring hypotheses (N or N + 2 in place of
    N + 1, e.g. a wrong sign of the kT/V Jacobian term) are 20–25 % away, many errors off."""
    from ase import Atoms

    from jaxpot.analysis.stats import block_average
    from jaxpot.md import npt as npt_mod

    n = 4
    rng = np.random.default_rng(0)
    atoms = Atoms(f"Ar{n}", positions=rng.uniform(0, 10, (n, 3)), cell=np.eye(3) * 10,
                  pbc=True)
    system = System.from_ase(atoms)
    pot = potentials.lennard_jones(1.0, 0.0, 1.0)  # epsilon = 0: no forces
    kT = 300 * units.kB
    p0 = n * kT / 1000.0
    integ = npt_mod.c_rescale(pot, pot.init(None, system), 5 * units.fs, kT, 0.02 / units.fs,
                              p0, 300 * units.fs, compressibility=50.0 / units.GPa)
    nbrs = neighbors.allocate(system, 1.0, skin=0.5, capacity_multiplier=3.0, method="brute")
    state = integ.init(jax.random.PRNGKey(1), system, nbrs)

    def one(s, _):
        s = integ.step(s)
        return s, jnp.abs(jnp.linalg.det(s.system.cell))

    steps = 200_000
    _, vol = jax.jit(lambda s: jax.lax.scan(one, s, None, length=steps))(state)
    vol = np.asarray(vol, np.float64)[steps // 10:]
    avg = block_average(vol)
    expect = (n + 1) * kT / p0
    assert avg.sem < 0.03 * expect, avg
    assert abs(avg.mean - expect) < 3.0 * avg.sem + 0.01 * expect, (avg, expect)
    assert abs(vol.var() / ((n + 1) * (kT / p0) ** 2) - 1.0) < 0.2, vol.var()
