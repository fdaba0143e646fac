"""Ensemble checks with the ``physical-validation`` package (Merz & Shirts), an independent
implementation: two runs at neighbouring state points must have energy (NVT) or volume (NPT)
distributions whose ratio is the Boltzmann factor of the state-point difference,

    ln P₁(U)/P₂(U) = (β₂ − β₁) U + c            (NVT, two temperatures)
    ln P₁(V)/P₂(V) = −β (P₁ − P₂) V + c         (NPT, two pressures)

``physical_validation.ensemble.check`` fits the slope by maximum likelihood and reports how many
standard errors it is from the analytic one. Each state point is one ``md.simulate`` run of a
64-atom Lennard-Jones fluid (argon units, 40 000 steps of 8 fs); samples are decorrelated by
``physical_validation``'s own statistical-inefficiency estimate. A wrong temperature handed to the
check must fail it, so the check has power at this sample size.
"""

from __future__ import annotations

import numpy as np
import pytest

pv = pytest.importorskip("physical_validation")

from jaxpot import System, md, potentials, units  # noqa: E402

SIGMA, EPS = 3.4, 0.0104
STEPS, EVERY = 40_000, 10


def _fluid(rho_star: float) -> System:
    """64 LJ atoms on a jittered simple-cubic lattice at reduced density ``rho_star``."""
    from ase import Atoms

    side = (64 / rho_star) ** (1 / 3) * SIGMA
    g = (np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5)
    x = g * side / 4 + np.random.default_rng(0).normal(0, 0.05, (64, 3))
    return System.from_ase(Atoms("Ar64", positions=x, cell=np.eye(3) * side, pbc=True))


def _run(system, seed, **options):
    """One ``md.simulate`` run; per log point: potential, kinetic energy, volume."""
    pot = potentials.lennard_jones(SIGMA, EPS, 2.5 * SIGMA)
    res = md.simulate(pot, pot.init(None, system), system, dt_fs=8.0, steps=STEPS,
                      log_every=EVERY, seed=seed, thermalize_ps=2.0, **options)
    log = res.log
    vol = log.get("volume_a3", np.full(len(log["step"]), abs(np.linalg.det(system.cell))))
    burn = len(log["step"]) // 10
    return [np.asarray(a, np.float64)[None, burn:]
            for a in (log["potential_energy_ev"], log["kinetic_energy_ev"], vol)]


def _units():
    return pv.data.UnitData(kb=units.kB, energy_conversion=96.48533, length_conversion=0.1,
                            volume_conversion=1e-3, temperature_conversion=1.0,
                            pressure_conversion=1e4, time_conversion=1e-3,
                            energy_str="eV", length_str="A", volume_str="A^3",
                            temperature_str="K", pressure_str="GPa", time_str="fs")


def _data(ens, kelvin, pe, ke, vol, pressure_gpa=None):
    """One ``SimulationData`` per replica set (the replicas' samples concatenated)."""
    ensemble = pv.data.EnsembleData(ens, natoms=64, volume=None if ens == "NPT" else
                                    float(vol[0, 0]), pressure=pressure_gpa,
                                    temperature=kelvin)
    obs = pv.data.ObservableData(potential_energy=pe.ravel(), kinetic_energy=ke.ravel(),
                                 total_energy=(pe + ke).ravel(), volume=vol.ravel())
    return pv.data.SimulationData(units=_units(), ensemble=ensemble, observables=obs)


def _check(a, b) -> float:
    q = pv.ensemble.check(a, b, verbosity=0)
    print("physical_validation quantiles:", q)
    return float(np.max(np.abs(q)))


def _kelvin(t_star):
    return t_star * EPS / units.kB


@pytest.mark.slow
def test_nvt_langevin_energy_distributions_at_two_temperatures():
    system = _fluid(0.6)
    runs = {t: _run(system, i, ensemble="langevin", temperature_kelvin=_kelvin(t),
                    friction_per_fs=0.01) for i, t in enumerate((1.4, 1.55))}
    data = {t: _data("NVT", _kelvin(t), *runs[t]) for t in runs}
    assert _check(data[1.4], data[1.55]) < 3.0
    wrong = _data("NVT", _kelvin(1.75), *runs[1.55])  # mislabelled: must be caught
    assert _check(data[1.4], wrong) > 3.0


@pytest.mark.slow
@pytest.mark.parametrize("barostat", ["c-rescale", "mtk"])
def test_npt_volume_distributions_at_two_pressures(barostat):
    t_star = 1.5
    system = _fluid(0.6)
    gpa = {p: p * EPS / SIGMA**3 / units.GPa for p in (1.0, 1.25)}
    runs = {p: _run(system, 20 + i, ensemble="npt", temperature_kelvin=_kelvin(t_star),
                    pressure_gpa=gpa[p], barostat=barostat, tau_p_fs=400.0 if barostat ==
                    "c-rescale" else 1000.0, compressibility_per_gpa=2.0, tau_fs=200.0,
                    friction_per_fs=0.01) for i, p in enumerate(gpa)}
    data = {p: _data("NPT", _kelvin(t_star), *runs[p], pressure_gpa=gpa[p]) for p in runs}
    assert _check(data[1.0], data[1.25]) < 3.0
    wrong = _data("NPT", _kelvin(t_star), *runs[1.25], pressure_gpa=gpa[1.0] * 1.6)
    assert _check(data[1.0], wrong) > 3.0
