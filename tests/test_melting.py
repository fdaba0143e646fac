"""Steinhardt order parameters (vs a direct NumPy/SciPy implementation and lattice values) and
the melting protocol (a superheated half-melted cell melts, a supercooled one freezes)."""

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list
from scipy.special import sph_harm_y

from jaxpot.analysis import melting, order
from jaxpot.potentials.emt import emt
from jaxpot.system import System

_q6_jit = jax.jit(lambda system, cutoff: order.steinhardt_q(system, cutoff=cutoff))


def _q_reference(atoms, cutoff, l, average):
    """Q_l per atom from ASE's neighbour list and SciPy's spherical harmonics (all m)."""
    i, j, d = neighbor_list("ijD", atoms, cutoff)
    n = len(atoms)
    r = np.linalg.norm(d, axis=1)
    theta, phi = np.arccos(d[:, 2] / r), np.arctan2(d[:, 1], d[:, 0])
    ms = np.arange(-l, l + 1)
    y = sph_harm_y(l, ms[None, :], theta[:, None], phi[:, None])  # [edges, 2l+1]
    q = np.zeros((n, 2 * l + 1), complex)
    counts = np.bincount(i, minlength=n)
    np.add.at(q, i, y)
    q /= np.maximum(counts, 1)[:, None]
    if average:
        qbar = q.copy()
        np.add.at(qbar, i, q[j])
        q = qbar / (counts + 1)[:, None]
    return np.sqrt(4 * np.pi / (2 * l + 1) * np.sum(np.abs(q) ** 2, axis=1))


@pytest.mark.parametrize("average", [False, True])
def test_q6_equals_direct_numpy_on_a_disordered_cluster_and_crystal(average):
    rng = np.random.default_rng(0)
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 3))
    crystal.rattle(0.25, rng=rng)  # disordered enough that every atom has its own Q6
    cluster = Atoms("Cu40", positions=rng.uniform(0, 8.0, (40, 3)))
    for atoms, l in ((crystal, 6), (cluster, 6), (crystal, 4)):
        ref = _q_reference(atoms, 3.2, l, average)
        system = System.from_ase(atoms, cutoff=4.0, n_atoms=len(atoms) + 3,
                                 n_edges=len(atoms) * 30)  # longer edges and padding ignored
        got = np.asarray(order.steinhardt_q(system, l=l, cutoff=3.2, average=average))
        assert np.std(ref) > 0.01
        np.testing.assert_allclose(got[:len(atoms)], ref, rtol=0, atol=1e-10)
        assert np.all(got[len(atoms):] == 0)


def test_spherical_harmonics_equal_scipy():
    v = np.random.default_rng(1).normal(size=(50, 3))
    theta = np.arccos(v[:, 2] / np.linalg.norm(v, axis=1))
    phi = np.arctan2(v[:, 1], v[:, 0])
    for l in (0, 3, 6, 8):
        re, im = order.spherical_harmonics(v, l)
        ref = sph_harm_y(l, np.arange(l + 1)[None, :], theta[:, None], phi[:, None])
        np.testing.assert_allclose(np.asarray(re) + 1j * np.asarray(im), ref, atol=1e-12)


@pytest.mark.parametrize("structure,a,cutoff,expected", [
    # literature values of Q6 for perfect lattices with their first shell (bcc: 8 + 6)
    ("fcc", 3.61, 3.0, 0.57452), ("hcp", 2.55, 3.0, 0.48476), ("bcc", 2.87, 3.1, 0.51069),
    ("sc", 3.0, 3.2, 0.35355),
])
def test_q6_of_perfect_lattices(structure, a, cutoff, expected):
    kw = {"c": a * np.sqrt(8 / 3)} if structure == "hcp" else {}
    atoms = bulk("Cu", structure, a=a, **kw).repeat(3)
    system = System.from_ase(atoms, cutoff=cutoff, n_atoms=54, n_edges=54 * 16)  # one shape
    q = np.asarray(_q6_jit(system, cutoff))[:len(atoms)]
    np.testing.assert_allclose(q, expected, atol=5e-5)


