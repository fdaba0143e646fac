"""GAP (sparse GP on SOAP): exact-GP limit, force observations, variances, physics, CLI hook."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from jaxpot import System, testing
from jaxpot import data as jdata
from jaxpot.descriptors import soap as jsoap
from jaxpot.models.gap import fit_gap, gap_predict, gap_predictor, gap_uncertainty_report
from jaxpot.potential import energy_and_forces

CUTOFF = 3.2
SOAP = dict(cutoff=CUTOFF, n_max=3, l_max=2, sigma=0.5, max_neighbors=24)


def _frames(n, *, rattle=0.08, seed=0, strain=0.0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", cubic=True).repeat((2, 1, 1))
        a.set_cell(a.cell * (1.0 + strain * rng.uniform(-1, 1)), scale_atoms=True)
        a.rattle(rattle, seed=int(rng.integers(1 << 30)))
        a.calc = EMT()
        a.get_potential_energy()
        out.append(a)
    return out


@pytest.fixture(scope="module")
def data():
    train = jdata.from_atoms(_frames(10, seed=1, strain=0.02), cutoff=CUTOFF)
    test = jdata.from_atoms(_frames(6, seed=2, strain=0.02), cutoff=CUTOFF)
    return train, test


def _padded(dataset, n_edges=None):
    n_at = max(s.n_atoms for s in dataset)
    n_ed = n_edges or max(s.n_edges for s in dataset) + 8
    return [s.system(n_atoms=n_at, n_edges=n_ed) for s in dataset]


@pytest.fixture(scope="module")
def fitted(data):
    train, _ = data
    # fixed default noise: the evidence picks a noise so small here that large weights of both
    # signs cancel in the energy, and rounding limits the invariance checks to ~1e-6 relative
    return fit_gap(train, n_sparse=24, optimize_noise=False, **SOAP)


def test_exact_dense_gp_limit():
    """M = all environments, energy observations: PP mean and variance = closed-form GP."""
    # diverse environments keep K_MM well enough conditioned for jitter = 0
    frames = _frames(6, rattle=0.3, strain=0.1, seed=11)
    train = jdata.from_atoms(frames[:3], cutoff=CUTOFF)
    test = jdata.from_atoms(frames[3:], cutoff=CUTOFF)
    delta, s_e, zeta = 0.3, 0.01, 8
    opts = dict(SOAP, n_max=4, l_max=3)
    pot, params, info = fit_gap(train, n_sparse=10_000, use_forces=False, delta=delta,
                                sigma_energy=s_e, zeta=zeta, jitter=0.0, optimize_noise=False,
                                **opts)
    n_env = sum(s.n_atoms for s in train)
    assert info.n_sparse == n_env
    sp = jsoap.soap_params(CUTOFF, 4, 3, ["Cu"], sigma=SOAP["sigma"],
                           cutoff_padding=0.0, smooth=True, normalize=True)

    def desc(s):
        return np.asarray(jsoap.soap(s.system(), sp, max_neighbors=24))

    p_train = [desc(s) for s in train]
    p = np.concatenate(p_train)
    owner = np.repeat(np.arange(len(train)), [s.n_atoms for s in train])
    lmat = (owner[None, :] == np.arange(len(train))[:, None]).astype(float)  # [S, N_env]
    n_atoms = np.array([s.n_atoms for s in train], float)
    e = np.array([s.energy for s in train])
    ref, *_ = np.linalg.lstsq(n_atoms[:, None], e, rcond=None)
    y = e - n_atoms * ref[0]
    k_aa = delta**2 * (p @ p.T) ** zeta
    cov = lmat @ k_aa @ lmat.T + np.diag(s_e**2 * n_atoms)
    for s in test:
        ps = desc(s)
        k_s = delta**2 * (ps @ p.T) ** zeta  # [n*, N_env]
        k_row = k_s.sum(0) @ lmat.T  # [S]
        mean = k_row @ np.linalg.solve(cov, y) + s.n_atoms * ref[0]
        var = delta**2 * np.sum((ps @ ps.T) ** zeta) - k_row @ np.linalg.solve(cov, k_row)
        e_gap, v_gap, _, _ = gap_predict(pot, params, s.system())
        np.testing.assert_allclose(float(e_gap), mean, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(float(v_gap), var, rtol=1e-5, atol=1e-9)
        assert float(pot.energy(params, s.system())) == pytest.approx(float(e_gap), abs=1e-10)


def test_force_rows_are_minus_energy_gradient(fitted, data):
    pot, params, _ = fitted
    s = data[1][0].system()
    _, _, f_gp, f_var = gap_predict(pot, params, s)
    _, f_ad = energy_and_forces(pot)(params, s)
    assert np.abs(np.asarray(f_ad)).max() > 1e-3
    np.testing.assert_allclose(np.asarray(f_gp), np.asarray(f_ad), atol=1e-10)
    assert np.all(np.asarray(f_var) >= 0)


def test_force_observations_reduce_force_error(data, fitted):
    train, test = data
    pot_e, params_e, _ = fit_gap(train, n_sparse=24, use_forces=False, optimize_noise=False,
                                 **SOAP)
    pot_f, params_f, _ = fitted
    ef_e = jax.jit(energy_and_forces(pot_e))
    ef_f = jax.jit(energy_and_forces(pot_f))
    err_e, err_f = [], []
    for s, sy in zip(test, _padded(test), strict=True):
        err_e.append(np.abs(np.asarray(ef_e(params_e, sy)[1])[: s.n_atoms] - s.forces))
        err_f.append(np.abs(np.asarray(ef_f(params_f, sy)[1])[: s.n_atoms] - s.forces))
    mae_e, mae_f = np.mean(err_e), np.mean(err_f)
    f_mean = np.mean([np.abs(s.forces).mean() for s in test])
    assert mae_f < 0.7 * mae_e, (mae_f, mae_e)
    assert mae_f < 0.5 * f_mean, (mae_f, f_mean)


def test_variance_grows_far_from_data(fitted, data):
    pot, params, _ = fitted
    near = data[1][0].system()
    far_atoms = _frames(1, rattle=0.35, seed=9)[0]
    far_atoms.set_cell(far_atoms.cell * 0.93, scale_atoms=True)
    far = System.from_ase(far_atoms, cutoff=CUTOFF)
    _, ev_near, _, fv_near = gap_predict(pot, params, near)
    _, ev_far, _, fv_far = gap_predict(pot, params, far)
    assert float(ev_far) > 3 * float(ev_near)
    assert float(jnp.mean(fv_far)) > 3 * float(jnp.mean(fv_near))


def test_declared_protocol_atomic_energies_and_variances(fitted, data):
    """The model protocol: GAP declares its species, a closed-form ``fit`` (no factory
    attribute) and per-atom energies that sum to the energy, with per-atom variances that grow
    far from the data."""
    pot, params, _ = fitted
    assert pot.species == (29,) and pot.fit is not None and pot.prepare is None
    assert pot.outputs == ("energy", "variance", "features") and not hasattr(type(pot), "train")
    near = data[1][0].system()
    far_atoms = _frames(1, rattle=0.35, seed=9)[0]
    far_atoms.set_cell(far_atoms.cell * 0.93, scale_atoms=True)
    far = System.from_ase(far_atoms, cutoff=CUTOFF)
    at_near = pot.atomic(params, near)
    at_far = pot.atomic(params, far)
    for sy, at in ((near, at_near), (far, at_far)):
        assert float(jnp.sum(at["energy"])) == pytest.approx(float(pot.energy(params, sy)),
                                                             abs=1e-9)
        assert np.ptp(np.asarray(at["energy"])) > 1e-4  # atoms really differ
    v_near, v_far = np.asarray(at_near["variance"]), np.asarray(at_far["variance"])
    assert np.all(v_near >= 0) and v_far.mean() > 3 * v_near.mean()
    # each per-atom variance is at most the prior δ²
    assert v_far.max() <= float(params["delta2"]) * (1 + 1e-9)


def test_fit_through_the_protocol_leaves_global_x64_alone(data, x64_off):
    """``potential.fit`` (what ``jaxpot train --model gap`` calls) runs in float64 under a
    scoped x64 and returns float64 host arrays; the global setting is untouched."""
    from jaxpot.models.gap import gap

    train, test = data
    pot, params, info = gap(n_sparse=12, optimize_noise=False, **SOAP).fit(
        train, refs=None, deadline=None, verbose=False, seed=3)
    assert not jax.config.jax_enable_x64  # the global flag (x64_off fixture), not a context
    assert info.n_sparse == 12 and params["weights"].dtype == np.float64
    assert isinstance(params["chol_a"], np.ndarray)
    with jax.enable_x64(True):  # GAP predictions need float64 (the CLI switches it on)
        e = float(pot.energy(params, test[0].system()))
    assert abs(e - test[0].energy) / test[0].n_atoms < 0.05


def test_variance_ranks_force_errors(fitted, data):
    """Spearman correlation of predicted force std with actual |error| on held-out frames
    (gap_uncertainty_report), and the report's own figures checked against a direct count."""
    from scipy.stats import spearmanr

    pot, params, info = fitted
    _, test = data
    extra = jdata.from_atoms(_frames(4, rattle=0.2, seed=5), cutoff=CUTOFF)
    frames = jdata.Dataset(list(test) + list(extra), CUTOFF)
    rep = gap_uncertainty_report(pot, params, frames, sigma_force=info.sigma_force)
    assert rep["n_frames"] == len(frames)
    assert rep["spearman_component"] > 0.2, rep
    assert rep["spearman_atom"] > 0.2, rep
    # The frames rattled 2.5x harder are both the most uncertain and the worst predicted.
    assert rep["spearman_structure"] > 0.5, rep
    predict = gap_predictor(pot)
    std, err, cov = [], [], []
    for s, sy in zip(frames, _padded(frames), strict=True):
        _, _, f, fv = predict(params, sy)
        std.append(np.sqrt(np.asarray(fv)[: s.n_atoms]).reshape(-1))
        cov.append(np.sqrt(np.asarray(fv)[: s.n_atoms] + info.sigma_force ** 2).reshape(-1))
        err.append(np.abs(np.asarray(f)[: s.n_atoms] - s.forces).reshape(-1))
    std, err, cov = np.concatenate(std), np.concatenate(err), np.concatenate(cov)
    assert rep["spearman_component"] == pytest.approx(spearmanr(std, err).statistic, abs=1e-9)
    assert rep["coverage_1sigma"] == pytest.approx(np.mean(err <= cov))
    assert 0.0 < rep["coverage_1sigma"] < rep["coverage_2sigma"] <= 1.0


