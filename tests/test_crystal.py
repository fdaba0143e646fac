"""Crystal properties of jaxpot's EMT port against ASE's own EMT calculator: elastic constants
against finite-difference stress–strain (clamped, and relaxed-ion on hcp where the internal
relaxation matters), moduli against pymatgen, the equation of state against ASE's
``EquationOfState``, vacancy and surface energies against ASE's BFGS relaxations."""

import numpy as np
import pytest
from ase.build import bulk, fcc100
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.optimize import BFGS

from jaxpot import units
from jaxpot.analysis import crystal
from jaxpot.potentials.emt import emt
from jaxpot.system import System


@pytest.fixture(scope="module")
def cu():
    pot = emt(["Cu"])
    return pot, pot.init(None, None)


def _fd_stress_strain(atoms, relax: bool, delta: float):
    c = np.zeros((6, 6))
    for j in range(6):
        stresses = []
        for sign in (1, -1):
            e6 = np.zeros(6)
            e6[j] = sign * delta
            a = atoms.copy()
            a.calc = EMT()
            a.set_cell(atoms.cell[:] @ (np.eye(3) + np.asarray(crystal.voigt_strain(e6))),
                       scale_atoms=True)
            if relax:
                BFGS(a, logfile=None).run(fmax=1e-7, steps=500)
            stresses.append(a.get_stress())
        c[:, j] = (stresses[0] - stresses[1]) / (2 * delta) / units.GPa
    return c


def test_hcp_elastic_tensor_equals_finite_difference_stress_strain(cu):
    pot, params = cu
    atoms = bulk("Cu", "hcp", a=2.55, c=4.16)
    out = crystal.elastic_tensor(pot, params, System.from_ase(atoms, cutoff=pot.cutoff))
    ref_clamped = _fd_stress_strain(atoms, relax=False, delta=1e-4)
    ref_relaxed = _fd_stress_strain(atoms, relax=True, delta=1e-3)
    scale = np.abs(ref_relaxed).max()
    np.testing.assert_allclose(out["C_clamped"], ref_clamped, atol=1e-3 * scale)
    np.testing.assert_allclose(out["C"], ref_relaxed, atol=1e-3 * scale)
    # the internal relaxation matters here: C11 and C66 drop by more than 5 %
    assert out["C_clamped"][0, 0] - out["C"][0, 0] > 0.05 * out["C"][0, 0]
    assert out["C_clamped"][5, 5] - out["C"][5, 5] > 0.05 * out["C"][5, 5]
    assert out["min_hessian_eigenvalue"] > 0
    # moduli against pymatgen's Voigt/Reuss/Hill averages
    from pymatgen.analysis.elasticity import ElasticTensor

    sym = 0.5 * (out["C"] + out["C"].T)  # (C is not symmetric under residual stress)
    m = crystal.moduli(sym)
    ref = ElasticTensor.from_voigt(sym)
    assert m["K_V"] == pytest.approx(ref.k_voigt, rel=1e-10)
    assert m["K_R"] == pytest.approx(ref.k_reuss, rel=1e-10)
    assert m["G_V"] == pytest.approx(ref.g_voigt, rel=1e-10)
    assert m["G_R"] == pytest.approx(ref.g_reuss, rel=1e-10)
    assert m["G_VRH"] == pytest.approx(ref.g_vrh, rel=1e-10)


def test_equation_of_state_equals_ase_and_the_elastic_bulk_modulus(cu):
    pot, params = cu
    atoms = bulk("Cu", "fcc", a=3.59)
    ours = crystal.equation_of_state(pot, params, atoms, strain=0.03, points=7, relax=False)
    energies = []
    for v in ours["volumes"]:
        a = atoms.copy()
        a.set_cell(atoms.cell[:] * (v / atoms.get_volume()) ** (1 / 3), scale_atoms=True)
        a.calc = EMT()
        energies.append(a.get_potential_energy())
    np.testing.assert_allclose(ours["energies"], energies, atol=1e-9)
    v0, e0, b = EquationOfState(ours["volumes"], energies, eos="birchmurnaghan").fit()
    assert ours["V0"] == pytest.approx(v0, rel=1e-5)
    assert ours["E0"] == pytest.approx(e0, abs=1e-6)
    assert ours["B"] == pytest.approx(b / units.GPa, rel=5e-3)
    # B from the exact elastic tensor at V0: (C11 + 2 C12)/3 for a cubic crystal
    eq = atoms.copy()
    eq.set_cell(atoms.cell[:] * (ours["V0"] / atoms.get_volume()) ** (1 / 3), scale_atoms=True)
    c = crystal.elastic_tensor(pot, params, System.from_ase(eq, cutoff=pot.cutoff))
    assert np.abs(c["stress"]).max() < 0.05  # GPa: V0 is (nearly) stress free
    assert (c["C"][0, 0] + 2 * c["C"][0, 1]) / 3 == pytest.approx(ours["B"], rel=5e-3)
    assert ours["B_prime"] > 3  # physical: typical metals 4-6


def test_birch_murnaghan_recovers_its_own_parameters():
    v = np.linspace(10, 13, 8)
    e = crystal.bm_energy(v, -3.0, 11.7, 140 * units.GPa, 4.8)
    fit = crystal.birch_murnaghan(v, e)
    assert fit["V0"] == pytest.approx(11.7, rel=1e-10)
    assert fit["B"] == pytest.approx(140, rel=1e-8)
    assert fit["B_prime"] == pytest.approx(4.8, rel=1e-8)
    with pytest.raises(ValueError, match="no minimum"):
        crystal.birch_murnaghan(v[:5], -v[:5])


@pytest.mark.slow  # two relaxation programs to compile (~20 s of one core)
def test_vacancy_energy_equals_ase_relaxation(cu):
    pot, params = cu
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    vac = crystal.vacancy_formation_energy(pot, params, atoms, index=3)
    ref = atoms.copy()
    ref.calc = EMT()
    e_bulk = ref.get_potential_energy()
    del ref[3]
    ref.calc = EMT()
    e_unrel = ref.get_potential_energy()
    BFGS(ref, logfile=None).run(fmax=1e-5, steps=1000)
    n = len(atoms)
    assert vac["E_unrelaxed"] == pytest.approx(e_unrel - (n - 1) / n * e_bulk, abs=1e-8)
    assert vac["E_f"] == pytest.approx(ref.get_potential_energy() - (n - 1) / n * e_bulk,
                                       abs=2e-5)
    assert 0.5 < vac["E_f"] < vac["E_unrelaxed"]  # relaxation lowers it


def test_surface_energy_equals_ase_relaxation(cu):
    pot, params = cu
    ref_bulk = bulk("Cu", "fcc", a=3.6)
    ref_bulk.calc = EMT()
    bulk_e = ref_bulk.get_potential_energy()
    slab = fcc100("Cu", (1, 1, 5), a=3.6, vacuum=7.0)
    ours = crystal.surface_energy(pot, params, slab, bulk_e)
    s = slab.copy()
    s.calc = EMT()
    e_unrelaxed = s.get_potential_energy()
    BFGS(s, logfile=None).run(fmax=1e-5, steps=1000)
    area = np.linalg.norm(np.cross(slab.cell[0], slab.cell[1]))
    gamma = (s.get_potential_energy() - len(s) * bulk_e) / (2 * area)
    assert ours["gamma"] == pytest.approx(gamma, abs=1e-6)
    assert ours["gamma"] > 0.01
    assert e_unrelaxed - s.get_potential_energy() > 1e-3  # the relaxation did something
    assert ours["gamma_J_m2"] == pytest.approx(ours["gamma"] * 16.021766, rel=1e-6)
