"""The heteroscedastic noise head: physics of its outputs, the NLL, ensembles of such members,
and a training run on EMT copper where one region's force labels carry Gaussian noise."""

from __future__ import annotations

import json

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

import jaxpot
from jaxpot import cli, testing
from jaxpot.data import collate, from_atoms
from jaxpot.models import ensemble, nequip
from jaxpot.models.heteroscedastic import (
    heteroscedastic,
    heteroscedastic_parts,
    noise_variances,
    standardize_features,
    variances_from_features,
)
from jaxpot.serialization import load_model, save_model
from jaxpot.train.config import TrainConfig
from jaxpot.train.loss import LossWeights, make_loss_fn
from jaxpot.train.nll import gaussian_nll
from jaxpot.uncertainty.spread import spread_fn

CUTOFF = 3.0
NOISE = 0.1  # eV/Å, injected on the expanded frames


def _inner():
    return nequip(species=["Cu"], features="4x0e+4x1o", cutoff=CUTOFF, radial_hidden=[8],
                  num_layers=1, l_max=1)


def _atoms(seed=1, scale=1.0, rattle=0.1):
    a = bulk("Cu", cubic=True).repeat(2)
    a.set_cell(a.cell * scale, scale_atoms=True)
    a.rattle(rattle, seed=seed)
    return a


def _random_head(params, key):
    """A head whose output layer is not the initial zeros (so outputs vary between atoms)."""
    noise = dict(params["noise"])
    out = dict(noise["dense_out"])
    out["kernel"] = 0.5 * jax.random.normal(key, out["kernel"].shape, out["kernel"].dtype)
    noise["dense_out"] = out
    return {**params, "noise": noise}


@pytest.fixture(scope="module")
def model():
    pot = heteroscedastic(_inner(), hidden=[8])
    system = jaxpot.System.from_ase(_atoms(), cutoff=CUTOFF)
    params = _random_head(pot.init(jax.random.key(0), system), jax.random.key(1))
    return pot, params, system


def test_energy_is_the_inner_models_and_outputs_are_declared(model):
    pot, params, system = model
    inner, options = heteroscedastic_parts(pot)
    assert options["hidden"] == [8]
    np.testing.assert_allclose(pot.energy(params, system), inner.energy(params["model"], system),
                               rtol=1e-12)
    assert pot.outputs == ("energy", "features", "force_noise_std", "energy_noise_std")
    out = pot.atomic(params, system)
    sf, se = np.asarray(out["force_noise_std"]), np.asarray(out["energy_noise_std"])
    assert sf.shape == se.shape == (system.n_atoms,)
    assert np.all(sf >= 1e-3) and np.ptp(sf) > 1e-4 and np.all(se >= 1e-4)  # floors; varies
    var_f, var_e = noise_variances(pot, params, system)
    np.testing.assert_allclose(np.sqrt(var_f), sf, rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(var_e), se, rtol=1e-12)


def test_passes_the_physics_suite(model):
    pot, params, system = model
    testing.assert_rotation_reflection_invariance(pot, params, system)
    testing.assert_translation_invariance(pot, params, system)
    testing.assert_permutation_invariance(pot, params, system)
    testing.assert_padding_invariance(pot, params, system)


def test_noise_outputs_are_invariant_permuted_and_zero_on_padding(model):
    pot, params, system = model
    fn = jax.jit(pot.atomic)
    ref = {k: np.asarray(fn(params, system)[k]) for k in ("force_noise_std", "energy_noise_std")}
    rot = testing.random_rotation(3, reflect=True)
    moved = jaxpot.System.from_ase(_atoms(), cutoff=CUTOFF)
    moved = moved.replace(positions=moved.positions @ rot.T + 0.7, cell=moved.cell @ rot.T)
    perm = np.random.default_rng(0).permutation(system.n_atoms)
    a = _atoms()
    permuted = jaxpot.System.from_ase(a[perm], cutoff=CUTOFF)
    padded = system.pad(system.n_atoms + 3, system.n_edges + 11)
    for key, value in ref.items():
        np.testing.assert_allclose(fn(params, moved)[key], value, rtol=1e-8)
        np.testing.assert_allclose(fn(params, permuted)[key], value[perm], rtol=1e-8)
        out = np.asarray(fn(params, padded)[key])
        np.testing.assert_allclose(out[:system.n_atoms], value, rtol=1e-8)
        assert np.all(out[system.n_atoms:] == 0.0)


def test_model_file_round_trip(model, tmp_path):
    pot, params, system = model
    save_model(tmp_path / "m", pot, params)
    pot2, params2 = load_model(tmp_path / "m")  # JSON config + arrays: no code runs
    assert pot2.config == pot.config and pot2.outputs == pot.outputs
    a, b = pot.atomic(params, system), pot2.atomic(params2, system)
    np.testing.assert_allclose(b["force_noise_std"], a["force_noise_std"], rtol=1e-6)