def test_physics(fitted, data):
    pot, params, _ = fitted
    s = data[1][1].system()
    testing.assert_rotation_reflection_invariance(pot, params, s)
    testing.assert_translation_invariance(pot, params, s)
    testing.assert_permutation_invariance(pot, params, s)
    # The energy Σ_m w_m k_m sums weights of both signs that are much larger than E (tiny
    # noise, near-duplicate environments), so its rounding error limits finite differences to
    # ~1e-6 relative at any h; forces themselves equal the analytic kernel-derivative rows to
    # 1e-10 (test_force_rows_are_minus_energy_gradient).
    testing.assert_forces_match_finite_differences(pot, params, s, tol=1e-5)
    testing.assert_padding_invariance(pot, params, s)


def test_noise_grid_and_cli_train(tmp_path, data):
    import ase.io

    from jaxpot.serialization import load_model
    from jaxpot.train.loop import TrainConfig, train

    path = tmp_path / "train.xyz"
    ase.io.write(path, _frames(8, seed=3, strain=0.02))
    cfg = TrainConfig(train=str(path), model="gap", cutoff=CUTOFF, out=str(tmp_path / "run"),
                      valid_fraction=0.25, plots=False, stress_key=None,
                      model_kwargs=dict(n_max=3, l_max=2, sigma=0.5, max_neighbors=24,
                                        n_sparse=16, optimize_noise=True))
    result = train(cfg)
    assert result["stop_reason"] == "closed_form"
    assert result["best"]["force_mae_mev_per_a"] < 400
    assert len(result["best"]["fit"]["grid"]) == 25
    unc = result["best"]["uncertainty"]
    assert unc["n_frames"] == 2 and -1.0 <= unc["spearman_component"] <= 1.0
    pot, params = load_model(result["model"])
    assert pot.config["name"] == "gap"
    s = data[1][0].system()
    assert np.isfinite(float(pot.energy(params, s)))


