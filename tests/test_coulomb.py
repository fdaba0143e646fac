"""Electrostatics (jaxpot.potentials.coulomb): Madelung constants, pymatgen's EwaldSummation,
finite differences, the physics suite, Gaussian charges, the slab correction and the
Born-Mayer-Huggins + Ewald labels of nacl_bmh (LAMMPS)."""

from __future__ import annotations

import pathlib

import ase.io
import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

import jaxpot.potentials.coulomb as C
from jaxpot import System, testing, units
from jaxpot.potential import energy_forces_stress, from_config, sum_potentials
from jaxpot.potentials.bmh import born_mayer_huggins

KE = units.coulomb_constant
DATA = pathlib.Path(__file__).parent / "data"
SHARED = pathlib.Path(__file__).parents[1] / ".." / "shared" / "data" / "nacl_bmh"

# Madelung constants per ion pair, referred to the nearest-neighbour distance (literature values)
MADELUNG = {"rocksalt": 1.747564594633182, "cesiumchloride": 1.762674773070452,
            "zincblende": 1.638055053388789}


def _crystal(kind: str) -> tuple[Atoms, float]:
    """A ±1 crystal and its nearest-neighbour distance."""
    if kind == "rocksalt":
        return bulk("NaCl", "rocksalt", a=5.64, cubic=True), 5.64 / 2
    if kind == "cesiumchloride":
        return bulk("CsCl", "cesiumchloride", a=4.12), 4.12 * np.sqrt(3) / 2
    if kind == "zincblende":
        return bulk("ZnS", "zincblende", a=5.41, cubic=True), 5.41 * np.sqrt(3) / 4
    a, c, u = 3.25, 3.25 * np.sqrt(8 / 3), 3 / 8  # ideal wurtzite
    return bulk("ZnO", "wurtzite", a=a, c=c, u=u), u * c


def _charges(atoms: Atoms) -> np.ndarray:
    """+1 on the first element of the formula unit, −1 on the other."""
    return np.where(atoms.numbers == atoms.numbers[0], 1.0, -1.0)


def _energy(atoms, q, settings, widths=None):
    system = System.from_ase(atoms, cutoff=settings.cutoff)
    return float(C.coulomb_energy(system, q, settings, widths=widths))


def _pymatgen_energy(atoms, q):
    from pymatgen.analysis.ewald import EwaldSummation
    from pymatgen.io.ase import AseAtomsAdaptor
    s = AseAtomsAdaptor.get_structure(atoms)
    s.add_site_property("charge", list(q))
    ew = EwaldSummation(s, acc_factor=30.0, compute_forces=True)
    return ew.total_energy / EwaldSummation.CONV_FACT, ew.forces / EwaldSummation.CONV_FACT


@pytest.mark.parametrize("kind", ["rocksalt", "cesiumchloride", "zincblende", "wurtzite"])
def test_madelung_constants(kind):
    atoms, d = _crystal(kind)
    q = _charges(atoms)
    lengths = atoms.cell.lengths().max()
    ewald = C.coulomb_settings("ewald", cutoff=6.0, max_lengths=lengths, periodic=True)
    pme = C.coulomb_settings("pme", cutoff=6.0, max_lengths=lengths, periodic=True)
    pairs = len(atoms) / 2
    if kind in MADELUNG:
        m_ref = MADELUNG[kind]
    else:  # wurtzite: no tabulated value to 1e-10 at hand; pymatgen's Ewald is the reference
        m_ref = -_pymatgen_energy(atoms, q)[0] * d / pairs
        assert abs(m_ref - 1.6413) < 1e-3  # the textbook value for ideal wurtzite
    m_ewald = -_energy(atoms, q, ewald) * d / (pairs * KE)
    m_pme = -_energy(atoms, q, pme) * d / (pairs * KE)
    assert abs(m_ewald / m_ref - 1) < 1e-8, (kind, m_ewald, m_ref)
    assert abs(m_pme / m_ref - 1) < 1e-5, (kind, m_pme, m_ref)


