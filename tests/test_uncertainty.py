"""Ensembles and predicted spreads: the committee potential, its training, calibration, the
ranking metrics, and the spreads in ``jaxpot eval`` and the ASE calculator."""

from __future__ import annotations

import csv
import json

import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

import jaxpot
from jaxpot import cli, data, testing
from jaxpot.models import ensemble, member_predictions, nequip
from jaxpot.models.ensemble import member_params, stack_params
from jaxpot.potential import energy_and_forces
from jaxpot.serialization import load_model, save_model
from jaxpot.train.loss import LossWeights, make_loss_fn
from jaxpot.uncertainty.calibration import auroc, coverage, fit_scale, uncertainty_metrics
from jaxpot.uncertainty.spread import atom_force_std, force_std_observer, spread_fn

CUTOFF = 3.0


def _member():
    return nequip(species=["Cu"], features="4x0e+4x1o", cutoff=CUTOFF, radial_hidden=[8])


def _atoms(seed=1, scale=1.0, rattle=0.1):
    a = bulk("Cu", cubic=True).repeat(2)
    a.set_cell(a.cell * scale, scale_atoms=True)
    a.rattle(rattle, seed=seed)
    return a


@pytest.fixture(scope="module")
def committee():
    pot = ensemble(_member(), 3)
    system = jaxpot.System.from_ase(_atoms(), cutoff=CUTOFF)
    return pot, pot.init(jax.random.key(0), system), system


def test_committee_is_the_mean_of_its_members(committee):
    pot, params, system = committee
    member = _member()
    e_k, f_k = member_predictions(pot, params, system)
    singles = [energy_and_forces(member)(member_params(params, k), system) for k in range(3)]
    np.testing.assert_allclose(e_k, [e for e, _ in singles], rtol=1e-5)
    e, f = energy_and_forces(pot)(params, system)
    np.testing.assert_allclose(e, np.mean(e_k), rtol=1e-5)
    np.testing.assert_allclose(f, np.mean(f_k, 0), atol=1e-4)
    out = spread_fn(pot)(params, system)
    assert float(out["energy_std"]) == pytest.approx(float(np.std(e_k)), rel=1e-4)
    expect = np.sqrt(np.mean(np.var(np.asarray(f_k), axis=0), axis=-1))
    np.testing.assert_allclose(out["forces_std"], expect, rtol=1e-4)
    assert expect.min() > 1e-3  # members from different seeds disagree: the check is not 0 = 0
    atomic = pot.atomic(params, system)
    np.testing.assert_allclose(atomic["forces_std"], expect, rtol=1e-4)
    np.testing.assert_allclose(np.sum(atomic["energy"]), e, rtol=1e-5)
    # identical members have no spread
    same = stack_params([member_params(params, 0)] * 3)
    assert float(np.max(atom_force_std(pot)(same, system))) < 1e-6


def test_committee_passes_the_physics_suite(committee):
    pot, params, system = committee
    testing.assert_rotation_reflection_invariance(pot, params, system)
    testing.assert_translation_invariance(pot, params, system)
    testing.assert_permutation_invariance(pot, params, system)
    testing.assert_padding_invariance(pot, params, system)
    testing.assert_forces_match_finite_differences(pot, params, system)


def test_spreads_are_invariant_and_follow_permutations(committee):
    pot, params, system = committee
    fn = jax.jit(spread_fn(pot))
    base = fn(params, system)
    atoms = _atoms()
    q = testing.random_rotation(3, reflect=True)
    turned = atoms.copy()
    turned.set_cell(atoms.cell[:] @ q.T, scale_atoms=False)
    turned.positions = atoms.positions @ q.T + np.array([0.3, -1.1, 2.0])
    rot = fn(params, jaxpot.System.from_ase(turned, cutoff=CUTOFF))
    np.testing.assert_allclose(rot["forces_std"], base["forces_std"], rtol=1e-3, atol=1e-5)
    assert float(rot["energy_std"]) == pytest.approx(float(base["energy_std"]), rel=1e-3)
    perm = np.random.default_rng(0).permutation(len(atoms))
    moved = fn(params, jaxpot.System.from_ase(atoms[perm], cutoff=CUTOFF))
    np.testing.assert_allclose(moved["forces_std"], np.asarray(base["forces_std"])[perm],
                               rtol=1e-3, atol=1e-5)
    padded = fn(params, jaxpot.System.from_ase(atoms, cutoff=CUTOFF, n_atoms=40, n_edges=4000))
    np.testing.assert_allclose(padded["forces_std"][:32], base["forces_std"], rtol=1e-4)
    assert float(np.abs(padded["forces_std"][32:]).max()) == 0.0