def test_q6_of_random_directions_is_one_over_sqrt_n():
    """Uncorrelated bond directions (an ideal-gas 'liquid'): E[Q_l²] = 1/N_b exactly."""
    rng = np.random.default_rng(2)
    atoms = Atoms("Cu500", positions=rng.uniform(0, 12.0, (500, 3)), cell=[12.0] * 3, pbc=True)
    system = System.from_ase(atoms, cutoff=3.5)
    q = np.asarray(order.steinhardt_q(system, cutoff=3.5, average=False))
    _, _, counts = order.steinhardt_qlm(system, cutoff=3.5)
    counts = np.asarray(counts)
    ok = counts > 0
    ratio = np.mean(q[ok] ** 2 * counts[ok])  # each term has mean 1
    assert abs(ratio - 1.0) < 0.1


def _bonds_reference(atoms, cutoff, l, dot_threshold):
    """Solid-like bond counts from ASE's neighbour list and SciPy's harmonics (all m)."""
    i, j, d = neighbor_list("ijD", atoms, cutoff)
    n = len(atoms)
    r = np.linalg.norm(d, axis=1)
    theta, phi = np.arccos(d[:, 2] / r), np.arctan2(d[:, 1], d[:, 0])
    y = sph_harm_y(l, np.arange(-l, l + 1)[None, :], theta[:, None], phi[:, None])
    q = np.zeros((n, 2 * l + 1), complex)
    np.add.at(q, i, y)
    q /= np.maximum(np.bincount(i, minlength=n), 1)[:, None]
    unit = q / np.linalg.norm(q, axis=1, keepdims=True)
    dots = np.real(np.sum(unit[i] * np.conj(unit[j]), axis=1))
    return np.bincount(i[dots > dot_threshold], minlength=n)


_bonds_jit = jax.jit(lambda system, thr: (order.solid_bonds(system, cutoff=3.2, dot_threshold=thr),
                                           order.solid_mask(system, cutoff=3.2, dot_threshold=thr)))


def test_solid_bonds_equal_direct_numpy_and_separate_crystal_from_gas():
    rng = np.random.default_rng(5)
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 3))
    rattled = crystal.copy()
    rattled.rattle(0.3, rng=rng)
    side = 12.0 * (48 / 200) ** (1 / 3)  # liquid-like density, random positions
    gas = Atoms("Cu48", positions=rng.uniform(0, side, (48, 3)), cell=[side] * 3, pbc=True)
    cases = ((crystal, 0.5), (rattled, 0.5), (rattled, 0.7), (gas, 0.5))
    for k, (atoms, thr) in enumerate(cases):
        ref = _bonds_reference(atoms, 3.2, 6, thr)
        system = System.from_ase(atoms, cutoff=4.0, n_atoms=51, n_edges=48 * 50)  # one shape;
        got, mask = (np.asarray(x) for x in _bonds_jit(system, thr))  # long edges, padding
        np.testing.assert_array_equal(got[:48], ref)
        np.testing.assert_array_equal(mask[:48], ref >= 7)
        assert np.all(got[48:] == 0) and not mask[48:].any()
        if k == 0:
            assert np.all(ref == 12)  # perfect fcc: every bond is solid-like
        else:
            assert np.ptp(ref) >= 3  # non-trivial: the counts vary from atom to atom
    assert mask[:48].mean() < 0.1 and ref.mean() < 3  # the random 'liquid' is not solid


def test_separating_threshold():
    assert order.separating_threshold([0.5, 0.6, 0.55], [0.1, 0.2, 0.3]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="liquid mean"):
        order.separating_threshold([0.1], [0.5])