def _random_cell(seed: int, n: int = 12):
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(6.5, 8.0, 3)) + np.triu(rng.uniform(-1.5, 1.5, (3, 3)), 1)
    atoms = Atoms(numbers=rng.choice([8, 11, 12, 17], n), cell=cell, pbc=True,
                  scaled_positions=rng.random((n, 3)))
    q = rng.choice([-2.0, -1.0, 0.5, 1.0, 1.5], n)
    return atoms, q - q.mean()


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_random_triclinic_matches_pymatgen(seed):
    atoms, q = _random_cell(seed)
    e_ref, f_ref = _pymatgen_energy(atoms, q)
    s = C.coulomb_settings("ewald", accuracy=1e-12, cutoff=8.0, max_lengths=9.0, periodic=True)
    system = System.from_ase(atoms, cutoff=s.cutoff)
    e, g = jax.value_and_grad(
        lambda x: C.coulomb_energy(system.replace(positions=x), q, s))(system.positions)
    assert abs(e_ref) * KE > 1.0 and np.abs(f_ref).max() * KE > 0.5  # non-trivial
    assert abs(float(e) - e_ref * KE) < 1e-8
    np.testing.assert_allclose(-np.asarray(g), f_ref * KE, rtol=0, atol=1e-7)


def test_stress_matches_finite_differences():
    atoms, q = _random_cell(3)
    numbers = np.unique(atoms.numbers)
    # per-species constants for the Potential form: give each element its own charge
    charges = {int(z): float(v) for z, v in zip(numbers, [1.0, -1.0, 2.0, -2.0], strict=False)}
    counts = {z: int(np.sum(atoms.numbers == z)) for z in charges}
    charges[int(numbers[0])] -= sum(charges[z] * counts[z] for z in charges) / counts[numbers[0]]
    # accuracy 1e-14: the truncations (edges and k-vectors crossing the cutoffs under strain)
    # make jumps of ~accuracy x E, which a finite difference divides by 2h
    pot = C.coulomb(charges, method="ewald", accuracy=1e-14, cutoff=7.0, max_lengths=10.0,
                    periodic=True)
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(jax.random.key(0), system)
    testing.assert_stress_matches_finite_differences(pot, params, system, tol=1e-7)


@pytest.mark.parametrize("method", ["ewald", pytest.param("pme", marks=pytest.mark.slow),
                                    "direct"])
def test_charge_derivative_matches_finite_differences(method):
    atoms, q = _random_cell(4, n=8)
    q = q + 0.3  # a charged cell: the background term takes part
    if method == "direct":
        atoms.pbc = False
        atoms.cell = np.zeros((3, 3))
    s = C.coulomb_settings(method, cutoff=7.0, max_lengths=9.0, periodic=method != "direct")
    system = System.from_ase(atoms, cutoff=s.cutoff)
    fn = jax.jit(lambda c: C.coulomb_energy(system, c, s))
    phi = np.asarray(jax.grad(fn)(q))
    h = 1e-4
    fd = np.array([(float(fn(q + h * e)) - float(fn(q - h * e))) / (2 * h) for e in np.eye(8)])
    assert np.abs(phi).max() > 1.0
    np.testing.assert_allclose(phi, fd, rtol=1e-8, atol=1e-8)
    # homogeneous quadratic: the per-atom shares ½ q φ add up to the energy
    assert abs(0.5 * float(np.dot(q, phi)) - float(fn(q))) < 1e-9 * abs(float(fn(q))) + 1e-12