def test_ensemble_file_round_trip_keeps_members_and_calibration(committee, tmp_path):
    pot, params, system = committee
    cal = ensemble(_member(), 3, calibration={"energy": 2.0, "forces": 3.0})
    save_model(tmp_path / "m", cal, params)
    pot2, params2 = load_model(tmp_path / "m")
    assert pot2.config["kwargs"]["calibration"] == {"energy": 2.0, "forces": 3.0}
    raw = spread_fn(pot)(params, system)
    scaled = spread_fn(pot2)(params2, system)
    np.testing.assert_allclose(scaled["forces_std"], 3.0 * np.asarray(raw["forces_std"]),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2 members"):
        ensemble(_member(), 1)
    with pytest.raises(ValueError, match="positive"):
        ensemble(_member(), 2, calibration={"forces": -1.0})


def test_ensemble_loss_trains_each_member_on_its_own_loss(committee):
    pot, params, system = committee
    frames = []
    for i in range(3):
        a = _atoms(seed=10 + i)
        a.calc = EMT()
        a.get_potential_energy()
        frames.append(a)
    ds = data.from_atoms(frames, cutoff=CUTOFF)
    batch = next(data.BatchLoader(ds, 3, shuffle=False).batches(0))
    w = LossWeights(1.0, 1.0, 0.0)
    loss, grads = jax.value_and_grad(lambda p: make_loss_fn(pot, w)(p, batch)[0])(params)
    single = make_loss_fn(_member(), w)
    total = 0.0
    for k in range(3):
        lk, gk = jax.value_and_grad(lambda p: single(p, batch)[0])(member_params(params, k))
        total += float(lk)
        g_ens = member_params(grads, k)
        for a, b in zip(jax.tree.leaves(g_ens), jax.tree.leaves(gk), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)
    assert float(loss) == pytest.approx(total, rel=1e-5)


def test_fit_scale_restores_gaussian_coverage():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.05, 0.5, 20000)
    errors = 2.5 * sigma * rng.standard_normal(sigma.size)  # overconfident by 2.5
    assert coverage(errors, sigma) < 0.4
    a = fit_scale(errors, sigma)
    assert a == pytest.approx(2.5, rel=0.05)
    assert coverage(errors, a * sigma) == pytest.approx(0.683, abs=0.02)
    assert coverage(errors, a * sigma, 2.0) == pytest.approx(0.954, abs=0.02)
    with pytest.raises(ValueError, match="positive predicted sigma"):
        fit_scale([1.0], [0.0])


def test_auroc_equals_pair_counting():
    rng = np.random.default_rng(1)
    s = rng.normal(size=60).round(1)  # ties included
    pos = rng.random(60) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in s[pos] for b in s[~pos]]
    assert auroc(s, pos) == pytest.approx(np.mean(pairs))
    assert auroc(s, s > 0) == 1.0


def test_uncertainty_metrics_rank_informative_spreads():
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(40):
        sig = rng.uniform(0.02, 0.4, 8)
        rows.append({"forces_std": sig, "force_error": sig[:, None] * rng.normal(size=(8, 3))})
    m = uncertainty_metrics(rows)
    assert m["spearman_atom"] > 0.5 and m["spearman_structure"] > 0.3
    assert m["coverage_1sigma"] == pytest.approx(0.683, abs=0.04)
    shuffled = [{"forces_std": rng.permutation(r["forces_std"]), "force_error": r["force_error"]}
                for r in rows]
    assert uncertainty_metrics(shuffled)["spearman_atom"] < 0.2  # uninformative spreads


