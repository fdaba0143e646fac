"""RDF against ASE's get_rdf (cubic, triclinic, partial), coordination numbers and S(q) of a
perfect crystal (analytic), the in-loop observer against the same frames afterwards."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.geometry.rdf import get_rdf

from jaxpot.analysis import structure


def _random_frames(cell, n, n_frames, seed, numbers):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        frac = rng.random((n, 3))
        frames.append(Atoms(numbers=numbers, scaled_positions=frac, cell=cell, pbc=True))
    return frames


@pytest.mark.parametrize("cell", [
    np.diag([9.0, 10.0, 11.0]),
    np.array([[9.0, 0.0, 0.0], [3.0, 9.5, 0.0], [-2.0, 2.5, 10.0]]),  # triclinic
])
def test_rdf_equals_ase_get_rdf(cell):
    numbers = [29] * 40 + [8] * 20
    frames = _random_frames(cell, 60, 3, seed=0, numbers=numbers)
    h = min(abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[(i + 1) % 3],
                                                                cell[(i + 2) % 3]))
            for i in range(3))
    r_max, n_bins = 0.49 * h, 40
    res = structure.rdf(frames, r_max=r_max, n_bins=n_bins)
    g_ase, r_ase = get_rdf(frames, r_max, n_bins)
    np.testing.assert_allclose(res.r, r_ase)
    assert res.total.max() > 0.5  # non-trivial: pairs were found
    np.testing.assert_allclose(res.total, g_ase, rtol=1e-10, atol=1e-10)
    for a, b in [(29, 29), (29, 8), (8, 29), (8, 8)]:
        ref = get_rdf(frames, r_max, n_bins, elements=(a, b), no_dists=True)
        np.testing.assert_allclose(res.pair(a, b), ref, rtol=1e-10, atol=1e-10)


def test_rdf_refuses_r_max_past_minimum_image_and_reads_extxyz(tmp_path):
    frames = _random_frames(np.eye(3) * 8.0, 20, 2, seed=1, numbers=[18] * 20)
    with pytest.raises(ValueError, match="half the cell's smallest"):
        structure.rdf(frames, r_max=4.5, n_bins=10)
    import ase.io

    path = tmp_path / "t.extxyz"
    ase.io.write(path, frames)
    from_file = structure.rdf(str(path), r_max=3.9, n_bins=10)
    direct = structure.rdf(frames, r_max=3.9, n_bins=10)
    np.testing.assert_allclose(from_file.total, direct.total)


def test_rdf_padding_does_not_change_the_result():
    frames = _random_frames(np.eye(3) * 9.0, 30, 1, seed=2, numbers=[18] * 30)
    x = frames[0].positions
    padded = np.vstack([x, np.zeros((5, 3))])
    a = structure.rdf_arrays(x, frames[0].cell[:], [18] * 30, r_max=4.4, n_bins=20)
    b = structure.rdf_arrays(padded, frames[0].cell[:], [18] * 30 + [0] * 5, r_max=4.4,
                             n_bins=20, mask=[True] * 30 + [False] * 5)
    np.testing.assert_allclose(a.total, b.total)


def test_fcc_coordination_and_bragg_peaks():
    a0 = 3.6
    atoms = bulk("Cu", "fcc", a=a0, cubic=True).repeat(4)
    res = structure.rdf(atoms, r_max=0.49 * 4 * a0, n_bins=300)
    # first shell of fcc: 12 neighbours at a/√2, 6 more at a → 18 within 1.1 a
    assert structure.coordination_number(res) == pytest.approx(12.0)
    assert structure.coordination_number(res, r_cut=1.1 * a0) == pytest.approx(18.0)
    assert structure.coordination_number(res, "Cu", "Cu", r_cut=0.8 * a0) == pytest.approx(12.0)
    # S(q): N at allowed reflections (all-even or all-odd hkl), 0 at forbidden ones (100), (110)
    q, s = structure.structure_factor(atoms, q_max=2 * np.pi / a0 * 2.05, n_bins=400)
    n = len(atoms)
    q111 = 2 * np.pi / a0 * np.sqrt(3)
    q100 = 2 * np.pi / a0
    assert s[np.argmin(abs(q - q111))] == pytest.approx(n, rel=1e-8)
    assert s[np.argmin(abs(q - q100))] == pytest.approx(0.0, abs=1e-8)


def test_structure_factor_from_rdf_matches_direct_sum_for_a_gas():
    # uniform random points: g = 1, S = 1 both ways (up to noise)
    frames = _random_frames(np.eye(3) * 12.0, 200, 4, seed=3, numbers=[18] * 200)
    res = structure.rdf(frames, r_max=5.9, n_bins=60)
    q = np.linspace(2.0, 6.0, 5)
    s_rdf = structure.structure_factor_from_rdf(res, q)
    qd, sd = structure.structure_factor(frames, q_max=6.0, n_bins=12)
    assert np.all(abs(s_rdf - 1) < 0.25)
    assert np.all(abs(sd[qd > 2.0] - 1) < 0.25)


def test_rdf_observer_in_the_fused_loop_equals_rdf_of_the_frames():
    from jaxpot import System, md, potentials

    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    system = System.from_ase(atoms)
    pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=5.0)
    obs = structure.rdf_observer(system, r_max=5.2, n_bins=26)
    res = md.simulate(pot, pot.init(None, system), system, dt_fs=5.0,
                      temperature_kelvin=200.0, steps=40, log_every=10, trajectory_every=10,
                      observers=[obs])
    from_log = structure.rdf_from_log(res.log["rdf"], obs)
    after = structure.rdf(res, r_max=5.2, n_bins=26)
    assert res.log["rdf"].shape == (5, 1, 1, 26)
    np.testing.assert_allclose(from_log.total, after.total, rtol=1e-9, atol=1e-9)
    ref = get_rdf(res.to_atoms(), 5.2, 26, no_dists=True)
    np.testing.assert_allclose(after.total, ref, rtol=1e-9, atol=1e-9)
