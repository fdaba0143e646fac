"""Dispersion: jaxpot's D3 against the ``dftd3`` package, the fitted-C6 term against a plain
NumPy pair loop over ASE's neighbour list, and the tail correction against the lattice sum it
replaces.

The D3 comparisons run with ``shift=False`` and ``dftd3``'s own real-space cutoffs, on rattled
structures with several elements (so coordination numbers, reference weights and forces are far
from trivial), and require 1e-8 agreement in energy (eV), forces (eV/Å) and stress.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list
from ase.units import Bohr, Hartree

from jaxpot import testing
from jaxpot.potential import energy_forces_stress, from_config
from jaxpot.potentials import d3_tables
from jaxpot.potentials.dispersion import d3, dispersion, tail_energy
from jaxpot.system import System

dftd3_interface = pytest.importorskip("dftd3.interface")

TOL = 1e-8


def _dftd3(atoms, damping, cutoff_bohr=None, cn_bohr=None):
    """dftd3's energy (eV), forces (eV/Å), stress (eV/Å³) and per-atom energies (eV)."""
    periodic = bool(atoms.pbc.all())
    model = dftd3_interface.DispersionModel(
        atoms.numbers, atoms.positions / Bohr,
        lattice=np.asarray(atoms.cell) / Bohr if periodic else None,
        periodic=atoms.pbc if periodic else None)
    if cutoff_bohr is not None:
        model.set_realspace_cutoff(cutoff_bohr, cutoff_bohr, cn_bohr)
    param = (dftd3_interface.RationalDampingParam(method="pbe") if damping == "bj"
             else dftd3_interface.ZeroDampingParam(method="pbe"))
    res = model.get_dispersion(param, grad=True)
    pairs = model.get_pairwise_dispersion(param)["additive pairwise energy"]
    stress = res["virial"] * Hartree / atoms.get_volume() if periodic else None
    return (float(res["energy"]) * Hartree, -res["gradient"] * Hartree / Bohr, stress,
            pairs.sum(axis=1) * Hartree)


def _molecule():
    atoms = molecule("CH3CH2OH") + molecule("NH3")
    atoms.positions[9:] += [3.5, 0.3, 0.2]
    atoms.rattle(0.05, seed=1)
    return atoms


def _crystal():
    atoms = bulk("NaCl", "rocksalt", a=5.5, cubic=True)
    atoms.set_cell(atoms.cell @ (np.eye(3) + [[0.02, 0.03, 0], [0, -0.01, 0.04], [0, 0, 0.03]]),
                   scale_atoms=True)
    atoms.rattle(0.1, seed=2)
    return atoms


@pytest.mark.parametrize("damping", ["bj", "zero"])
def test_d3_molecule_matches_dftd3(damping):
    atoms = _molecule()
    pot = d3("pbe", damping=damping, shift=False)
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(None, system)
    e, f, _ = jax.jit(energy_forces_stress(pot))(params, system)
    e_ref, f_ref, _, atomic_ref = _dftd3(atoms, damping)
    assert abs(e_ref) > 0.05 and np.abs(f_ref).max() > 1e-3  # non-trivial
    assert abs(float(e) - e_ref) < TOL
    np.testing.assert_allclose(np.asarray(f), f_ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(pot.atomic(params, system)["energy"]), atomic_ref,
                               atol=TOL, rtol=0)


def test_d3_periodic_matches_dftd3():
    atoms = _crystal()
    cut, cn_cut = 30.0, 20.0  # bohr, set on both sides
    pot = d3("pbe", shift=False, cutoff=cut * Bohr, cn_cutoff=cn_cut * Bohr)
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    e, f, s = jax.jit(energy_forces_stress(pot))(pot.init(None, system), system)
    e_ref, f_ref, s_ref, _ = _dftd3(atoms, "bj", cut, cn_cut)
    assert np.abs(f_ref).max() > 1e-3 and np.abs(s_ref).max() > 1e-4
    assert abs(float(e) - e_ref) < TOL
    np.testing.assert_allclose(np.asarray(f), f_ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(s), s_ref, atol=TOL, rtol=0)


def _d3_physics_case():
    pot = d3("pbe", cutoff=6.0, cn_cutoff=4.5, tail=True, species=["Na", "Cl"])
    system = System.from_ase(_crystal(), cutoff=pot.cutoff + 0.1)
    return pot, pot.init(None, system), system


