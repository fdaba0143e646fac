"""Tests of jaxpot.md: integrators, the fused simulate loop, overflow handling, FIRE.

Reduced Lennard-Jones units are used throughout the dynamics tests: σ = 1 Å, ε = 1 eV and
masses of 1 amu, so the LJ time unit is jaxpot's internal time unit and kT* = kT / eV.
The pair potential is force-shifted (energy and force continuous at the cutoff) so that
velocity Verlet shows its clean dt² energy error.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpot import System, md, potentials, units
from jaxpot import neighbors as nb
from jaxpot.potential import Potential
from jaxpot.potentials.pair import pair_energy

RC = 2.5


def force_shifted_lj(cutoff: float = RC, counter: list | None = None) -> Potential:
    """LJ with σ = ε = 1 and φ(r) − φ(rc) − (r − rc) φ'(rc): smooth E and F at the cutoff."""

    def phi(r):
        x6 = r**-6
        return 4.0 * (x6 * x6 - x6)

    def dphi(r):
        return -24.0 * (2.0 * r**-13 - r**-7)

    def energy(params, system):
        if counter is not None:
            counter.append(1)  # runs once per trace
        rc = jnp.asarray(cutoff)
        return pair_energy(lambda r: phi(r) - phi(rc) - (r - rc) * dphi(rc), system, cutoff,
                           shift=False)

    return Potential(lambda key, system: {}, energy, float(cutoff), {"name": "test_fslj"})