def test_refuses_models_without_features_and_nested_heads():
    with pytest.raises(ValueError, match="features"):
        heteroscedastic(jaxpot.potentials.lennard_jones(2.3, 0.4, 3.0))
    with pytest.raises(ValueError, match="cannot wrap"):
        heteroscedastic(heteroscedastic(_inner()))
    with pytest.raises(ValueError, match="positive"):
        heteroscedastic(_inner(), force_floor=0.0)
    with pytest.raises(ValueError, match="noise_head"):
        TrainConfig(noise_head="yes").validate()


def test_gaussian_nll_value_and_gradient():
    r = jnp.array([0.3, -0.1, 0.2, 5.0])
    mask = jnp.array([1.0, 1.0, 1.0, 0.0])  # the masked entry would dominate
    v = jnp.array([0.5, 0.2, 0.09, 1e-9])
    expect = np.mean([0.5 * (np.log(2 * np.pi * vi) + ri**2 / vi)
                      for ri, vi in zip(r[:3], v[:3], strict=True)])
    assert float(gaussian_nll(r, v, mask)) == pytest.approx(expect, rel=1e-10)
    # dNLL/dσ² = ½(1/σ² − r²/σ⁴)/n vanishes at σ² = r² and the minimum is there
    g = jax.grad(lambda v: gaussian_nll(r, v, mask))(r * r + jnp.array([0, 0, 0, 1.0]))
    np.testing.assert_allclose(g, 0.0, atol=1e-10)
    h = 1e-6
    g = jax.grad(lambda v: gaussian_nll(r, v, mask))(v)
    for i in range(3):
        dv = jnp.zeros(4).at[i].set(h)
        fd = (gaussian_nll(r, v + dv, mask) - gaussian_nll(r, v - dv, mask)) / (2 * h)
        assert float(g[i]) == pytest.approx(float(fd), rel=1e-6)
    assert float(g[3]) == 0.0


def _emt_batch(frames):
    structures = from_atoms(frames, cutoff=CUTOFF).structures
    n_atoms = max(s.n_atoms for s in structures)
    n_edges = max(s.n_edges for s in structures)
    return collate(structures, len(structures), n_atoms, n_edges)


@pytest.fixture(scope="module")
def loss_and_grad(model):
    """One compiled ``(params, batch) -> ((loss, terms), grads)`` shared by the NLL tests, on
    six frames (three compressed, three expanded)."""
    pot = model[0]
    frames = [_labelled(_atoms(10 + i, scale, 0.05)) for i in range(3) for scale in (0.97, 1.03)]
    fn = jax.jit(jax.value_and_grad(make_loss_fn(pot, LossWeights(1.0, 1.0, 0.0)),
                                    has_aux=True))
    return fn, frames, _emt_batch(frames)


