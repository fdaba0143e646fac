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


SHARDED = r'''
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from ase.build import bulk
from jaxpot import System, potentials
from jaxpot.md.replicas import simulate_replicas

pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=6.5)
atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 1))
systems = [System.from_ase(atoms)] * 4
kw = dict(ensemble="langevin", dt_fs=5.0, temperatures_kelvin=[20.0, 40.0, 60.0, 80.0],
          steps=40, log_every=20, seeds=[1, 2, 3, 4])
one = simulate_replicas(pot, pot.init(None, None), systems, **kw)
four = simulate_replicas(pot, pot.init(None, None), systems, devices=4, **kw)
json.dump({"devices": len(jax.devices()),
           "sharding": str(four.final_systems[0].positions.sharding) if hasattr(
               four.final_systems[0].positions, "sharding") else "",
           "pe_one": np.asarray(one.log["potential_energy_ev"]).tolist(),
           "pe_four": np.asarray(four.log["potential_energy_ev"]).tolist(),
           "x_one": np.asarray(one.positions).tolist(),
           "x_four": np.asarray(four.positions).tolist()}, open(sys.argv[1], "w"))
'''


def test_replicas_spread_over_devices_equal_one_device(tmp_path):
    """Four replicas over four forced host devices run the same trajectories as on one."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = tmp_path / "sharded.json"
    proc = subprocess.run([sys.executable, "-c", SHARDED, str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["devices"] == 4
    pe_one, pe_four = np.asarray(r["pe_one"]), np.asarray(r["pe_four"])
    assert np.ptp(pe_one[:, 0]) > 0 and np.ptp(pe_one[-1]) > 0  # runs moved, replicas differ
    np.testing.assert_allclose(pe_four, pe_one, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r["x_four"], r["x_one"], rtol=0, atol=1e-9)


def test_replicas_over_devices_bad_counts():
    systems = _systems()
    params = POT.init(None, None)
    kw = dict(ensemble="langevin", dt_fs=5.0, temperatures_kelvin=20.0, steps=2)
    with pytest.raises(ValueError, match="asked for 5"):
        simulate_replicas(POT, params, systems, devices=5, **kw)