def test_md_observer_records_the_spread_inside_the_loop(committee):
    pot, params, system = committee
    res = jaxpot.md.simulate(pot, params, system, ensemble="langevin", dt_fs=1.0,
                             temperature_kelvin=300.0, steps=20, log_every=10,
                             observers=[force_std_observer(pot, params)])
    assert res.log["max_force_std"].shape == (3,)
    direct = float(np.max(atom_force_std(pot)(params, system)))
    assert float(res.log["max_force_std"][0]) == pytest.approx(direct, rel=1e-4)
    assert np.all(res.log["max_force_std"] >= res.log["mean_force_std"])


def _emt_file(path, n, *, seed, scale=1.0, rattle=0.06):
    frames = []
    for i in range(n):
        a = _atoms(seed=seed + i, scale=scale, rattle=rattle)
        a.calc = EMT()
        a.get_potential_energy()
        a.get_stress()
        frames.append(a)
    ase.io.write(path, frames, format="extxyz")


def test_cli_train_ensemble_then_eval_and_ase(tmp_path):
    _emt_file(tmp_path / "train.xyz", 8, seed=0)
    _emt_file(tmp_path / "valid.xyz", 4, seed=50)
    _emt_file(tmp_path / "test.xyz", 4, seed=90, scale=1.06, rattle=0.2)
    kw = json.dumps({"features": "4x0e+4x1o", "radial_hidden": [8], "num_layers": 1})
    out = tmp_path / "run"
    from jaxpot.train import TrainConfig, train

    result = train(TrainConfig(train=str(tmp_path / "train.xyz"), valid=str(tmp_path / "valid.xyz"),
                               model="nequip", model_kwargs=json.loads(kw), cutoff=CUTOFF,
                               epochs=2, ensemble=4, out=str(out), plots=False), resume=False)
    assert result["n_traces"] == 1  # four members, one compiled step (all frames: one shape)
    pot, params = load_model(out / "model")
    assert pot.config["name"] == "ensemble" and pot.config["kwargs"]["size"] == 4
    assert jax.tree.leaves(params)[0].shape[0] == 4
    cal = pot.config["kwargs"]["calibration"]
    assert cal["forces"] > 0 and cal["forces"] != 1.0  # fitted on the validation set
    csv_path = tmp_path / "per.csv"
    assert cli.main(["eval", str(out / "model"), str(tmp_path / "test.xyz"),
                     "--per-structure", str(csv_path)]) == 0
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert all(float(r["force_std_mev_per_a"]) > 0 for r in rows)
    assert all(float(r["max_atom_force_std_mev_per_a"]) >= float(r["force_std_mev_per_a"])
               for r in rows)
    assert all(float(r["mahalanobis"]) > 0 for r in rows)  # the model file's feature density
    atoms = ase.io.read(tmp_path / "test.xyz", 0)
    atoms.calc = jaxpot.ase.Calculator.from_file(out / "model")
    atoms.get_forces()
    res = atoms.calc.results
    assert res["forces_std"].shape == (len(atoms),)
    assert 1e3 * res["forces_std"].mean() == pytest.approx(float(rows[0]["force_std_mev_per_a"]),
                                                           rel=1e-3)
    assert res["energy_std"] > 0
    assert res["mahalanobis"].shape == (len(atoms),)
    assert res["mahalanobis"].max() == pytest.approx(float(rows[0]["mahalanobis"]), rel=1e-3)


def test_ensemble_refused_for_closed_form_models(tmp_path, capsys):
    _emt_file(tmp_path / "train.xyz", 4, seed=0)
    assert cli.main(["train", "--train", str(tmp_path / "train.xyz"), "--ensemble", "0",
                     "--out", str(tmp_path / "bad")]) == 2
    assert "--ensemble" in capsys.readouterr().err
    with pytest.raises(ValueError, match="closed form"):
        from jaxpot.train import TrainConfig, train

        train(TrainConfig(train=str(tmp_path / "train.xyz"), model="gap", cutoff=CUTOFF,
                          ensemble=2, out=str(tmp_path / "g")), resume=False)
    with pytest.raises(ValueError, match="ensemble"):
        from jaxpot.train import TrainConfig

        TrainConfig(ensemble=0).validate()