def lattice(n_side: int, density: float, kind: str = "fcc") -> System:
    """A cubic lattice of unit-mass atoms at the given number density (Å⁻³)."""
    if kind == "fcc":
        basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    else:
        basis = np.zeros((1, 3))
    a = (len(basis) / density) ** (1.0 / 3.0)
    grid = np.array(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij")).reshape(3, -1).T
    pos = ((grid[:, None, :] + basis[None]) * a).reshape(-1, 3)
    n = pos.shape[0]
    return System.from_arrays(pos, np.full(n, 18), cell=np.eye(3) * a * n_side, pbc=True,
                              masses=np.ones(n))


def kelvin(kT: float) -> float:
    return kT / units.kB


def block_se(x: np.ndarray, stat, n_blocks: int = 20) -> float:
    """Standard error of ``stat`` from ``n_blocks`` contiguous blocks (handles correlation)."""
    blocks = np.array_split(np.asarray(x), n_blocks)
    vals = np.array([stat(b) for b in blocks])
    return float(vals.std(ddof=1) / np.sqrt(n_blocks))


# ---------------------------------------------------------------------------- Maxwell-Boltzmann


def test_maxwell_boltzmann_zero_momentum_and_temperature():
    n, n_pad = 20_000, 20_016
    rng = np.random.default_rng(1)
    masses = np.ones(n_pad)
    masses[:n] = rng.uniform(1.0, 60.0, n)
    mask = np.arange(n_pad) < n
    kT = 0.05
    p = md.maxwell_boltzmann(jax.random.key(3), jnp.asarray(masses), kT, jnp.asarray(mask))
    p = np.asarray(p)
    assert p.shape == (n_pad, 3)
    assert np.all(p[~mask] == 0.0)
    assert np.abs(p.sum(0)).max() < 1e-9 * np.abs(p).sum()
    dof = 3 * n - 3
    t = float(md.temperature(jnp.asarray(p), jnp.asarray(masses), jnp.asarray(mask)))
    assert abs(t / kT - 1.0) < 4.0 * np.sqrt(2.0 / dof)
    # Equipartition for light and heavy atoms separately (catches a wrong sqrt(m) scaling).
    ke_atom = 0.5 * np.sum(p[:n] ** 2, 1) / masses[:n]
    light = masses[:n] < 30.0
    for sel in (light, ~light):
        m = sel.sum()
        assert abs(ke_atom[sel].mean() / (1.5 * kT) - 1.0) < 5.0 * np.sqrt(2.0 / (3 * m))
    exact = md.maxwell_boltzmann(jax.random.key(4), jnp.asarray(masses), kT, jnp.asarray(mask),
                                 force_temperature=True)
    t = float(md.temperature(exact, jnp.asarray(masses), jnp.asarray(mask)))
    assert t == pytest.approx(kT, rel=1e-10)


# ---------------------------------------------------------------------------- NVE


def test_nve_energy_error_scales_as_dt_squared():
    """Velocity Verlet on a 500-atom LJ fluid: max |E(t) − E(0)| ∝ dt² over the same time."""
    pot = force_shifted_lj()
    system = lattice(5, 0.8)  # 500 atoms, box 8.55 Å
    assert int(system.atom_mask.sum()) >= 500
    nbrs = nb.allocate(system, RC, skin=0.3, method="cell")
    # Melt the lattice (kT* = 2, i.e. T* ≈ 1 after equipartition), then measure from there.
    integ = md.nve(pot, {}, 0.004)
    state = integ.init(jax.random.key(0), system, nbrs, kT=2.0)

    @functools.partial(jax.jit, static_argnums=2)
    def run(dt, state, n):
        step = md.nve(pot, {}, dt).step

        def body(s, _):
            s = step(s)
            ke = md.kinetic_energy(s.momenta, s.system.masses, s.system.atom_mask)
            return s, s.energy + ke

        return jax.lax.scan(body, state, None, length=n)

    state, _ = run(0.004, state, 100)  # equilibrate (also the 100-step compile below)
    assert not bool(state.neighbors.overflow)
    e0 = float(state.energy + md.kinetic_energy(state.momenta, state.system.masses,
                                                 state.system.atom_mask))
    devs = []
    for dt, chunks in ((0.004, 3), (0.002, 6)):  # 1.2 LJ time units each
        s, es = state, []
        for _ in range(chunks):
            s, e = run(dt, s, 100)
            es.append(np.asarray(e))
        assert not bool(s.neighbors.overflow)
        devs.append(np.abs(np.concatenate(es) - e0).max() / 500)
    ratio = devs[0] / devs[1]
    print(f"NVE max |dE|/N: dt={devs[0]:.3e}  dt/2={devs[1]:.3e}  ratio={ratio:.2f}")
    assert devs[0] < 2e-3  # eV/atom at dt* = 0.004: small
    assert 3.0 < ratio < 5.0


@pytest.fixture(scope="module")
def hot_tight_run():
    """A hot, dense 108-atom LJ crystal with a tight list: it melts and the list overflows.

    Returns ``(result, n_traces)`` where ``n_traces`` counts traces of the energy function.
    """
    counter: list = []
    pot = force_shifted_lj(counter=counter)
    system = lattice(3, 1.0)
    system = system.pad(112, system.n_edges)  # 4 padding slots must stay inert
    mp = pytest.MonkeyPatch()
    mp.setattr(md.run, "_BLOCK_STEPS", 50)  # 400 steps = 8 blocks of 5 log intervals
    try:
        res = md.simulate(pot, {}, system, ensemble="nve", dt_fs=0.001 / units.fs,
                          temperature_kelvin=kelvin(6.0), steps=400, log_every=10,
                          trajectory_every=10, skin=0.3, capacity_multiplier=1.0)
    finally:
        mp.undo()
    return res, len(counter)


def test_simulate_log_columns(hot_tight_run):
    res, _ = hot_tight_run
    log = res.log
    assert set(log) == {"step", "time_fs", "potential_energy_ev", "kinetic_energy_ev",
                        "total_energy_ev", "temperature_k", "target_temperature_k",
                        "pressure_gpa"}
    np.testing.assert_allclose(log["target_temperature_k"], kelvin(6.0))
    np.testing.assert_array_equal(log["step"], np.arange(0, 401, 10))
    np.testing.assert_allclose(log["time_fs"], log["step"] * 0.001 / units.fs)
    np.testing.assert_allclose(log["total_energy_ev"],
                               log["potential_energy_ev"] + log["kinetic_energy_ev"])
    np.testing.assert_allclose(log["temperature_k"],
                               2 * log["kinetic_energy_ev"] / (3 * 108 - 3) / units.kB)
    assert [a.info["step"] for a in res.frames] == log["step"].tolist()
    assert res.wall_s > 0 and res.compile_s > 0 and res.ns_per_day > 0
    assert res.atom_steps_per_s == pytest.approx(108 * 400 / res.wall_s)
    # Energy is conserved across the reallocations (hot and dense: T* ≈ 3 at ρ* = 1, dt* = 0.001;
    # the Verlet error is ~1e-3 eV/atom and a step on a truncated list would jump far more).
    e_tot = log["total_energy_ev"]
    assert np.abs(e_tot - e_tot[0]).max() < 2e-3 * 108
    assert np.ptp(log["temperature_k"]) > 0  # it really moved
    final = res.final_state
    assert final.system.n_atoms == 112 and len(res.frames[-1]) == 108
    assert np.all(np.asarray(final.momenta)[108:] == 0)
    np.testing.assert_array_equal(np.asarray(final.system.positions)[108:], 0.0)
    np.testing.assert_allclose(np.asarray(final.momenta).sum(0), 0.0, atol=1e-10)


def test_simulate_compiles_once_per_shape(hot_tight_run):
    """Energy traces: 1 (init) + 2 per neighbour-list shape (plain step, stress step).

    Eight blocks run; recompiling per block would add traces.
    """
    res, n_traces = hot_tight_run
    assert n_traces == 1 + 2 * (1 + res.n_reallocations), (n_traces, res.n_reallocations)


def test_overflow_reallocates_and_never_uses_a_truncated_list(hot_tight_run):
    """Every logged energy equals the energy of a fresh exact host list at those positions."""
    res, _ = hot_tight_run
    assert res.n_reallocations >= 1
    ref_energy = jax.jit(force_shifted_lj().energy)
    pe = res.log["potential_energy_ev"]
    assert len(res.frames) == pe.size
    for atoms, e_logged in zip(res.frames, pe, strict=True):
        exact = System.from_ase(atoms, cutoff=RC, n_edges=108 * 160)  # host list, fixed shape
        assert float(ref_energy({}, exact)) == pytest.approx(e_logged, rel=1e-9, abs=1e-9)


def test_simulate_pressure_is_virial_plus_kinetic(hot_tight_run):
    from jaxpot.potential import energy_forces_stress

    res, _ = hot_tight_run
    log = res.log
    final = res.final_system
    e, _, sigma = jax.jit(energy_forces_stress(force_shifted_lj()))({}, final.with_edges(RC))
    assert float(e) == pytest.approx(log["potential_energy_ev"][-1], rel=1e-10)
    p_kin = 2 * log["kinetic_energy_ev"][-1] / (3 * float(final.volume))
    p = (-float(jnp.trace(sigma)) / 3 + p_kin) / units.GPa
    assert log["pressure_gpa"][-1] == pytest.approx(p, rel=1e-8)
    # Restarting from the final state continues the same trajectory's energy.
    mom = res.final_state.momenta
    assert float(md.kinetic_energy(mom, final.masses, final.atom_mask)) == pytest.approx(
        log["kinetic_energy_ev"][-1], rel=1e-12)


# ---------------------------------------------------------------------------- thermostats


def _canonical_checks(res, kT_target, n_atoms, discard, bias):
    """``bias``: allowed systematic relative error of <T> from the time step (see callers)."""
    dof = 3 * n_atoms - 3
    ke = res.log["kinetic_energy_ev"][discard:]
    t = 2 * ke / dof
    mean_t = t.mean()
    se_t = block_se(t, np.mean)
    # Canonical: K ~ Gamma(dof/2, kT) so Var K = 2 <K>^2 / dof, i.e. var(K)·dof / (2<K>²) = 1.
    ratio = ke.var() * dof / (2 * ke.mean() ** 2)
    se_ratio = block_se(ke, lambda k: k.var() * dof / (2 * k.mean() ** 2))
    print(f"T/T0 = {mean_t / kT_target:.4f} ± {se_t / kT_target:.4f}; "
          f"Var(K)/canonical = {ratio:.3f} ± {se_ratio:.3f}; samples {ke.size}")
    assert abs(mean_t / kT_target - 1.0) < 0.02
    assert abs(mean_t - kT_target) < 4 * se_t + bias * kT_target
    assert abs(ratio - 1.0) < max(4 * se_ratio, 0.05)
    assert abs(ratio - 1.0) < 0.25
    return mean_t, ratio


# BAOAB's momenta at full steps (after the last half kick) are biased: their kinetic temperature
# is low by about dt²<ω²>/4, with <ω²> the mean squared Einstein frequency (~400 for this liquid,
# so ~1 % at dt* = 0.01; measured 0.990 ± 0.0013 over 10⁵ steps). The Nosé–Hoover chain controls
# exactly the full-step kinetic energy, so it has no such bias (measured 0.9988 ± 0.0011 over
# 10⁵ steps; variance ratios 1.007 ± 0.016 Langevin, 1.024 ± 0.013 Nosé–Hoover).
_BIAS = {"langevin": 0.015, "nose-hoover": 0.002}


def _thermostat_run(ensemble, steps, seed=1):
    system = lattice(4, 0.8, kind="sc")  # 64 atoms, melts at T* = 1
    res = md.simulate(force_shifted_lj(), {}, system, ensemble=ensemble,
                      dt_fs=0.01 / units.fs, temperature_kelvin=kelvin(1.0), steps=steps,
                      log_every=10, friction_per_fs=5.0 * units.fs, tau_fs=0.2 / units.fs,
                      skin=0.3, seed=seed)
    print(ensemble, f"wall {res.wall_s:.1f} s, compile {res.compile_s:.1f} s")
    return res


@pytest.mark.parametrize("ensemble", ["langevin", "nose-hoover"])
def test_thermostat_samples_canonical_kinetic_energy(ensemble):
    """64-atom LJ liquid at T* = 1 (10⁴ steps): mean T within 2 %, Var K = 2<K>²/(3N−3).

    Tolerances: 2 % and 4 block standard errors on the mean; 4 block standard errors (at
    least 5 %, at most 25 %) on the variance ratio.
    """
    res = _thermostat_run(ensemble, 10_000)
    _canonical_checks(res, 1.0, 64, discard=100, bias=_BIAS[ensemble])


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", ["langevin", "nose-hoover"])
def test_thermostat_canonical_long(ensemble):
    """The strict version: 10⁵ steps, block errors ~4× smaller (same checks)."""
    res = _thermostat_run(ensemble, 100_000, seed=2)
    _canonical_checks(res, 1.0, 64, discard=100, bias=_BIAS[ensemble])


# ---------------------------------------------------------------------------- FIRE


def test_fire_relaxes_rattled_fcc_like_ase():
    from ase.build import bulk
    from ase.calculators.lj import LennardJones
    from ase.optimize import FIRE

    pot = potentials.lennard_jones(sigma=1.0, epsilon=1.0, cutoff=RC)
    params = pot.init(None, None)
    perfect = bulk("Ar", "fcc", a=1.55, cubic=True).repeat(2)  # 32 atoms
    atoms = perfect.copy()
    atoms.rattle(0.03, seed=2)
    system = System.from_ase(atoms)
    e_start = float(pot.energy(params, system.with_edges(RC)))
    relaxed, info = md.fire(pot, params, system, fmax=1e-4, max_steps=3000)
    assert info["converged"] and info["fmax"] < 1e-4
    assert info["energy"] < e_start
    ref = atoms.copy()
    ref.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=RC, smooth=False)
    assert FIRE(ref, logfile=None).run(fmax=1e-4, steps=1000)
    e_ase = ref.get_potential_energy()
    e_perfect = float(pot.energy(params, System.from_ase(perfect, cutoff=RC)))
    print(f"FIRE {info['energy']:.8f} ({info['steps']} steps), ASE FIRE {e_ase:.8f}, "
          f"perfect {e_perfect:.8f}")
    assert info["energy"] == pytest.approx(e_ase, abs=1e-6 * len(atoms))
    assert info["energy"] == pytest.approx(e_perfect, abs=1e-6 * len(atoms))
    # relaxed carries edges valid for the potential
    assert float(pot.energy(params, relaxed)) == pytest.approx(info["energy"], rel=1e-10)