def test_energy_does_not_depend_on_parameter_choice():
    atoms, q = _random_cell(5, n=16)
    energies = []
    for accuracy, cutoff in [(1e-10, 5.0), (1e-12, 8.5)]:
        s = C.coulomb_settings("ewald", accuracy=accuracy, cutoff=cutoff, max_lengths=9.0,
                               periodic=True)
        energies.append(_energy(atoms, q, s))
    pme = C.coulomb_settings("pme", cutoff=7.0, max_lengths=9.0, periodic=True)
    scale = np.abs(energies).max()
    assert scale > 1.0
    assert np.ptp(energies) < 1e-9 * scale, energies
    # PME's accuracy is relative to the energy scale of the charges, k_e α Σq²/√π (the self
    # term), which a random neutral cell's total energy can be far below
    self_scale = KE * pme.alpha * np.sum(q * q) / np.sqrt(np.pi)
    assert abs(_energy(atoms, q, pme) - energies[-1]) < pme.accuracy * self_scale


def _nacl_rattled():
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.set_cell(atoms.cell @ (np.eye(3) + [[0.02, 0.03, 0], [0, -0.01, 0.04], [0, 0, 0.01]]),
                   scale_atoms=True)
    atoms.rattle(0.15, seed=2)
    return atoms


@pytest.mark.parametrize("method", ["ewald", pytest.param("pme", marks=pytest.mark.slow)])
def test_physics_suite(method):
    pot = C.coulomb({"Na": 1, "Cl": -1}, method=method, accuracy=1e-12 if method == "ewald"
                    else 1e-8, cutoff=5.5, max_lengths=12.5, periodic=True)
    system = System.from_ase(_nacl_rattled(), cutoff=pot.cutoff)
    params = pot.init(jax.random.key(0), system)
    tol = {} if method == "ewald" else {"rtol": 1e-7, "atol": 1e-7}  # PME: mesh aliasing
    testing.assert_rotation_reflection_invariance(pot, params, system, **tol)
    testing.assert_translation_invariance(pot, params, system, **tol)
    testing.assert_permutation_invariance(pot, params, system)
    testing.assert_padding_invariance(pot, params, system)
    if method == "ewald":
        testing.assert_supercell_extensivity(pot, params, system, reps=(2, 1, 2), rtol=1e-9,
                                             atol=1e-9)


def test_direct_sum_cluster_and_atomic_outputs():
    rng = np.random.default_rng(6)
    atoms = Atoms("Na4Cl4", positions=rng.uniform(0, 6, (8, 3)))
    pot = C.coulomb({"Na": 1, "Cl": -1}, method="direct")
    system = System.from_ase(atoms)
    e = float(pot.energy({}, system))
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    q = _charges(atoms)
    ref = KE * sum(q[i] * q[j] / d[i, j] for i in range(8) for j in range(i))
    assert abs(ref) > 0.5 and abs(e - ref) < 1e-10 * abs(ref)
    out = pot.atomic({}, system)
    np.testing.assert_allclose(np.asarray(out["charges"]), q)
    assert abs(float(np.sum(out["energy"])) - e) < 1e-10 * abs(e)
    # "auto" periodicity: a non-periodic structure takes the direct sum
    auto = C.coulomb({"Na": 1, "Cl": -1}, cutoff=6.0)
    assert abs(float(auto.energy({}, System.from_ase(atoms, cutoff=6.0))) - e) < 1e-10 * abs(e)
    assert from_config(auto.config).config == auto.config
    # ... and a periodic one the lattice sum, forces included (through the branch on pbc)
    crystal = _nacl_rattled()
    system = System.from_ase(crystal, cutoff=6.0)
    ewald = C.coulomb({"Na": 1, "Cl": -1}, method="ewald", cutoff=6.0, max_lengths=6.0,
                      periodic=True)
    (e_auto, f_auto), (e_ew, f_ew) = (jax.value_and_grad(
        lambda x, p=p: p.energy({}, system.replace(positions=x)))(system.positions)
        for p in (auto, ewald))
    assert abs(float(e_auto) - float(e_ew)) < 1e-10 * abs(float(e_ew))
    assert np.abs(np.asarray(f_ew)).max() > 0.1
    np.testing.assert_allclose(np.asarray(f_auto), np.asarray(f_ew), atol=1e-10)