def test_evidence_recovers_injected_force_noise():
    """Marginal likelihood: σ_F follows Gaussian noise added to the force labels."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = _frames(8, seed=5, strain=0.02, rattle=0.1)
    rng = np.random.default_rng(0)
    found = {}
    for noise in (0.0, 0.2):
        noisy = []
        for a in frames:
            b = a.copy()
            f = a.get_forces() + rng.normal(0.0, noise, (len(a), 3))
            b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=f)
            noisy.append(b)
        _, _, info = fit_gap(jdata.from_atoms(noisy, cutoff=CUTOFF), n_sparse=10_000, **SOAP)
        assert info.log_marginal_likelihood >= max(g[2] for g in info.grid) - 1e-6
        found[noise] = info.sigma_force
    assert 0.15 < found[0.2] < 0.27, found  # the injected 0.2 eV/Å (plus a small model error)
    assert found[0.0] < 0.5 * found[0.2], found


def test_frames_without_an_energy_label_still_give_their_forces():
    """``allow_partial``: a frame without an energy drops out of the energy rows only (it
    used to crash the fit, or make the element references NaN)."""
    frames = _frames(8, seed=5, strain=0.02)
    for a in frames:
        a.info["energy"] = a.get_potential_energy()
        a.arrays["forces"] = a.get_forces()
        a.calc = None
    del frames[3].info["energy"]
    with pytest.warns(UserWarning, match="energy"):
        train = jdata.from_atoms(frames, cutoff=CUTOFF, allow_partial=True)
    assert train.structures[3].energy is None and train.structures[3].forces is not None
    pot, params, info = fit_gap(train, n_sparse=16, optimize_noise=False, **SOAP)
    assert info.n_structures == 8
    assert np.all(np.isfinite(np.asarray(params["weights"])))
    test = jdata.from_atoms(_frames(3, seed=6, strain=0.02), cutoff=CUTOFF)
    with jax.enable_x64(True):
        for s in test:
            e = float(pot.energy(params, s.system()))
            assert abs(e - s.energy) / s.n_atoms < 0.05