def test_nll_trains_the_head_only_and_the_mean_as_mse(model, loss_and_grad):
    pot, params, _ = model
    fn, _, batch = loss_and_grad
    (loss, terms), g = fn(params, batch)
    mse = terms["energy"] + terms["forces"]
    assert float(loss) == pytest.approx(float(mse + terms["forces_nll"] + terms["energy_nll"]),
                                        rel=1e-10)
    # another head (other variances) leaves the loss's gradient in the mean unchanged: the
    # NLL sends no gradient into the model
    (loss2, terms2), g2 = fn(_random_head(params, jax.random.key(9)), batch)
    assert float(terms2["forces_nll"]) != pytest.approx(float(terms["forces_nll"]), rel=1e-3)
    for a, b in zip(jax.tree.leaves(g["model"]), jax.tree.leaves(g2["model"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g["model"])) > 0
    head = g["noise"]
    assert float(jnp.abs(head["dense_out"]["kernel"]).max()) > 0
    assert float(jnp.abs(head["feature_shift"]).max()) == 0.0  # the standardisation is fixed
    assert np.isfinite(float(terms["forces_nll"])) and np.isfinite(float(terms["energy_nll"]))


def test_ensemble_of_heteroscedastic_members_reports_both_parts(model):
    pot, params, system = model
    committee = ensemble(pot, 2)
    p2 = committee.init(jax.random.key(5), system)
    p2 = jax.tree.map(lambda a, b: jnp.stack([a, b]), params,
                      jax.tree.map(lambda x: x[1], p2))
    out = jax.jit(spread_fn(committee))(p2, system)
    assert set(out) >= {"energy_std", "forces_std", "force_noise_std", "energy_noise_std"}
    variances = jax.jit(jax.vmap(lambda p: noise_variances(pot, p, system)))(p2)
    np.testing.assert_allclose(out["force_noise_std"],
                               np.sqrt(np.mean(variances[0], axis=0)), rtol=1e-8)
    np.testing.assert_allclose(out["energy_noise_std"],
                               np.sqrt(np.mean(np.sum(variances[1], axis=1))), rtol=1e-8)
    assert float(jnp.min(out["forces_std"])) > 0  # epistemic: the members differ
    assert float(jnp.ptp(out["force_noise_std"])) > 0  # aleatoric: varies between atoms


def _frames(n, seed, scale, noise, rattle=0.05):
    """EMT copper frames (32 atoms) with Gaussian noise of std ``noise`` on every force
    component."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = _atoms(int(rng.integers(1 << 30)), scale, rattle)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f + noise * rng.standard_normal(f.shape))
        out.append(a)
    return out


def test_head_learns_the_injected_noise_of_one_region(model, loss_and_grad):
    """Residuals of pure noise, σ = 0.1 eV/Å on expanded frames and 0 on compressed ones: the
    head fitted by the NLL on the (fixed) features predicts 0.1 eV/Å on the first and nearly
    the floor on the second (a fast check of head, standardisation and NLL; the training run
    on EMT labels is the slow test below)."""
    pot, _, _ = model
    _, frames, batch = loss_and_grad
    params = pot.init(jax.random.key(2), jaxpot.System.from_ase(_atoms(), cutoff=CUTOFF))
    systems = [jaxpot.System.from_ase(a, cutoff=CUTOFF) for a in frames]
    params = standardize_features(pot, params, systems)
    features = jax.jit(jax.vmap(lambda s: pot.atomic(params, s)["features"]))(batch.system)
    mask = batch.system.atom_mask
    noisy = np.array([a.cell[0, 0] > 7.3 for a in frames])
    residuals = NOISE * noisy[:, None, None] * np.random.default_rng(0).standard_normal(
        batch.forces.shape)

    def loss(head):
        var_f = jax.vmap(lambda x, m: variances_from_features(pot, head, x, m)[0])(features,
                                                                                   mask)
        return gaussian_nll(jnp.asarray(residuals), var_f[..., None], mask[..., None])

    optimizer = optax.adam(3e-2)

    @jax.jit
    def fit(head):
        def step(carry, _):
            head, state = carry
            updates, state = optimizer.update(jax.grad(loss)(head), state)
            return (optax.apply_updates(head, updates), state), None

        return jax.lax.scan(step, (head, optimizer.init(head)), None, length=400)[0][0]

    head = fit(params["noise"])
    var_f = jax.vmap(lambda x, m: variances_from_features(pot, head, x, m)[0])(features, mask)
    sigma, mask = np.sqrt(np.asarray(var_f)), np.asarray(mask)
    noisy_sigma = sigma[noisy][mask[noisy]].mean()
    clean_sigma = sigma[~noisy][mask[~noisy]].mean()
    assert noisy_sigma == pytest.approx(NOISE, rel=0.2), (noisy_sigma, clean_sigma)
    assert clean_sigma < 0.3 * NOISE, (noisy_sigma, clean_sigma)


def _labelled(a):
    a.calc = EMT()
    a.get_forces()
    return a


@pytest.mark.slow  # ~60 s on a loaded core (the whole training pipeline compiles)
def test_cli_noise_head_learns_where_the_labels_are_noisy(tmp_path):
    """Compressed frames (a × 0.97) are clean, expanded ones (a × 1.03) carry σ = 0.1 eV/Å:
    the trained head predicts ≈ 0.1 eV/Å on expanded structures (the model's own small
    training error adds in quadrature) and about the training error on compressed ones."""
    ase.io.write(tmp_path / "train.xyz", _frames(24, 0, 0.97, 0.0) + _frames(24, 1, 1.03, NOISE))
    ase.io.write(tmp_path / "valid.xyz", _frames(4, 2, 0.97, 0.0) + _frames(4, 3, 1.03, NOISE))
    kw = json.dumps({"features": "8x0e+4x1o", "radial_hidden": [8], "num_layers": 1})
    out = tmp_path / "run"
    assert cli.main(["train", "--train", str(tmp_path / "train.xyz"), "--valid",
                     str(tmp_path / "valid.xyz"), "--model", "nequip", "--model-kwargs", kw,
                     "--cutoff", str(CUTOFF), "--epochs", "40", "--noise-head",
                     "--out", str(out)]) == 0
    pot, params = load_model(out / "model")
    assert pot.config["name"] == "heteroscedastic"
    fn = jax.jit(pot.atomic)
    sigma = {}
    for scale, seed in ((0.97, 10), (1.03, 11)):
        systems = [jaxpot.System.from_ase(a, cutoff=CUTOFF) for a in _frames(4, seed, scale, 0)]
        sigma[scale] = float(np.mean([np.mean(fn(params, s)["force_noise_std"])
                                      for s in systems]))
    assert sigma[1.03] == pytest.approx(NOISE, rel=0.3), sigma
    assert sigma[0.97] < 0.7 * sigma[1.03], sigma
