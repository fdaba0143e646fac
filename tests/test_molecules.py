"""Molecules by connectivity (against ASE's connectivity), whole molecules across boundaries,
inertia against ASE, and the zero total torque and force of an isolated molecule for every
conservative model (LJ, Morse, NequIP and MACE with random parameters)."""

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from jaxpot import System, models, potentials
from jaxpot.analysis import molecules as mol


def _water_box(seed=0):
    rng = np.random.default_rng(seed)
    w = molecule("H2O")
    atoms = Atoms(cell=np.array([[9.0, 0, 0], [1.5, 9.0, 0], [0.5, -1.0, 9.0]]), pbc=True)
    centres = (np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
               + 0.5) / 2
    for c in centres:
        m = w.copy()
        m.positions = Rotation.random(random_state=rng).apply(m.positions)
        m.positions += c @ atoms.cell + rng.normal(scale=0.2, size=3)
        atoms += m
    atoms.positions += 2.0  # push molecules across the boundary, then wrap them apart
    atoms.wrap()
    return atoms


def test_molecules_match_ase_connectivity_and_are_made_whole():
    from ase.neighborlist import NeighborList, natural_cutoffs
    from scipy.sparse.csgraph import connected_components

    atoms = _water_box()
    found = mol.find_molecules(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc)
    nl = NeighborList(natural_cutoffs(atoms, mult=1.2), self_interaction=False, bothways=True,
                      skin=0.0)
    nl.update(atoms)
    n_ref, lab_ref = connected_components(nl.get_connectivity_matrix(), directed=False)
    assert found.n_molecules == n_ref == 8
    assert sorted(found.sizes) == [3] * 8
    # same partition (labels may be permuted)
    pairs = {(a, b) for a, b in zip(found.labels, lab_ref, strict=True)}
    assert len(pairs) == 8
    whole = np.asarray(mol.whole_positions(atoms.positions, atoms.cell[:], found))
    broken = 0
    for m in range(8):
        sel = found.labels == m
        d = np.linalg.norm(whole[sel][:, None] - whole[sel][None], axis=-1)
        assert d.max() < 1.7  # O–H 0.97 Å, H–H 1.5 Å
        broken += np.linalg.norm(atoms.positions[sel][:, None]
                                 - atoms.positions[sel][None], axis=-1).max() > 2.0
    assert broken > 0  # the test did include molecules split by the cell


def test_inertia_equals_ase_and_chains_are_refused():
    atoms = molecule("CH3CH2OH")
    found = mol.find_molecules(atoms.numbers, atoms.positions)
    inertia = np.asarray(mol.inertia_tensors(atoms.positions, atoms.get_masses(),
                                             found.labels, 1))[0]
    np.testing.assert_allclose(np.linalg.eigvalsh(inertia),
                               np.sort(atoms.get_moments_of_inertia()), rtol=1e-10)
    chain = Atoms("C", positions=[[0, 0, 0]], cell=[1.5, 10, 10], pbc=True)
    with pytest.raises(ValueError, match="own periodic image"):
        mol.find_molecules(chain.numbers, chain.positions, chain.cell[:], chain.pbc)


def _tiny(factory):
    return factory(species=["H", "C", "O"], cutoff=4.0, features="4x0e+4x1o", l_max=1,
                   num_bessel=4, radial_hidden=[8], avg_num_neighbors=8.0, readout_hidden=4,
                   num_layers=1)


MODELS = {
    "lennard_jones": lambda: potentials.lennard_jones(sigma=1.2, epsilon=0.05, cutoff=4.0),
    "morse": lambda: potentials.morse(D=0.3, alpha=1.5, r0=1.3, cutoff=4.0),
    "nequip": lambda: _tiny(models.nequip),
    "mace": lambda: _tiny(lambda **kw: models.mace(correlation=2, **kw)),
}
SLOW = {"mace"}  # a minute of compilation on 2 cores; NequIP covers the equivariant models


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(MODELS)])
def test_isolated_molecule_has_zero_total_torque(name):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    pot = MODELS[name]()
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(jax.random.key(0), system)
    out = mol.molecular_properties(pot, params, system)
    f = np.asarray(out["atom_forces"])
    com = np.asarray(out["centers"])[0]
    per_atom = np.linalg.norm(np.cross(atoms.positions - com, f), axis=1)
    assert per_atom.max() > 1e-3  # the atoms do feel torques; only their sum vanishes
    scale = per_atom.max()
    assert np.abs(np.asarray(out["torques"])).max() < 1e-9 * max(scale, 1.0)
    assert np.abs(np.asarray(out["forces"])).max() < 1e-9 * max(np.abs(f).max(), 1.0)
    # the torque about any other point differs by R × F_total = 0 as well
    tau_origin = np.cross(atoms.positions, f).sum(0)
    assert np.abs(tau_origin).max() < 1e-9 * max(scale, 1.0)