# ---------------------------------------------------------------------------- driver hooks


@pytest.mark.parametrize("ensemble", ["langevin", "nose-hoover"])
def test_temperature_ramp_is_followed_without_recompiling(ensemble):
    """64-atom LJ liquid heated linearly from T* = 0.5 to 1.5 over 6000 steps (60 τ).

    The bath kT lives in the integrator state and the schedule enters each block as an array:
    the mean kinetic temperature of each 1000-step window follows the mean target within 6 %
    (about 3 standard errors of a 100-sample window; BAOAB's bias is ~1 %), the run heats by
    the factor the ramp asks for, and the energy function is traced only 1 + 2 times.
    """
    counter: list = []
    steps = 6000
    res = md.simulate(force_shifted_lj(counter=counter), {}, lattice(4, 0.8, kind="sc"),
                      ensemble=ensemble, dt_fs=0.01 / units.fs,
                      temperature_kelvin=(kelvin(0.5), kelvin(1.5)), steps=steps, log_every=10,
                      friction_per_fs=5.0 * units.fs, tau_fs=0.2 / units.fs, skin=0.3)
    log = res.log
    np.testing.assert_allclose(log["target_temperature_k"],
                               kelvin(0.5) + kelvin(1.0) * log["step"] / steps, rtol=1e-12)
    windows = np.array_split(np.arange(1, log["step"].size), 6)
    ratios = [log["temperature_k"][w].mean() / log["target_temperature_k"][w].mean()
              for w in windows]
    print(ensemble, "T / target per window:", np.round(ratios, 3))
    assert all(abs(r - 1.0) < 0.06 for r in ratios[1:])
    mean_t = [log[k][[windows[0], windows[-1]]].mean(axis=1)
              for k in ("temperature_k", "target_temperature_k")]
    heat, asked = mean_t[0][1] / mean_t[0][0], mean_t[1][1] / mean_t[1][0]  # asked ≈ 2.4
    assert abs(heat / asked - 1.0) < 0.12
    assert len(counter) == 1 + 2 * (1 + res.n_reallocations)