def test_melting_point_fit_recovers_a_known_zero():
    rng = np.random.default_rng(3)
    temps = np.array([1100.0, 1200.0, 1300.0, 1400.0])
    errors = np.full(4, 0.01)
    found = []
    for _ in range(200):
        rates = -0.002 * (temps - 1234.0) + rng.normal(0, 0.01, 4)
        found.append(melting.melting_point(temps, rates, errors))
    tm, err = np.array(found).T
    z = (tm - 1234.0) / err
    assert abs(np.mean(tm) - 1234.0) < 3.0
    assert 0.7 < np.std(z) < 1.3  # the error bars are calibrated
    with pytest.raises(ValueError, match="does not fall"):
        melting.melting_point(temps, 0.001 * temps, errors)


def test_interface_rate_of_a_linear_series():
    t = np.linspace(0, 10, 60)
    f = 0.5 - 0.03 * t + np.random.default_rng(4).normal(0, 0.01, t.size)
    rate, err, n = melting.interface_rate(t, f)
    assert n == 60 and abs(rate + 0.03) < 4 * err and err < 0.01


@pytest.mark.slow  # ~45 s on a loaded core (three MD compilations)
def test_classifier_reads_a_free_crystal_as_solid_and_the_melt_as_liquid():
    """EMT copper at 1400 K, fixed volume: a free (untethered) crystal reads ~1, the melt ~0."""
    pot = emt(["Cu"])
    crystal = System.from_ase(bulk("Cu", "fcc", a=3.65, cubic=True).repeat(3))
    solid, liquid = melting.classifier_check(pot, pot.init(None, None), crystal,
                                             temperature_kelvin=1400.0, steps=60,
                                             melt_steps=200, melt_temperature_kelvin=3500.0,
                                             dt_fs=5.0, ensemble="langevin")
    assert solid > 0.9 and liquid < 0.15


def test_superheated_melts_and_supercooled_freezes():
    """EMT copper: a tiny half-melted cell at 1900 K loses crystal, at 700 K it gains it."""
    pot = emt(["Cu"])
    params = pot.init(None, None)
    crystal = System.from_ase(bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 4)))
    cell = melting.half_melted_cell(pot, params, crystal, melt_temperature_kelvin=2500.0,
                                    temperature_kelvin=1300.0, melt_steps=120, steps=40,
                                    dt_fs=5.0)
    assert cell.solid_mask.sum() == 32
    assert cell.q6[cell.solid_mask].mean() > cell.threshold > cell.q6[~cell.solid_mask].mean()
    # The scalar Q6 cut calibrated on this cell: in a 2x2-cell cross-section the solid-like-bond
    # criterion reads the whole cell as solid (the periodic images order the thin liquid).
    res = melting.coexistence(pot, params, cell, [700.0, 1900.0], steps=150,
                              threshold=cell.threshold, ensemble="langevin", dt_fs=5.0,
                              log_every=25)
    start = res.fractions[:, 0]
    assert 0.3 < start[0] < 0.8
    assert res.fractions[0, -3:].mean() > start[0] + 0.15  # supercooled: freezes
    assert res.fractions[1, -3:].mean() < start[1] - 0.15  # superheated: melts


def test_crystal_at_expands_copper_to_its_npt_cell():
    """EMT copper at 900 K: the cell grows from the 0 K lattice to about the NPT lattice
    constant (3.6631 Å from ten long MTK runs, docs/npt.md), isotropically, and the atoms keep
    their fractional coordinates."""
    pot = emt(["Cu"])
    params = pot.init(None, None)
    crystal = System.from_ase(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3))
    hot = melting.crystal_at(pot, params, crystal, temperature_kelvin=900.0, steps=2000,
                             dt_fs=2.0)
    a = np.linalg.norm(np.asarray(hot.cell, np.float64), axis=1) / 3
    assert np.ptp(a) < 1e-9
    # 2 ps of averaging: ±0.005 Å of noise (one run); the expansion itself is 0.05 Å
    assert abs(a[0] - 3.6631) < 0.012 and a[0] - 3.61 > 0.035
    frac0 = np.asarray(crystal.positions) @ np.linalg.inv(np.asarray(crystal.cell))
    frac1 = np.asarray(hot.positions) @ np.linalg.inv(np.asarray(hot.cell))
    np.testing.assert_allclose(frac1, frac0, atol=1e-6)