def test_gaussian_charges_limits():
    # two Gaussians: erf(r/γ)/r at any distance, finite at r → 0, plus the self energies
    s = C.coulomb_settings("direct")
    q, w = np.array([1.0, -0.7]), np.array([0.8, 1.1])
    gamma = np.sqrt(2 * (w ** 2).sum())
    selves = KE * np.sum(q * q / (2 * np.sqrt(np.pi) * w))
    from scipy.special import erf
    for r in [0.15, 0.5, 2.0, 25.0]:
        atoms = Atoms("NaCl", positions=[[0, 0, 0], [r, 0, 0]])
        e = _energy(atoms, q, s, widths=w)
        pair = KE * q[0] * q[1] * (erf(r / gamma) / r)
        assert abs(e - (pair + selves)) < 1e-10 * abs(selves)
    # periodic: the Gaussian correction is the same as in vacuum (images are far away)
    rng = np.random.default_rng(7)
    atoms = Atoms("Na3Cl3", positions=5.0 + rng.uniform(-1.5, 1.5, (6, 3)), cell=[14.0] * 3,
                  pbc=True)
    q, w = _charges(atoms), rng.uniform(0.4, 0.7, 6)
    per = C.coulomb_settings("ewald", accuracy=1e-12, cutoff=7.0, max_lengths=14.0,
                             periodic=True)
    direct = C.coulomb_settings("direct")
    vacuum = atoms.copy()
    vacuum.pbc = False
    gauss = _energy(atoms, q, per, widths=w) - _energy(vacuum, q, direct, widths=w)
    point = _energy(atoms, q, per) - _energy(vacuum, q, direct)
    assert abs(point) > 1e-3  # the image interaction is not trivially zero
    assert abs(gauss - point) < 1e-9
    # narrow Gaussians → point charges plus their self energies
    narrow = np.full(6, 0.02)
    e_narrow = _energy(atoms, q, per, widths=narrow) - KE * np.sum(
        q * q / (2 * np.sqrt(np.pi) * narrow))
    assert abs(e_narrow - _energy(atoms, q, per)) < 1e-9


@pytest.mark.slow  # six compilations of large k boxes; ~2.5 min on the loaded 2-core machine
def test_slab_correction_removes_the_image_dipole():
    # a dipolar bilayer (Na plane, Cl plane) in a periodic box with vacuum along z: with the
    # Yeh-Berkowitz term the energy converges to the 2-D-periodic limit as the vacuum grows
    def energy(lz, slab):
        a = 4.0
        atoms = Atoms("NaCl", positions=[[0, 0, 2.0], [a / 2, a / 2, 4.5]],
                      cell=[a, a, lz], pbc=True)
        s = C.coulomb_settings("ewald", accuracy=1e-12, cutoff=6.0, max_lengths=(4, 4, lz),
                               slab_axis=2 if slab else None, periodic=True)
        return _energy(atoms, _charges(atoms), s)

    plain = [energy(lz, False) for lz in (30.0, 60.0, 120.0)]
    fixed = [energy(lz, True) for lz in (30.0, 60.0, 120.0)]
    assert abs(plain[2] - plain[1]) > 1e-3  # the spurious image dipole interaction
    assert abs(fixed[2] - fixed[1]) < 0.1 * abs(plain[2] - plain[1])
    assert abs(fixed[2] - fixed[1]) < abs(fixed[1] - fixed[0])


