"""Behler–Parrinello potential: physics invariances, standardisation, config round trip,
training through jaxpot.train, and the empirical NTK."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from jaxpot import System, testing
from jaxpot.models.bpnn import bpnn, bpnn_descriptors, fit_standardisation
from jaxpot.models.ntk import empirical_ntk
from jaxpot.potential import from_config

CUTOFF = 3.2
OPTS = dict(cutoff=CUTOFF, hidden=[6], max_neighbors=24, n_radial=4, n_angular=2)


def _alloy(seed=0):
    a = bulk("Cu", cubic=True)  # 4 atoms: one Au makes an L1_2-like Cu3Au cell
    a.numbers[1] = 79
    a.rattle(0.1, seed=seed)
    return a


@pytest.fixture(scope="module", params=[False, True], ids=["per_element", "shared"])
def model(request):
    pot = bpnn(species=["Cu", "Au"], shared=request.param, **OPTS)
    systems = [System.from_ase(_alloy(k), cutoff=CUTOFF) for k in range(3)]
    params = pot.init(jax.random.key(0), systems[0])
    params = fit_standardisation(pot, params, systems)
    return pot, params, systems[0]


def test_invariances(model):
    pot, params, s = model
    testing.assert_rotation_reflection_invariance(pot, params, s)
    testing.assert_permutation_invariance(pot, params, s)
    testing.assert_forces_match_finite_differences(pot, params, s)
    if not pot.config["kwargs"]["shared"]:  # same code path for both; halve the compile time
        testing.assert_translation_invariance(pot, params, s)
        testing.assert_padding_invariance(pot, params, s)


def test_standardisation_and_round_trip(model):
    pot, params, s = model
    g = np.asarray(bpnn_descriptors(pot)(s))
    idx = np.asarray(s.species) == 29
    x = (g[idx] - np.asarray(params["descriptor_mean"])[0]) / np.asarray(
        params["descriptor_std"])[0]
    assert np.all(np.isfinite(x)) and np.abs(x.mean(0)).max() < 2.0
    # the standardisation is invisible to gradients (an optimiser leaves it alone)
    grads = jax.grad(pot.energy)(params, s)
    assert float(jnp.abs(grads["descriptor_mean"]).max()) == 0.0
    assert float(jnp.abs(grads["descriptor_std"]).max()) == 0.0
    again = from_config(pot.config)
    assert float(again.energy(params, s)) == pytest.approx(float(pot.energy(params, s)),
                                                           abs=1e-12)


def test_declared_protocol(model):
    """BPNN declares species, per-atom energies and a data-dependent ``prepare`` on the
    Potential (no attribute on the factory)."""
    pot, params, s = model
    assert pot.species == (29, 79) and pot.outputs == ("energy", "features") and pot.fit is None
    assert not hasattr(bpnn, "prepare")
    atomic = pot.atomic(params, s)["energy"]
    assert float(jnp.sum(atomic)) == pytest.approx(float(pot.energy(params, s)), abs=1e-10)
    assert np.ptp(np.asarray(atomic)) > 0
    fresh = pot.init(jax.random.key(0), s)
    assert float(jnp.abs(fresh["descriptor_std"] - 1.0).max()) == 0.0
    prepared = pot.prepare(fresh, [_structure(k) for k in range(3)])
    np.testing.assert_allclose(np.asarray(prepared["descriptor_mean"]),
                               np.asarray(params["descriptor_mean"]), rtol=1e-10, atol=1e-12)


def _structure(seed):
    from jaxpot import data

    a = _alloy(seed)
    a.calc = EMT()
    a.get_potential_energy()
    return data.from_atoms([a], cutoff=CUTOFF)[0]


def test_element_networks_differ():
    pot = bpnn(species=["Cu", "Au"], **OPTS)
    s = System.from_ase(_alloy(1), cutoff=CUTOFF)
    params = pot.init(jax.random.key(1), s)
    w = params["net"]["w0"]
    assert w.shape[0] == 2 and not np.allclose(w[0], w[1])


def test_soap_descriptor():
    pot = bpnn(species=["Cu"], descriptor="soap", n_max=3, l_max=2, **{
        k: v for k, v in OPTS.items() if k not in ("n_radial", "n_angular")})
    # 12 atoms: more than SOAP's default chunk of 8, so the forces differentiate through the
    # chunked lax.map path (one full chunk and a remainder)
    a = bulk("Cu", cubic=True).repeat((3, 1, 1))
    a.rattle(0.1, seed=3)
    s = System.from_ase(a, cutoff=CUTOFF)
    params = fit_standardisation(pot, pot.init(jax.random.key(0), s), [s])
    # SOAP's narrow Gaussians give large higher derivatives: h = 1e-5 keeps the
    # central-difference truncation error (∝ h²) well below the tolerance
    testing.assert_forces_match_finite_differences(pot, params, s, h=1e-5)
    testing.assert_rotation_reflection_invariance(pot, params, s)


def test_ntk_symmetric_psd_and_linearisation():
    pot = bpnn(species=["Cu"], **OPTS)
    systems = []
    for k in range(4):
        a = bulk("Cu", cubic=True)
        a.rattle(0.1, seed=10 + k)
        systems.append(System.from_ase(a, cutoff=CUTOFF, n_edges=80))
    params = fit_standardisation(pot, pot.init(jax.random.key(0), systems[0]), systems)
    theta = np.asarray(empirical_ntk(pot, params, systems, systems))
    np.testing.assert_allclose(theta, theta.T, rtol=1e-10, atol=1e-12)
    assert np.linalg.eigvalsh(theta).min() > -1e-9 * np.abs(theta).max()
    # Θ(a, b) = J_a · J_b: a parameter step along J_b changes E_a by eps·Θ(a, b)
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(params)
    j_b = jax.grad(lambda p: pot.energy(unravel(p), systems[1]))(flat)
    eps = 1e-6
    for a in range(4):
        de = (pot.energy(unravel(flat + eps * j_b), systems[a])
              - pot.energy(unravel(flat - eps * j_b), systems[a])) / (2 * eps)
        np.testing.assert_allclose(float(de), theta[a, 1], rtol=1e-6, atol=1e-9)


def test_trains_on_tiny_emt_set(tmp_path):
    import ase.io

    from jaxpot.train.loop import TrainConfig, train

    frames = []
    for k in range(12):
        a = bulk("Cu", cubic=True)
        a.rattle(0.1, seed=100 + k)
        a.calc = EMT()
        a.get_potential_energy()
        frames.append(a)
    path = tmp_path / "cu.xyz"
    ase.io.write(path, frames)
    cfg = TrainConfig(train=str(path), model="bpnn", cutoff=CUTOFF, out=str(tmp_path / "run"),
                      model_kwargs=dict(hidden=[8], max_neighbors=24, n_radial=4, n_angular=2),
                      epochs=6, batch_size=4, lr=1e-2, valid_fraction=0.25, plots=False,
                      patience=None, stress_key=None, dtype="float64", ema_decay=0.0)
    result = train(cfg)
    hist = result["history"]
    assert len(hist) == 6
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"], hist
    from jaxpot.serialization import load_model

    pot, params = load_model(result["model"])
    assert float(jnp.abs(params["descriptor_std"] - 1.0).max()) > 0  # standardisation set
    assert pot.config["name"] == "bpnn"