@pytest.mark.slow
def test_d3_translation_permutation_and_fd_stress():
    """Slow: D3's stress without the tail is already checked against dftd3 (default run)."""
    pot, params, system = _d3_physics_case()
    testing.assert_translation_invariance(pot, params, system)
    testing.assert_permutation_invariance(pot, params, system)
    testing.assert_stress_matches_finite_differences(pot, params, system)


def test_d3_physics_checks():
    pot, params, system = _d3_physics_case()
    testing.assert_rotation_reflection_invariance(pot, params, system)
    testing.assert_padding_invariance(pot, params, system)
    testing.assert_forces_match_finite_differences(pot, params, system)
    atomic = pot.atomic(params, system)["energy"]
    assert abs(float(jnp.sum(atomic) - pot.energy(params, system))) < 1e-12


def test_d3_continuous_at_cutoff():
    pot = d3("pbe", cutoff=6.0, cn_cutoff=4.0)
    testing.assert_cutoff_smoothness(pot, pot.init(None, None), species=(6, 8), orders=(0,))


def _numpy_bj(atoms, c6m, c8m, a1, a2, cutoff, index):
    """Independent reference: ½ Σ over ASE's neighbour list of the BJ pair energy, shifted."""
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    zi, zj = index[atoms.numbers[i]], index[atoms.numbers[j]]
    c6, c8 = c6m[zi, zj], c8m[zi, zj]
    radius = a1 * np.sqrt(c8 / c6) + a2

    def e(r):
        return -c6 / (r**6 + radius**6) - c8 / (r**8 + radius**8)

    return 0.5 * np.sum(e(d) - e(cutoff))


def test_fitted_dispersion_matches_numpy_pair_sum():
    atoms = _crystal()
    c6 = {"Na": 40.0, "Cl": 90.0}
    c8 = {"Na": 500.0, "Cl": 1500.0}
    pot = dispersion(c6, c8=c8, a1=0.4, a2=2.5, cutoff=9.0)
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(None, system)
    index = np.zeros(119, int)
    index[[11, 17]] = [0, 1]
    geo6 = np.sqrt(np.outer([40.0, 90.0], [40.0, 90.0]))
    geo8 = np.sqrt(np.outer([500.0, 1500.0], [500.0, 1500.0]))
    ref = _numpy_bj(atoms, geo6, geo8, 0.4, 2.5, 9.0, index)
    assert abs(ref) > 0.1
    assert abs(float(pot.energy(params, system)) - ref) < 1e-10
    # the same coefficients given per pair
    pairs6 = {"Na-Na": geo6[0, 0], "Na-Cl": geo6[0, 1], "Cl-Cl": geo6[1, 1]}
    pairs8 = {"Na-Na": geo8[0, 0], "Na-Cl": geo8[0, 1], "Cl-Cl": geo8[1, 1]}
    pot2 = dispersion(pairs6, c8=pairs8, a1=0.4, a2=2.5, cutoff=9.0)
    assert abs(float(pot2.energy(pot2.init(None, system), system)) - ref) < 1e-10
    # rebuilt from its config
    pot3 = from_config(pot.config)
    assert abs(float(pot3.energy(pot3.init(None, system), system)) - ref) < 1e-10
    # trainable C6: the gradient equals a finite difference
    g = jax.grad(lambda p: pot.energy(p, system))(params)["c6"]
    h = 1e-4
    for k in range(2):
        up = dict(params, c6=params["c6"].at[k].add(h))
        dn = dict(params, c6=params["c6"].at[k].add(-h))
        fd = (pot.energy(up, system) - pot.energy(dn, system)) / (2 * h)
        assert abs(float(g[k]) - float(fd)) < 1e-7 * max(1.0, abs(float(fd)))
        assert abs(float(g[k])) > 1e-4


def test_fitted_dispersion_physics_checks():
    pot = dispersion({"Na": 40.0, "Cl": 90.0}, a2=2.5, cutoff=6.0, tail=True)
    system = System.from_ase(_crystal(), cutoff=pot.cutoff + 0.1)
    params = pot.init(None, system)
    testing.assert_stress_matches_finite_differences(pot, params, system)
    testing.assert_cutoff_smoothness(pot, params, species=(11, 17), orders=(0,))