def test_callable_schedule_matches_the_ramp_pair():
    common = dict(ensemble="langevin", dt_fs=0.01 / units.fs, steps=200, log_every=10,
                  friction_per_fs=5.0 * units.fs, skin=0.3, seed=4)
    t0, t1 = kelvin(0.5), kelvin(1.5)
    pair = md.simulate(force_shifted_lj(), {}, lattice(3, 0.8, kind="sc"),
                       temperature_kelvin=(t0, t1), **common)
    fn = md.simulate(force_shifted_lj(), {}, lattice(3, 0.8, kind="sc"),
                     temperature_kelvin=lambda s: t0 + (t1 - t0) * np.asarray(s, float) / 200,
                     **common)
    scalar = md.simulate(force_shifted_lj(), {}, lattice(3, 0.8, kind="sc"),
                         temperature_kelvin=lambda s: t0 + (t1 - t0) * float(s) / 200
                         if s < 1e9 else 0.0, **common)
    for other in (fn, scalar):
        np.testing.assert_allclose(other.log["temperature_k"], pair.log["temperature_k"],
                                   rtol=1e-9)


def test_observers_stop_and_trajectory_arrays(tmp_path):
    """Observers see per-atom energies and forces inside the loop; stop ends at a block."""
    import ase.io
    from ase.build import bulk

    from jaxpot.potential import forces as forces_of

    pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=7.0)
    system = System.from_ase(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3))
    params = pot.init(None, system)

    def energies(state, out):
        return {"atomic_sum": out.atomic["energy"].sum(), "atomic": out.atomic["energy"]}

    def force_max(state, out):
        return {"max_force": jnp.abs(out.forces).max()}

    seen = []

    def stop(state, observed):
        seen.append(observed["step"].tolist())
        return observed["step"][-1] >= 300

    res = md.simulate(pot, params, system, dt_fs=5.0, temperature_kelvin=60.0, steps=1000,
                      log_every=20, trajectory_every=40, observers=[energies, force_max],
                      stop=stop, block_steps=100)
    log = res.log
    assert res.stopped and res.stop_step == 300 and res.steps_done == 300
    assert seen == [list(range(20, 101, 20)), list(range(120, 201, 20)),
                    list(range(220, 301, 20))]
    np.testing.assert_array_equal(log["step"], np.arange(0, 301, 20))
    assert log["atomic"].shape == (16, 108)
    np.testing.assert_allclose(log["atomic_sum"], log["potential_energy_ev"], rtol=1e-10)
    traj = res.trajectory
    assert traj.positions.shape == (8, 108, 3) and traj.momenta.shape == (8, 108, 3)
    assert traj.cells.shape == (8, 3, 3) and traj.step.tolist() == list(range(0, 300, 40))
    ff = jax.jit(forces_of(pot))
    for k in (0, 4, 7):  # observers against an independent host list at the frame positions
        s = System.from_ase(res.frames[k], cutoff=pot.cutoff)
        row = int(np.flatnonzero(log["step"] == traj.step[k])[0])
        assert float(jnp.abs(ff(params, s)).max()) == pytest.approx(log["max_force"][row],
                                                                    rel=1e-9)
        assert float(pot.energy(params, s)) == pytest.approx(traj.potential_energy_ev[k],
                                                             rel=1e-10)
    assert np.ptp(log["max_force"]) > 0
    frames = res.to_atoms()
    np.testing.assert_allclose(frames[3].get_momenta(), traj.momenta[3])
    assert frames[3].info["step"] == 120
    res.write_trajectory(tmp_path / "md.extxyz")
    back = ase.io.read(tmp_path / "md.extxyz", ":")
    assert len(back) == 8
    np.testing.assert_allclose(back[-1].positions, traj.positions[-1], atol=1e-6)