def test_bad_input_and_limits():
    with pytest.raises(ValueError, match="method"):
        C.coulomb_settings("p4m")
    with pytest.raises(ValueError, match="accuracy"):
        C.coulomb_settings("ewald", accuracy=2.0)
    with pytest.raises(ValueError, match="order"):
        C.coulomb_settings("pme", order=5)
    with pytest.raises(ValueError, match="unknown element"):
        C.coulomb({"Xx": 1})
    with pytest.raises(ValueError, match="Gaussian width"):
        C.coulomb({"Na": 1, "Cl": -1}, widths={"Na": 1.0})
    # a cell longer than the k box was made for gives NaN, never a wrong number
    atoms, d = _crystal("rocksalt")
    s = C.coulomb_settings("ewald", cutoff=5.0, max_lengths=5.0, periodic=True)
    assert np.isnan(_energy(atoms, _charges(atoms), s))


def _bmh_pot(max_lengths):
    pairs = {"Na-Na": [0.2637037584, 0.317, 2.3400, 1.0485735245, -0.4993207260],
             "Na-Cl": [0.2109630067, 0.317, 2.7550, 6.9904901634, -8.6756976135],
             "Cl-Cl": [0.1582222550, 0.317, 3.1700, 72.4015052637, -145.4271614349]}
    return sum_potentials(born_mayer_huggins(pairs, 9.0, shift=True),
                          C.coulomb({"Na": 1, "Cl": -1}, method="ewald", cutoff=9.0,
                                    max_lengths=max_lengths, periodic=True))


def _check_frames(frames):
    # the static k box covers the longest lattice vectors of the set (melt cells are 12.7 Å)
    pot = _bmh_pot(max_lengths=np.max([a.cell.lengths() for a in frames], axis=0))
    n_atoms = max(len(a) for a in frames)
    systems = [System.from_ase(a, cutoff=9.0) for a in frames]
    n_edges = max(s.n_edges for s in systems)
    efs = jax.jit(energy_forces_stress(pot))
    params = pot.init(jax.random.key(0), systems[0])
    worst_f = worst_s = 0.0
    for atoms, system in zip(frames, systems, strict=True):
        e, f, sigma = efs(params, system.pad(n_atoms, n_edges))
        n = len(atoms)
        worst_f = max(worst_f, np.abs(np.asarray(f)[:n] - atoms.get_forces()).max())
        worst_s = max(worst_s, np.abs(np.asarray(sigma) - atoms.get_stress(voigt=False)).max())
        assert abs(float(e) - atoms.get_potential_energy()) < 1e-3  # LAMMPS ewald 1e-7 energies
    assert worst_f < 1e-5, worst_f
    assert worst_s < 1e-6, worst_s
    return worst_f, worst_s


def test_nacl_bmh_reproduced_on_vendored_frames():
    frames = ase.io.read(DATA / "nacl_bmh_3.xyz", ":")
    assert {a.info["config_type"] for a in frames} == {"aniso_strain", "schottky", "slab100"}
    assert max(np.abs(a.get_forces()).max() for a in frames) > 0.5
    _check_frames(frames)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/data/nacl_bmh")
@pytest.mark.parametrize("split", ["train", "valid"])
def test_nacl_bmh_reproduced_on_every_frame(split):
    _check_frames(ase.io.read(SHARED / f"{split}.xyz", ":"))


def test_float64_term_in_a_float32_model():
    atoms, d = _crystal("rocksalt")
    q = _charges(atoms).astype(np.float32)
    system = System.from_ase(atoms, cutoff=6.0, dtype=np.float32)
    ref = -len(atoms) / 2 * MADELUNG["rocksalt"] * KE / d
    errors = {}
    for dtype in (None, "float64"):
        s = C.coulomb_settings("ewald", cutoff=6.0, max_lengths=6.0, periodic=True, dtype=dtype)
        e = C.coulomb_energy(system, q, s)
        assert e.dtype == np.float32  # the model's dtype comes back
        errors[dtype] = abs(float(C.coulomb_energy(system, q, s)) / ref - 1)
    # float32 inputs (positions rounded to ~3e-7 Å) evaluated in float64, returned in float32
    assert errors["float64"] < 1e-7, errors
