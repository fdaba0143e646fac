"""Direct-force (non-conservative) NequIP: equivariance, padding, loss penalties, MD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from jaxpot import data, md
from jaxpot.md.direct import DirectForceProvider, direct_provider
from jaxpot.models.direct_force import direct_energy_forces_stress, nequip_direct
from jaxpot.potential import energy_and_forces, energy_forces_stress, from_config
from jaxpot.system import System
from jaxpot.testing import random_rotation
from jaxpot.train import LossWeights, make_loss_fn, predict
from jaxpot.train.direct import momentum_penalties

SMALL = dict(species=["Cu"], features="4x0e+4x1o+2x1e", cutoff=3.0, radial_hidden=[8],
             num_bessel=4, force_hidden=4)
N_EDGES = 160  # every test system is padded to these edge slots: one compilation


def _atoms(periodic: bool, seed: int = 0):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.15, seed=seed)
    if not periodic:
        atoms.pbc = False
        atoms.cell = np.zeros((3, 3))
    return atoms


@pytest.fixture(scope="module")
def model():
    pot = nequip_direct(**SMALL)
    system = System.from_ase(_atoms(True), cutoff=pot.cutoff)
    params = pot.init(jax.random.key(1), system)
    # a non-trivial scale so forces are O(1) eV/Å
    params = {**params, "atomic_scale": params["atomic_scale"] * 5.0}
    return pot, params


_JITTED = {}


def _forces(pot, params, atoms, **kw):
    kw.setdefault("n_edges", N_EDGES)
    system = System.from_ase(atoms, cutoff=pot.cutoff, **kw)
    key = id(pot)
    if key not in _JITTED:
        _JITTED[key] = (pot, jax.jit(lambda p, s: pot.atomic(p, s)["direct_forces"]))
    return np.asarray(_JITTED[key][1](params, system)), system


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("kind", ["inversion", "mirror"])
def test_rotation_and_reflection(model, periodic, kind):
    pot, params = model
    atoms = _atoms(periodic)
    f, _ = _forces(pot, params, atoms)
    assert np.abs(f).max() > 1e-3
    rot = random_rotation(3, reflect=kind == "inversion")
    if kind == "mirror":
        rot = rot @ np.diag([1.0, 1.0, -1.0])
    assert np.linalg.det(rot) < 0
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T
    moved.cell = np.asarray(atoms.cell) @ rot.T
    f_rot, _ = _forces(pot, params, moved)
    np.testing.assert_allclose(f_rot, f @ rot.T, atol=1e-9)


def test_translation_and_permutation(model):
    pot, params = model
    atoms = _atoms(False)
    f, _ = _forces(pot, params, atoms)
    shifted = atoms.copy()
    shifted.positions += np.array([0.3, -1.7, 2.2])
    np.testing.assert_allclose(_forces(pot, params, shifted)[0], f, atol=1e-9)
    perm = np.random.default_rng(0).permutation(len(atoms))
    np.testing.assert_allclose(_forces(pot, params, atoms[perm])[0], f[perm], atol=1e-9)


def test_padding_and_energy(model):
    pot, params = model
    atoms = _atoms(True)
    f, system = _forces(pot, params, atoms)
    f_pad, padded = _forces(pot, params, atoms, n_atoms=len(atoms) + 3,
                            n_edges=N_EDGES + 40)
    np.testing.assert_allclose(f_pad[:len(atoms)], f, atol=1e-10)
    assert np.all(f_pad[len(atoms):] == 0.0)
    e, f2, sigma = jax.jit(direct_energy_forces_stress(pot))(params, padded)
    np.testing.assert_allclose(f2, f_pad, atol=1e-12)
    e_ref, _, sigma_ref = jax.jit(energy_forces_stress(pot))(params, padded)
    np.testing.assert_allclose(e, e_ref, rtol=1e-12)
    np.testing.assert_allclose(sigma, sigma_ref, atol=1e-10)  # stress of the energy head


def test_config_and_net_force_projection(model):
    pot, params = model
    again = from_config(pot.config)
    assert again.config == pot.config and "direct_forces" in again.outputs
    proj = nequip_direct(**SMALL, remove_net_force=True)
    atoms = _atoms(False)
    f, _ = _forces(pot, params, atoms)
    g, _ = _forces(proj, params, atoms)
    assert np.linalg.norm(f.sum(0)) > 1e-3
    np.testing.assert_allclose(g.sum(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(g, f - f.mean(0), atol=1e-10)
    with pytest.raises(ValueError, match="force head"):
        nequip_direct(species=["Cu"], features="4x0e+4x2e")


def test_penalties_zero_for_conservative_forces():
    atoms = _atoms(False)
    atoms.calc = EMT()
    f_ref = atoms.get_forces()  # isolated EMT cluster: Σ F = 0 and Σ r × F = 0
    system = System.from_ase(atoms, cutoff=3.0, n_atoms=len(atoms) + 2)
    pad = np.zeros((2, 3))
    p_f, p_t = momentum_penalties(jnp.asarray(np.vstack([f_ref, pad])), system)
    assert abs(float(p_f)) < 1e-12 and abs(float(p_t)) < 1e-12
    f_bad = f_ref + np.array([0.1, 0.0, 0.0])  # a net force
    p_f, _ = momentum_penalties(jnp.asarray(np.vstack([f_bad, pad])), system)
    np.testing.assert_allclose(float(p_f), 0.01 * len(atoms), rtol=1e-9)
    r = atoms.positions - atoms.positions.mean(0)
    f_rot = f_ref + np.cross([0.0, 0.0, 0.2], r)  # a net torque, no net force
    p_f, p_t = momentum_penalties(jnp.asarray(np.vstack([f_rot, pad])), system)
    assert abs(float(p_f)) < 1e-12 and float(p_t) > 1e-3
    periodic = System.from_ase(_atoms(True), cutoff=3.0)
    assert float(momentum_penalties(jnp.asarray(f_rot), periodic)[1]) == 0.0


def _batch(periodic_flags):
    images = []
    for k, periodic in enumerate(periodic_flags):
        atoms = _atoms(periodic, seed=k)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        images.append(atoms)
    ds = data.from_atoms(images, cutoff=3.0, stress_key=None)
    return data.collate(ds.structures, len(ds) + 1, max(ds.n_atoms) + 2, max(ds.n_edges) + 8)


def _toy(bias):
    """Lennard-Jones with its exact forces plus ``bias`` as "direct forces" (cheap to compile)."""
    lj = from_config({"name": "lennard_jones",
                      "kwargs": {"sigma": 2.3, "epsilon": 0.05, "cutoff": 3.0}})
    ef = energy_and_forces(lj)

    def atomic(params, system):
        _, f = ef(params, system)
        f = jnp.where(system.atom_mask[:, None], f + jnp.asarray(bias), 0.0)
        return {"energy": lj.atomic(params, system)["energy"], "direct_forces": f}

    return lj._replace(atomic=atomic, outputs=("energy", "direct_forces"))


def test_loss_penalties_toy():
    batch = _batch([False, True])
    exact = _toy([0.0, 0.0, 0.0])
    params = exact.init(None, None)
    loss, terms = jax.jit(make_loss_fn(exact, LossWeights()))(params, batch)
    assert abs(float(terms["net_force"])) < 1e-20 and abs(float(terms["torque"])) < 1e-20
    np.testing.assert_allclose(loss, terms["energy"] + terms["forces"], rtol=1e-12)
    b = np.array([0.1, -0.2, 0.0])
    biased = _toy(b)
    _, f, _ = predict(biased, params, batch.system, stress=False)
    _, f0, _ = predict(exact, params, batch.system, stress=False)
    mask = np.asarray(batch.system.atom_mask)[..., None]
    np.testing.assert_allclose(f, np.where(mask, f0 + b, 0.0), atol=1e-12)
    _, terms_b = make_loss_fn(biased, LossWeights())(params, batch)
    n = np.asarray(batch.n_atoms[:2], float)
    np.testing.assert_allclose(terms_b["net_force"], np.mean(n * (b @ b)), rtol=1e-9)


def test_md_direct_provider_matches_conservative_toy():
    exact = _toy([0.0, 0.0, 0.0])
    params = exact.init(None, None)
    system = System.from_ase(_atoms(True), cutoff=3.0)
    kw = dict(dt_fs=1.0, temperature_kelvin=300.0, steps=20, log_every=10)
    ref = md.simulate(exact, params, system, **kw)
    res = md.simulate(direct_provider(exact, params), None, system, **kw)
    np.testing.assert_allclose(res.final_state.positions, ref.final_state.positions,
                               atol=1e-10)
    np.testing.assert_allclose(res.log["total_energy_ev"], ref.log["total_energy_ev"],
                               atol=1e-10)


@pytest.mark.slow
def test_loss_uses_direct_forces_and_penalties(model):
    pot, params = model
    batch = _batch([False, True])
    loss_fn = make_loss_fn(pot, LossWeights(energy=1.0, forces=1.0))
    loss, terms = jax.jit(loss_fn)(params, batch)
    assert float(terms["net_force"]) > 0 and float(terms["torque"]) > 0
    e, f, _ = predict(pot, params, batch.system, stress=False)
    direct = jax.vmap(lambda s: pot.atomic(params, s)["direct_forces"])(batch.system)
    np.testing.assert_allclose(f, direct, atol=1e-12)
    base = terms["energy"] + terms["forces"]
    np.testing.assert_allclose(loss, base + terms["net_force"] + terms["torque"], rtol=1e-10)
    proj = nequip_direct(**SMALL, remove_net_force=True, torque_weight=0.0)
    _, terms_p = jax.jit(make_loss_fn(proj, LossWeights()))(params, batch)
    assert abs(float(terms_p["net_force"])) < 1e-20


@pytest.mark.slow
def test_md_runs_with_direct_forces(model):
    pot, params = model
    proj = nequip_direct(**SMALL, remove_net_force=True)
    atoms = _atoms(True)
    system = System.from_ase(atoms, cutoff=proj.cutoff)
    force = direct_provider(proj, params)
    assert isinstance(md.provider(force), DirectForceProvider)
    res = md.simulate(force, None, system, dt_fs=1.0, temperature_kelvin=300.0, steps=10,
                      log_every=10, max_energy_error_per_atom=float("inf"))
    assert res.steps_done == 10 and np.all(np.isfinite(res.log["total_energy_ev"]))
    np.testing.assert_allclose(np.asarray(res.final_state.momenta).sum(0), 0.0, atol=1e-9)
    # the integrated forces are the direct ones, not -grad E
    s = res.final_state
    direct = pot.atomic(params, s.neighbors.attach(s.system))["direct_forces"]
    np.testing.assert_allclose(s.forces, direct - direct.mean(0), atol=1e-9)
    with pytest.raises(ValueError, match="no direct forces"):
        direct_provider(from_config({"name": "lennard_jones", "kwargs": {
            "sigma": 2.3, "epsilon": 0.1, "cutoff": 3.0}}), None)