def _lattice_energy(atoms, cutoff, tail):
    pot = dispersion({"Ar": 60.0}, a2=3.0, cutoff=cutoff, shift=False, tail=tail)
    system = System.from_ase(atoms, cutoff=cutoff)
    e, _, s = energy_forces_stress(pot)(pot.init(None, system), system)
    return float(e), np.asarray(s)


def test_tail_correction_converges_lattice_sum():
    """On fcc Ar the tail removes most of the truncation error; what is left is the shell
    structure of the lattice near r_c (its sign alternates with r_c), a few % at 9 Å."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    v, c6, a2, rc = atoms.get_volume(), 60.0, 3.0, 9.0
    i, j, d = neighbor_list("ijd", atoms, 45.0)  # independent lattice sum to 45 Å
    e_ref = -0.5 * np.sum(c6 / (d**6 + a2**6)) + tail_energy(c6 * 16, v, 45.0)
    e_cut, s_cut = _lattice_energy(atoms, rc, False)
    e_tail, s_tail = _lattice_energy(atoms, rc, True)
    err_cut, err_tail = abs(e_cut - e_ref), abs(e_tail - e_ref)
    assert err_cut > 1e-2  # the truncation error is real
    assert err_tail < 0.1 * err_cut
    # analytic value and its stress: E ∝ 1/V at fixed C6, so σ = −E_tail/V · I
    analytic = tail_energy(c6 * len(atoms) ** 2, v, rc)
    assert abs((e_tail - e_cut) - analytic) < 1e-12 * len(atoms)
    np.testing.assert_allclose(s_tail - s_cut, -analytic / v * np.eye(3), atol=1e-14)


def test_tail_matches_random_gas_shell():
    """For atoms at random positions the mean shell sum beyond r_c is the uniform integral."""
    rng = np.random.default_rng(3)
    n, length, rc, big = 40, 12.0, 5.0, 24.0
    diffs = []
    for _ in range(3):
        atoms = Atoms("Ar" * n, positions=rng.uniform(0, length, (n, 3)), cell=[length] * 3,
                      pbc=True)
        i, j, d = neighbor_list("ijd", atoms, big)
        shell = d >= rc
        diffs.append(-0.5 * np.sum(60.0 / d[shell] ** 6)
                     - tail_energy(60.0 * n * n, length**3, rc) + tail_energy(
                         60.0 * n * n, length**3, big))
    expected = tail_energy(60.0 * n * n, length**3, rc) - tail_energy(60.0 * n * n, length**3,
                                                                      big)
    assert abs(expected) > 1e-3
    assert abs(np.mean(diffs)) < 0.05 * abs(expected)


def test_errors_and_config():
    with pytest.raises(ValueError, match="functional 'nosuchfunctional'"):
        d3("nosuchfunctional")
    with pytest.raises(ValueError, match="damping"):
        d3("pbe", damping="bjm")
    with pytest.raises(ValueError, match="missing"):
        d3(None, params={"s6": 1.0})
    with pytest.raises(ValueError, match="cn_cutoff"):
        d3("pbe", cn_cutoff=-1.0)
    with pytest.raises(ValueError, match="pair Cl-Cl"):
        dispersion({"Na-Na": 1.0, "Na-Cl": 2.0})
    with pytest.raises(ValueError, match="species"):
        dispersion([1.0, 2.0])
    pot = d3("pbe", species=["C", "O", "H"], cutoff=8.0, cn_cutoff=6.0)
    assert pot.species == (1, 6, 8)
    again = from_config(pot.config)
    atoms = _molecule()[:9]
    system = System.from_ase(atoms, cutoff=8.0)
    assert abs(float(again.energy(again.init(None, system), system)
                     - pot.energy(pot.init(None, system), system))) < 1e-14
    # float32 structures give float32 energies close to float64
    system32 = System.from_ase(atoms, cutoff=8.0, dtype=np.float32)
    e32 = pot.energy(pot.init(None, system32), system32)
    e64 = pot.energy(pot.init(None, system), system)
    assert e32.dtype == np.float32 and abs(float(e32) / float(e64) - 1) < 1e-5


def test_missing_dftd3_gives_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "dftd3.library", None)
    monkeypatch.setitem(sys.modules, "dftd3.interface", None)
    with pytest.raises(ImportError, match="pip install dftd3"):
        d3_tables.d3_damping_params("pbe")
