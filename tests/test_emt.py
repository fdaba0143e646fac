"""jaxpot's EMT port against ASE's ``ase.calculators.emt.EMT`` (the independent reference).

Every comparison uses structures whose forces and stress are far from zero (rattled cells,
alloys, a vacancy, surfaces), so agreement to 1e-9 eV/atom and 1e-8 eV/Å is a real check. All
structures are padded to one shape so that one compiled program serves every case.
"""

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.units import fs

from jaxpot import registry, testing
from jaxpot.potential import check_species, energy_forces_stress, from_config
from jaxpot.potentials.emt import emt, emt_cutoffs
from jaxpot.system import System

E_TOL = 1e-9  # eV/atom
F_TOL = 1e-8  # eV/Å
S_TOL = 1e-9  # eV/Å³
N_ATOMS, N_EDGES = 64, 64 * 110  # one padded shape for every structure below


@pytest.fixture(scope="module")
def pot():
    return emt()


@pytest.fixture(scope="module")
def efs(pot):
    return jax.jit(energy_forces_stress(pot))


@pytest.fixture(scope="module")
def atomic(pot):
    return jax.jit(pot.atomic)


def _system(atoms, cutoff):
    return System.from_ase(atoms, cutoff=cutoff, n_atoms=N_ATOMS, n_edges=N_EDGES)


def _compare(pot, efs, atomic, atoms, *, stress=True):
    """Energy, per-atom energies, forces (and stress) of jaxpot's EMT vs ASE's on ``atoms``."""
    ref = atoms.copy()
    ref.calc = EMT()
    system = _system(atoms, pot.cutoff)
    params = pot.init(None, system)
    e, f, s = efs(params, system)
    n = len(atoms)
    e_ref, f_ref = ref.get_potential_energy(), ref.get_forces()
    assert np.abs(f_ref).max() > 1e-2, "reference forces too small for a meaningful check"
    assert abs(float(e) - e_ref) / n < E_TOL
    np.testing.assert_allclose(np.asarray(f)[:n], f_ref, rtol=0, atol=F_TOL)
    assert np.all(np.asarray(f)[n:] == 0.0)
    ea = np.asarray(atomic(params, system)["energy"])
    np.testing.assert_allclose(ea[:n], ref.get_potential_energies(), rtol=0, atol=E_TOL)
    assert np.all(ea[n:] == 0.0)
    if stress:
        s_ref = ref.get_stress(voigt=False)
        assert np.abs(s_ref).max() > 1e-4
        np.testing.assert_allclose(np.asarray(s), s_ref, rtol=0, atol=S_TOL)
    return float(e)


@pytest.mark.parametrize("name,lattice,a,reps,cubic", [
    ("Cu", "fcc", 3.55, (2, 2, 2), True),
    ("Ni", "bcc", 2.80, (3, 3, 3), True),
    ("Pt", "hcp", 2.80, (3, 3, 2), False),
    ("Al", "fcc", 4.10, (3, 3, 3), False),
])
def test_rattled_crystals_equal_ase(pot, efs, atomic, name, lattice, a, reps, cubic):
    atoms = bulk(name, lattice, a=a, cubic=cubic).repeat(reps)
    atoms.rattle(0.08, rng=np.random.default_rng(len(atoms)))
    atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
    _compare(pot, efs, atomic, atoms)


def test_alloy_and_vacancy_equal_ase(pot, efs, atomic):
    rng = np.random.default_rng(3)
    atoms = bulk("Cu", "fcc", a=3.9, cubic=True).repeat((2, 2, 3))
    atoms.numbers = rng.choice([29, 47, 79], size=len(atoms))
    atoms.rattle(0.1, rng=rng)
    _compare(pot, efs, atomic, atoms)
    del atoms[[5]]  # a vacancy in the alloy
    _compare(pot, efs, atomic, atoms)


def test_open_cluster_and_slab_equal_ase(pot, efs, atomic):
    rng = np.random.default_rng(4)
    cluster = bulk("Pd", "fcc", a=3.9, cubic=True).repeat(2)
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    cluster.numbers[::4] = 78  # a PdPt cluster with Pt on one sublattice
    cluster.rattle(0.1, rng=rng)
    _compare(pot, efs, atomic, cluster, stress=False)
    slab = fcc111("Ag", (2, 2, 4), vacuum=6.0)
    slab.numbers[-4:] = 79  # an Au overlayer
    slab.rattle(0.05, rng=rng)
    _compare(pot, efs, atomic, slab)


def test_light_elements_and_an_isolated_atom_equal_ase(pot, efs, atomic):
    mol = Atoms("CONH", positions=[[0, 0, 0], [1.2, 0, 0], [-0.7, 1.1, 0.1], [9.0, 9.0, 9.0]])
    _compare(pot, efs, atomic, mol, stress=False)  # H is 9 Å away: energy −E0_H, no force


def test_every_frame_of_an_ase_md_trajectory(pot, efs, atomic):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.numbers[::5] = 47
    MaxwellBoltzmannDistribution(atoms, temperature_K=1500, rng=np.random.default_rng(5))
    atoms.calc = EMT()
    frames = []
    dyn = VelocityVerlet(atoms, 5 * fs)
    dyn.attach(lambda: frames.append(atoms.copy()), interval=4)
    dyn.run(20)
    assert len(frames) == 6
    moved = np.abs(frames[-1].positions - frames[0].positions).max()
    assert moved > 0.1  # the frames differ
    for frame in frames:
        _compare(pot, efs, atomic, frame)


def test_asap_cutoff_follows_ase():
    atoms = bulk("Ni", "fcc", a=3.5, cubic=True).repeat(2)
    atoms.rattle(0.05, rng=np.random.default_rng(6))
    pot = emt(["Ni"], asap_cutoff=True)
    rc, r_list, _ = emt_cutoffs(["Ni"], asap_cutoff=True)
    assert r_list < emt().cutoff - 0.5  # the smaller Ni atoms give a shorter list
    ref = atoms.copy()
    ref.calc = EMT(asap_cutoff=True)
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    e, f, _ = jax.jit(energy_forces_stress(pot))(pot.init(None, system), system)
    assert abs(float(e) - ref.get_potential_energy()) / len(atoms) < E_TOL
    np.testing.assert_allclose(np.asarray(f), ref.get_forces(), atol=F_TOL)


def test_registry_config_round_trip_and_species():
    assert registry.FAMILIES["emt"] == "jaxpot.potentials.emt"
    pot = emt(["Cu", 79])
    again = from_config(pot.config)
    assert again.cutoff == pot.cutoff and again.species == (29, 79)
    check_species(pot, [29, 79, 29])
    with pytest.raises(ValueError, match="Fe"):
        check_species(pot, [29, 26])
    with pytest.raises(ValueError, match="no EMT parameters for element 'Fe'"):
        emt(["Fe"])


def test_physics_suite(pot):
    """Autodiff forces vs finite differences, padding, O(3); stress is checked against ASE."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers[:1] = 79
    atoms.rattle(0.1, rng=np.random.default_rng(7))
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(None, system)
    testing.assert_forces_match_finite_differences(pot, params, system)
    testing.assert_padding_invariance(pot, params, system)
    testing.assert_rotation_reflection_invariance(pot, params, system)
