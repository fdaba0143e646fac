"""Per-atom features of every model family, and distances in feature space
(:mod:`jaxpot.uncertainty.distance`): invariance, padding, Mahalanobis against an independent
formula, out-of-distribution detection on EMT copper, model-file round trip, push_along."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from scipy.stats import spearmanr

import jaxpot
from jaxpot import System, models, testing
from jaxpot import data as jdata
from jaxpot.models.bpnn import bpnn_atomic_energies
from jaxpot.potential import Potential
from jaxpot.uncertainty import distance

CUTOFF = 3.0
TINY = dict(species=["Cu", "Au"], cutoff=CUTOFF, features="4x0e+4x1o", l_max=1,
            num_bessel=4, radial_hidden=[8], avg_num_neighbors=12.0, readout_hidden=4)
SOAP = dict(n_max=3, l_max=2, sigma=0.5, max_neighbors=24)


def _tiny(name: str) -> Potential:
    if name == "nequip":
        return models.nequip(**TINY)
    if name == "mace":
        return models.mace(correlation=2, **TINY)
    if name == "bpnn":
        return models.bpnn(species=["Cu", "Au"], cutoff=CUTOFF, hidden=[8], max_neighbors=24)
    return models.gap(species=["Cu", "Au"], cutoff=CUTOFF, n_sparse=4, **SOAP)


def _atomic_energies(name: str):
    if name == "nequip":
        return models.nequip_atomic_energies(**TINY)
    if name == "mace":
        return models.mace_atomic_energies(correlation=2, **TINY)
    if name == "bpnn":
        return bpnn_atomic_energies(species=["Cu", "Au"], cutoff=CUTOFF, hidden=[8],
                                    max_neighbors=24)
    return None


def _cell() -> System:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.symbols[1] = "Au"
    atoms.rattle(0.1, seed=1)
    return System.from_ase(atoms, cutoff=CUTOFF)


def _params(name: str, pot: Potential, system: System):
    params = pot.init(jax.random.key(0), system)
    if name == "bpnn":  # a non-trivial standardisation, so that it is exercised
        f = params["descriptor_mean"].shape[1]
        params = {**params, "descriptor_mean": jnp.full((2, f), 0.3),
                  "descriptor_std": jnp.full((2, f), 1.7)}
    if name == "gap":  # an arbitrary non-zero model (init gives an empty one)
        sparse = params["sparse_descriptors"]
        params = {**params, "weights": jnp.arange(1.0, 5.0),
                  "sparse_descriptors": jnp.full(sparse.shape, 0.2),
                  "sparse_species": jnp.asarray([29, 29, 79, 79], jnp.int32)}
    return params


def _variants(system: System, cutoff: float):
    """Rotated+reflected+translated, and permuted copies (edges rebuilt), with the row map."""
    x = np.asarray(system.positions)
    rot = testing.random_rotation(5, reflect=True)
    moved = system.replace(positions=jnp.asarray(x @ rot.T + np.array([0.7, -1.3, 2.1])),
                           cell=jnp.asarray(np.asarray(system.cell) @ rot.T)).with_edges(cutoff)
    perm = np.array([2, 0, 3, 1])
    permuted = system.replace(positions=system.positions[perm], species=system.species[perm],
                              masses=system.masses[perm]).with_edges(cutoff)
    return moved, permuted, perm


@pytest.mark.parametrize("name", ["nequip", "mace", "bpnn", "gap"])
def test_features_are_invariant_zero_on_padding_and_leave_energies_alone(name):
    pot = _tiny(name)
    assert "features" in pot.outputs and "energy" in pot.outputs
    system = _cell()
    params = _params(name, pot, system)
    moved, permuted, perm = _variants(system, CUTOFF)
    n, n_pad = system.n_atoms, system.n_atoms + 3
    e_max = max(s.n_edges for s in (system, moved, permuted)) + 7
    base = system.pad(n_pad, e_max)
    energies = _atomic_energies(name) or (lambda p, s: 0.0)
    # one compilation: features, the energy-only path and the total energy side by side
    both = jax.jit(lambda p, s: (pot.atomic(p, s), energies(p, s), pot.energy(p, s)))

    def atomic(p, s):
        return both(p, s)[0]

    out, ref_energies, total = both(params, base)
    x0 = np.asarray(out["features"])
    assert x0.shape[0] == n_pad and np.all(x0[n:] == 0.0)
    assert np.ptp(x0[:n], axis=0).max() > 1e-4  # atoms differ: the features are not constant
    x_moved = np.asarray(atomic(params, moved.pad(n_pad, e_max))["features"])
    x_perm = np.asarray(atomic(params, permuted.pad(n_pad, e_max))["features"])
    np.testing.assert_allclose(x_moved[:n], x0[:n], rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(x_perm[:n], x0[perm], rtol=1e-8, atol=1e-9)
    # poisoned padding: padding atoms on top of atom 0, with its species; padding edges shifted
    pad_rows = jnp.arange(n_pad) >= n
    poisoned = base.replace(
        positions=jnp.where(pad_rows[:, None], base.positions[0], base.positions),
        species=jnp.where(pad_rows, base.species[0], base.species),
        shifts=jnp.where(base.edge_mask[:, None], base.shifts, 1.0))
    x_poison = np.asarray(atomic(params, poisoned)["features"])
    np.testing.assert_allclose(x_poison[:n], x0[:n], rtol=1e-10, atol=1e-12)
    assert np.all(x_poison[n:] == 0.0)
    # energies: the per-atom energies next to the features are those of the energy-only path
    if name != "gap":
        assert np.array_equal(np.asarray(out["energy"]), np.asarray(ref_energies))  # bitwise
    assert abs(float(total)) > 1e-6
    np.testing.assert_allclose(float(jnp.sum(out["energy"])), float(total), rtol=1e-12)


def test_element_refs_wrapper_passes_features_through():
    inner = models.nequip(**TINY)
    pot = jaxpot.potentials.with_element_refs(inner, {29: -3.5, 79: -1.0}, scale=2.0)
    assert pot.outputs == ("energy", "features")
    system = _cell()
    params = pot.init(jax.random.key(0), system)
    outer, own = jax.jit(lambda p, s: (pot.atomic(p, s)["features"],
                                       inner.atomic(p["model"], s)["features"]))(params, system)
    assert np.ptp(np.asarray(own)) > 0
    np.testing.assert_array_equal(outer, own)


# ---------------------------------------------------------------------------------------------
# The statistics, against an independent formula (a toy model whose features are given)
# ---------------------------------------------------------------------------------------------


def _toy_potential() -> Potential:
    """Features = positions (not invariant: only the statistics are under test here)."""

    def atomic(params, system):
        x = jnp.where(system.atom_mask[:, None], system.positions, 0.0)
        return {"energy": jnp.zeros(system.n_atoms), "features": x}

    return Potential(init=lambda key, system: {}, energy=lambda p, s: 0.0, cutoff=0.0,
                     config={"name": "toy"}, atomic=atomic, outputs=("energy", "features"))


def test_mahalanobis_matches_scipy_per_element_and_pooled():
    rng = np.random.default_rng(0)
    chol = np.array([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.0, 0.2, 0.1]])
    cov = {29: chol @ chol.T,
           8: np.diag([0.3, 2.0, 0.7])}
    shift = {29: np.array([1.0, -2.0, 0.5]), 8: np.array([-3.0, 0.0, 4.0])}
    train, allx, allz = [], {29: [], 8: []}, []
    for _ in range(40):
        z = rng.choice([29, 8], size=5)
        x = np.stack([rng.multivariate_normal(shift[int(k)], cov[int(k)]) for k in z])
        train.append(System.from_arrays(x, z))
        for k, row in zip(z, x, strict=True):
            allx[int(k)].append(row)
        allz.extend(z)
    pot, s = _toy_potential(), 1e-2
    dens = distance.fit_feature_density(pot, {}, train, shrinkage=s)
    assert dens.species.tolist() == [8, 29] and dens.counts.sum() == 200
    test_x = rng.normal(size=(6, 3)) * 2.0
    test_z = np.array([29, 8, 29, 8, 1, 29])  # hydrogen: never seen
    system = System.from_arrays(test_x, test_z).pad(9, 8)
    d = np.asarray(jax.jit(distance.mahalanobis(pot, dens))({}, system))
    for i, k in enumerate(test_z[:5]):
        if k == 1:
            assert d[i] == np.inf
            continue
        c = np.cov(np.asarray(allx[int(k)]).T)
        vi = np.linalg.inv(c + s * np.trace(c) / 3 * np.eye(3))
        ref = scipy_mahalanobis(test_x[i], np.mean(allx[int(k)], axis=0), vi)
        assert d[i] == pytest.approx(ref, rel=1e-9)
    assert np.all(d[6:] == 0.0)  # padding
    pooled = distance.fit_feature_density(pot, {}, train, shrinkage=s, per_element=False)
    c = np.cov(np.concatenate([allx[8], allx[29]]).T)
    vi = np.linalg.inv(c + s * np.trace(c) / 3 * np.eye(3))
    ref = scipy_mahalanobis(test_x[1], np.concatenate([allx[8], allx[29]]).mean(0), vi)
    assert float(distance.mahalanobis(pot, pooled)({}, system)[1]) == pytest.approx(ref, rel=1e-9)
    # training quantiles are of the in-sample distances, ~ sqrt(chi2_3) for Gaussian data
    assert 1.2 < dens.quantile(0.5, structure=False)[1] < 2.0
    assert dens.quantile(0.5) < dens.quantile(0.95) < dens.quantile(0.99)
    directions, variances = distance.least_sampled_directions(dens, "Cu", 1)
    lam, vec = np.linalg.eigh(np.cov(np.asarray(allx[29]).T))
    assert abs(float(directions[0] @ vec[:, 0])) == pytest.approx(1.0, abs=1e-9)
    assert variances[0] == pytest.approx(lam[0] + s * lam.sum() / 3, rel=1e-9)
    with pytest.raises(ValueError, match="not in the feature density"):
        distance.least_sampled_directions(dens, "Au", 1)


# ---------------------------------------------------------------------------------------------
# Out-of-distribution structures on EMT copper
# ---------------------------------------------------------------------------------------------


def _copper(n, seed, *, rattle=0.05, strain=0.0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", cubic=True).repeat((2, 2, 2))
        a.set_cell(a.cell * (1.0 + strain + 0.01 * rng.uniform(-1, 1)), scale_atoms=True)
        a.rattle(rattle, seed=int(rng.integers(1 << 30)))
        a.calc = EMT()
        a.get_potential_energy()
        out.append(a)
    return out


def _auroc(negatives, positives) -> float:
    """P(score of a random positive > that of a random negative), ties counting 1/2."""
    neg, pos = np.asarray(negatives)[None, :], np.asarray(positives)[:, None]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


@pytest.fixture(scope="module")
def copper():
    cut = 3.2
    train = jdata.from_atoms(_copper(10, 1), cutoff=cut)
    iid = _copper(6, 2)
    ood = (_copper(2, 3, strain=0.08) + _copper(2, 4, strain=-0.08)
           + _copper(2, 5, rattle=0.25))
    graded = [a for k, eps in enumerate((0.0, 0.02, 0.04, 0.06, 0.08, 0.10))
              for a in _copper(1, 10 + k, strain=eps)]
    train_systems = [s.system(n_edges=N_EDGES) for s in train]
    return SimpleNamespace(cut=cut, train=train, train_systems=train_systems, iid=iid, ood=ood,
                           graded=graded)


@pytest.fixture(scope="module")
def copper_gap(copper):
    """A GAP fitted on the copper training frames."""
    pot, params, _ = models.fit_gap(copper.train, n_sparse=16, optimize_noise=False,
                                    cutoff=copper.cut, **SOAP)
    return pot, params


def _copper_model(name: str, copper, copper_gap):
    if name == "gap":
        return copper_gap
    pot = models.nequip(species=["Cu"], cutoff=copper.cut, features="8x0e+4x1o", l_max=1,
                        num_bessel=4, radial_hidden=[8], avg_num_neighbors=12.0,
                        readout_hidden=8)
    return pot, pot.init(jax.random.key(0), copper.train[0].system())


N_EDGES = 640  # one padded shape for every copper frame: one compilation per model


def _systems(images, cut):
    systems = [System.from_ase(a, cutoff=cut) for a in images]
    assert max(s.n_edges for s in systems) <= N_EDGES
    return [s.pad(s.n_atoms, N_EDGES) for s in systems]


def _scores(pot, params, dens, images, cut):
    score = jax.jit(distance.structure_score(pot, dens))
    return np.array([float(score(params, s)) for s in _systems(images, cut)])


@pytest.mark.parametrize("name", ["gap", "nequip"])
def test_mahalanobis_flags_strained_and_hot_copper(name, copper, copper_gap):
    pot, params = _copper_model(name, copper, copper_gap)
    dens = distance.fit_feature_density(pot, params, copper.train_systems)
    s_iid = _scores(pot, params, dens, copper.iid, copper.cut)
    s_ood = _scores(pot, params, dens, copper.ood, copper.cut)
    assert np.all(s_iid > 0) and np.ptp(s_iid) > 0.1 * np.median(s_iid)  # non-trivial
    assert _auroc(s_iid, s_ood) >= 0.8
    # fresh in-distribution frames sit near the training level; OOD ones well above it
    assert np.median(s_iid) < 2.0 * dens.quantile(0.99)
    assert np.median(s_ood) > 2.0 * dens.quantile(0.99)
    if name == "gap":  # the score grows with the strain
        s_graded = _scores(pot, params, dens, copper.graded, copper.cut)
        assert spearmanr(s_graded, np.arange(len(s_graded))).statistic >= 0.9


def test_density_survives_a_model_file(tmp_path, copper, copper_gap):
    pot, params = copper_gap
    dens = distance.fit_feature_density(pot, params, list(copper.train)[:4])
    jaxpot.save_model(tmp_path / "m", pot, params, extras={"feature_density": dens.to_tree()})
    back = distance.FeatureDensity.from_tree(
        jaxpot.serialization.read_model_extras(tmp_path / "m")["feature_density"])
    for a, b in zip(dens, back, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="missing fields"):
        distance.FeatureDensity.from_tree({"mean": dens.mean})
    # the loaded model's features with the loaded density, traced as inside the fused MD loop
    pot2, params2 = jaxpot.load_model(tmp_path / "m")
    system = System.from_ase(copper.ood[0], cutoff=copper.cut)
    observe = distance.observer(back)
    atomic = jax.jit(pot2.atomic)(params2, system)
    obs = jax.jit(lambda atomic, s: observe(SimpleNamespace(system=s),
                                            SimpleNamespace(atomic=atomic)))(atomic, system)
    d = distance.feature_distances(dens, atomic["features"], system.species, system.atom_mask)
    assert float(obs["feature_distance"]) == pytest.approx(float(jnp.max(d)), rel=1e-12)
    assert float(jnp.max(d)) > 2 * dens.quantile(0.99)


def test_push_along_raises_the_score_and_keeps_the_centre_of_mass(copper, copper_gap):
    pot, params = copper_gap
    dens = distance.fit_feature_density(pot, params, copper.train_systems)
    start = copper.train_systems[0]
    res = distance.push_along(pot, params, dens, start, steps=4, step_size=0.04)
    assert res.scores[-1] > 1.5 * res.scores[0]
    assert np.all(np.diff(res.objective) > 0)
    masses = np.asarray(start.masses)
    com_shift = (masses[:, None] * res.displacement).sum(0) / masses.sum()
    assert np.abs(com_shift).max() < 1e-10
    step = np.linalg.norm(res.displacement, axis=1)
    assert 0.04 < step.max() <= 4 * 0.04 + 1e-9
    low = distance.push_along(pot, params, dens, start, steps=2, step_size=0.04, k=3,
                              element="Cu")
    assert low.objective[-1] > low.objective[0]
