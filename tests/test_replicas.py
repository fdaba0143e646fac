"""Many replicas in one run: equal to separate md.simulate runs, one compile for all."""

import numpy as np
import pytest
from ase.build import bulk

from jaxpot import System, md, potentials
from jaxpot.md.replicas import simulate_replicas

POT = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=6.5)


def _systems():
    big = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 1))  # 16 atoms
    small = bulk("Ar", "fcc", a=5.3, cubic=True).repeat((3, 1, 1))  # 12 atoms, padded to 16
    return [System.from_ase(big), System.from_ase(big), System.from_ase(small)]


def _check_against_separate_runs(systems, temps, seeds, steps, ensemble="langevin"):
    params = POT.init(None, None)
    res = simulate_replicas(POT, params, systems, ensemble=ensemble, dt_fs=5.0,
                            temperatures_kelvin=temps, steps=steps, log_every=20, seeds=seeds)
    assert res.n_compiles == 1
    for r, system in enumerate(systems):
        ref = md.simulate(POT, params, system, ensemble=ensemble, dt_fs=5.0,
                          temperature_kelvin=temps[r], steps=steps, log_every=20,
                          seed=seeds[r], trajectory_every=20)
        n = ref.trajectory.positions.shape[1]
        np.testing.assert_allclose(res.log["potential_energy_ev"][:, r],
                                   ref.log["potential_energy_ev"], atol=1e-10)
        np.testing.assert_allclose(res.positions[:, r, :n], ref.trajectory.positions, atol=1e-9)
        assert np.ptp(ref.trajectory.positions, axis=0).max() > 0.05  # they moved
    return res


def test_replicas_equal_separate_runs_one_compile():
    temps, seeds = [20.0, 40.0, 60.0], [1, 2, 3]
    res = _check_against_separate_runs(_systems(), temps, seeds, steps=60)
    # different temperatures really were different baths
    assert res.log["temperature_k"][-1, 2] != res.log["temperature_k"][-1, 0]
    assert res.positions.shape[1:] == (3, 16, 3)


def test_replicas_bad_input():
    with pytest.raises(ValueError, match="seeds"):
        simulate_replicas(POT, None, _systems(), dt_fs=1.0, temperatures_kelvin=10.0, steps=1,
                          seeds=[1])
    with pytest.raises(ValueError, match="temperatures"):
        simulate_replicas(POT, None, _systems(), dt_fs=1.0, temperatures_kelvin=-1.0, steps=1)


@pytest.mark.slow
def test_64_replicas_equal_separate_runs():
    base = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 1))
    systems = [System.from_ase(base)] * 64
    temps = list(np.linspace(10.0, 80.0, 64))
    _check_against_separate_runs(systems, temps, list(range(64)), steps=40)