@pytest.mark.parametrize("name", ["md.xyz", "md.h5"])
def test_trajectory_file_is_written_during_the_run_and_continued_on_restart(tmp_path, name):
    """Frames streamed to extxyz/H5MD equal the in-memory frames of the same run; the file
    holds every finished block when a stop ends the run early; a restart continues the file
    with the step count going on and no duplicated frame."""
    from ase.build import bulk

    pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=7.0)
    system = System.from_ase(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3))
    params = pot.init(None, system)
    kw = dict(ensemble="langevin", dt_fs=5.0, temperature_kelvin=60.0, log_every=20,
              trajectory_every=40, block_steps=100, seed=3)
    ref = md.simulate(pot, params, system, steps=400, **kw)
    path = tmp_path / name
    sizes = []

    def stop(state, observed):  # the writer has been handed every earlier block by now
        sizes.append(len(md.read_trajectory(path)) if path.exists() and path.stat().st_size
                     else 0)
        return observed["step"][-1] >= 200

    first = md.simulate(pot, params, system, steps=400, stop=stop, trajectory_file=path, **kw)
    assert first.steps_done == 200 and len(first.trajectory) == 0
    assert sizes[-1] >= 3 and sizes == sorted(sizes)  # frames reach the file block by block
    part = md.read_trajectory(path)
    assert part.step.tolist() == [0, 40, 80, 120, 160, 200]
    np.testing.assert_allclose(part.positions, ref.trajectory.positions[:6], atol=1e-6)
    np.testing.assert_allclose(part.momenta, ref.trajectory.momenta[:6], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(part.potential_energy_ev, ref.trajectory.potential_energy_ev[:6],
                               rtol=1e-6)
    state_file = tmp_path / "state.npz"
    md.save_state(state_file, first.final_state, ensemble="langevin", step=first.steps_done)
    md.simulate(pot, params, system, steps=200, restart=state_file, trajectory_file=path,
                **kw)
    whole = md.read_trajectory(path)
    assert whole.step.tolist() == list(range(0, 401, 40))
    assert np.ptp(whole.positions[:, 0, 0]) > 0.01
    np.testing.assert_allclose(whole.cells, np.broadcast_to(np.asarray(system.cell),
                                                            whole.cells.shape), atol=1e-9)
    with pytest.raises(ValueError, match="refusing to overwrite an input"):
        md.simulate(pot, params, system, steps=20, restart=state_file,
                    trajectory_file=state_file, **kw)


def test_force_provider_drives_the_integrators():
    from jaxpot.potential import energy_forces_stress

    pot = force_shifted_lj()
    system = lattice(3, 0.9)
    nbrs = nb.allocate(system, RC, skin=0.3)
    prov = md.provider(pot, {})
    assert md.provider(prov) is prov
    with pytest.raises(ValueError, match="already carries its params"):
        md.provider(prov, {})
    x = system.positions + 0.05 * jax.random.normal(jax.random.key(1), system.positions.shape)
    out = jax.jit(lambda n, x: prov(system, n, x, stress=True))(nbrs, x)
    e, f, sigma = energy_forces_stress(pot)({}, system.replace(positions=x).with_edges(RC))
    assert float(out.energy) == pytest.approx(float(e), rel=1e-12)
    np.testing.assert_allclose(out.forces, f, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.stress, sigma, rtol=1e-10, atol=1e-12)
    assert float(jnp.abs(out.forces).max()) > 0.1 and out.atomic == {}
    assert prov.outputs == ()
    states = []
    for integ in (md.nve(pot, {}, 0.004), md.nve(prov, None, 0.004)):
        s = integ.init(jax.random.key(0), system, nbrs, kT=1.0)
        for _ in range(5):
            s = jax.jit(integ.step)(s)
        states.append(s)
    np.testing.assert_allclose(states[0].positions, states[1].positions, rtol=1e-12, atol=1e-14)
    assert float(states[0].kT) == 1.0 and float(states[0].pressure) == 0.0


def test_fire_reallocates_when_a_sparse_cluster_contracts():
    """A 64-atom argon cube spaced 4.4 Å (LJ minimum 3.8 Å) contracts while relaxing.

    Neighbour counts grow past the list's head-room, so FIRE's segments overflow and are redone
    on a bigger list (the shared run_checked helper); the relaxed energy equals the energy on an
    exact host list, and the forces there are below fmax.
    """
    from jaxpot.potential import forces as forces_of

    pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
    g = np.arange(4) * 4.4
    pos = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    system = System.from_arrays(pos, np.full(64, 18), cell=np.zeros((3, 3)), pbc=False)
    params = pot.init(None, system)
    relaxed, info = md.fire(pot, params, system, fmax=1e-3, max_steps=5000, skin=0.3)
    print(info)
    assert info["converged"] and info["n_reallocations"] >= 1
    exact = System.from_arrays(np.asarray(relaxed.positions), np.full(64, 18),
                               cell=np.zeros((3, 3)), pbc=False).with_edges(pot.cutoff)
    assert float(pot.energy(params, exact)) == pytest.approx(info["energy"], rel=1e-10)
    assert info["energy"] < float(pot.energy(params, system.with_edges(pot.cutoff))) - 0.5
    f = np.asarray(forces_of(pot)(params, exact))
    assert np.sqrt((f**2).sum(1)).max() < 1e-3
