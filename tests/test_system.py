"""System: ASE round trips, input validation, padding, buckets, stacking + vmap."""

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk, fcc111
from ase.calculators.lj import LennardJones

from jaxpot import energy_and_forces, neighbors
from jaxpot.potentials import lennard_jones
from jaxpot.system import (
    System,
    bucket,
    default_buckets,
    pad_arrays,
    stack,
    stack_arrays,
    unstack,
    validate_arrays,
)

SIGMA, EPSILON, CUTOFF = 3.4, 0.0104, 7.0


def lj():
    return lennard_jones(sigma=SIGMA, epsilon=EPSILON, cutoff=CUTOFF)


@jax.jit
def _energy_forces_grad(params, system):
    """LJ energy, masked forces and the raw gradient ∂E/∂x (one compile per shape)."""
    pot = lj()
    e, f = energy_and_forces(pot)(params, system)
    g = jax.grad(lambda x: pot.energy(params, system.replace(positions=x)))(system.positions)
    return e, f, g


def ase_lj_energy_forces(atoms):
    calc = LennardJones(sigma=SIGMA, epsilon=EPSILON, rc=CUTOFF, smooth=False)
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def argon_structures():
    """Different sizes and periodicities, all physically sensible for argon LJ."""
    rng = np.random.default_rng(0)
    crystal = bulk("Ar", "fcc", a=5.26)  # one-atom primitive cell, smaller than the cutoff
    cubic = bulk("Ar", "fcc", a=5.3, cubic=True).repeat((2, 1, 1))
    cubic.rattle(0.1, seed=2)
    cluster = ase.Atoms("Ar13", positions=_spread(rng, 13, 3.4, 9.0))
    dimer = ase.Atoms("Ar2", positions=[[0.0, 0.0, 0.0], [3.7, 0.2, -0.1]])
    slab = fcc111("Ar", size=(2, 2, 2), a=5.26, vacuum=5.0)
    slab.rattle(0.05, seed=3)
    return [crystal, cubic, cluster, dimer, slab]


def _spread(rng, n, min_distance, box):
    """``n`` random points in a ``box``³ cube, at least ``min_distance`` apart."""
    points = []
    for _ in range(100_000):
        if len(points) == n:
            break
        p = rng.uniform(0.0, box, 3)
        if all(np.linalg.norm(p - q) >= min_distance for q in points):
            points.append(p)
    assert len(points) == n, "box too small"
    return np.array(points)


# ---------------------------------------------------------------------------------------------
# Construction and round trips
# ---------------------------------------------------------------------------------------------


def test_from_ase_to_ase_round_trip():
    rng = np.random.default_rng(1)
    cell = np.diag([5.0, 6.0, 7.0]) + np.triu(rng.uniform(-1, 1, (3, 3)), 1)
    atoms = ase.Atoms("H2OCu", positions=rng.uniform(-2, 8, (4, 3)), cell=cell,
                      pbc=(True, False, True))
    atoms.set_masses([1.5, 2.5, 16.0, 63.5])
    for n_atoms in (None, 9):
        system = System.from_ase(atoms, n_atoms=n_atoms)
        assert system.n_atoms == (n_atoms or 4)
        assert int(system.n_real_atoms) == 4
        back = system.to_ase()
        np.testing.assert_array_equal(back.get_positions(), atoms.get_positions())
        np.testing.assert_array_equal(back.numbers, atoms.numbers)
        np.testing.assert_array_equal(back.cell.array, atoms.cell.array)
        np.testing.assert_array_equal(back.pbc, atoms.pbc)
        np.testing.assert_array_equal(back.get_masses(), atoms.get_masses())
    assert system.positions.dtype == jnp.float64  # tests run in float64
    np.testing.assert_array_equal(system.positions[4:], 0.0)
    np.testing.assert_array_equal(system.species[4:], 0)
    assert not np.asarray(system.atom_mask[4:]).any()
    assert system.volume == pytest.approx(abs(np.linalg.det(cell)))


def test_default_masses_and_dtype():
    system = System.from_arrays([[0.0, 0, 0], [1.0, 0, 0]], [1, 8], dtype=jnp.float32)
    np.testing.assert_allclose(system.masses, [1.008, 15.999], rtol=1e-6)
    for leaf in (system.positions, system.masses, system.cell, system.shifts):
        assert leaf.dtype == jnp.float32
    assert system.species.dtype == jnp.int32 and system.senders.dtype == jnp.int32
    assert system.n_edges == 0


def test_system_is_a_pytree_that_jits():
    system = System.from_ase(argon_structures()[1], cutoff=CUTOFF)
    leaves = jax.tree.leaves(system)
    assert len(leaves) == 9
    vec = jax.jit(lambda s: s.edge_vectors())(system)
    np.testing.assert_allclose(vec, system.edge_vectors())
    assert system.n_edges > 0 and np.abs(np.asarray(vec)).max() > 0


def test_with_edges_keeps_atom_padding():
    atoms = argon_structures()[2]
    padded = System.from_ase(atoms, n_atoms=20)
    assert padded.n_edges == 0
    with_edges = padded.with_edges(CUTOFF, n_edges=400)
    reference = System.from_ase(atoms, cutoff=CUTOFF)
    assert with_edges.n_atoms == 20 and with_edges.n_edges == 400
    mask = np.asarray(with_edges.edge_mask)
    assert mask.sum() == reference.n_edges > 0
    np.testing.assert_array_equal(with_edges.senders[mask], reference.senders)
    np.testing.assert_array_equal(with_edges.receivers[mask], reference.receivers)
    # Edge padding points at the sentinel on both ends.
    assert np.all(np.asarray(with_edges.senders)[~mask] == 20)
    assert np.all(np.asarray(with_edges.receivers)[~mask] == 20)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _water_like():
    return ase.Atoms("Ar3", positions=[[0.0, 0, 0], [2.0, 0, 0], [0.0, 2.5, 0]])


def test_nan_position_names_the_atom():
    atoms = _water_like()
    pos = atoms.get_positions()
    pos[2, 1] = np.nan
    atoms.set_positions(pos)
    with pytest.raises(ValueError, match=r"Ar3: non-finite position for atom 2"):
        System.from_ase(atoms)
    pos[2, 1] = np.inf
    with pytest.raises(ValueError, match="atom 2"):
        System.from_arrays(pos, [18, 18, 18])


def test_unknown_element_is_rejected():
    atoms = _water_like()
    atoms.numbers = [18, 0, 18]  # "X", a dummy atom in ASE
    with pytest.raises(ValueError, match=r"unknown element \(atomic number 0\) at atom 1"):
        System.from_ase(atoms)
    with pytest.raises(ValueError, match="atomic number 119"):
        System.from_arrays(atoms.get_positions(), [18, 18, 119])
    with pytest.raises(ValueError, match="atomic number -1"):
        System.from_arrays(atoms.get_positions(), [-1, 18, 18])


@pytest.mark.parametrize(
    "cell,pbc",
    [
        (np.zeros((3, 3)), True),  # ase.Atoms(pbc=True) without a cell
        ([[4.0, 0, 0], [8.0, 0, 0], [0, 0, 4.0]], True),  # parallel lattice vectors
        ([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 0]], (True, True, True)),
        ([[4.0, 0, 0], [0, 0, 0], [0, 0, 4.0]], (True, True, False)),
    ],
)
def test_singular_cell_with_pbc_is_rejected(cell, pbc):
    atoms = _water_like()
    atoms.cell = cell
    atoms.pbc = pbc
    with pytest.raises(ValueError, match="singular"):
        System.from_ase(atoms)


def test_singular_cell_without_pbc_along_it_is_fine():
    atoms = _water_like()
    atoms.cell = [[4.0, 0, 0], [0, 4.0, 0], [0, 0, 0]]
    atoms.pbc = (True, True, False)
    assert int(System.from_ase(atoms).n_real_atoms) == 3


def test_non_finite_cell_is_rejected():
    with pytest.raises(ValueError, match="cell has non-finite"):
        System.from_arrays([[0.0, 0, 0]], [18], cell=np.diag([4.0, np.nan, 4.0]), pbc=True)


def test_empty_structure_is_rejected():
    with pytest.raises(ValueError, match="empty structure"):
        System.from_ase(ase.Atoms())
    with pytest.raises(ValueError, match="empty structure"):
        System.from_arrays(np.zeros((0, 3)), [])


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"shape \[n_atoms, 3\]"):
        System.from_arrays(np.zeros((3, 2)), [1, 1, 1])
    with pytest.raises(ValueError, match="atomic numbers for 3 positions"):
        validate_arrays(np.zeros((3, 3)), [1, 1], np.zeros((3, 3)), False)


def test_overlapping_atoms_are_rejected():
    pos = [[0.0, 0, 0], [2.0, 0, 0], [2.05, 0.0, 0.0]]
    with pytest.raises(ValueError, match=r"frame 7: atoms 1 and 2 overlap \(distance 0.05"):
        System.from_arrays(pos, [18, 18, 18], cutoff=3.0, where="frame 7")
    # Across a periodic boundary too.
    pos = [[0.02, 1.0, 1.0], [3.97, 1.0, 1.0]]
    with pytest.raises(ValueError, match="overlap"):
        System.from_arrays(pos, [18, 18], cell=np.eye(3) * 4.0, pbc=True, cutoff=3.0)
    # 0.15 Å apart is odd but allowed.
    System.from_arrays([[0.0, 0, 0], [0.15, 0, 0]], [1, 1], cutoff=3.0)


def test_padding_smaller_than_structure_is_rejected():
    atoms = _water_like()
    with pytest.raises(ValueError, match="3 atoms do not fit in 2 padded slots"):
        System.from_ase(atoms, n_atoms=2)
    with pytest.raises(ValueError, match="edges do not fit in 1 padded slots"):
        System.from_ase(atoms, cutoff=3.0, n_edges=1)
    system = System.from_ase(atoms, cutoff=3.0)
    with pytest.raises(ValueError, match="cannot pad"):
        system.pad(2, 100)
    with pytest.raises(ValueError, match="cannot pad"):
        system.pad(10, 1)


def test_pad_requires_real_atoms_first():
    system = System.from_ase(_water_like(), n_atoms=5)
    shuffled = system.replace(atom_mask=jnp.asarray([False, True, True, True, False]))
    with pytest.raises(ValueError, match="real atoms first"):
        shuffled.pad(6, 10)


# ---------------------------------------------------------------------------------------------
# Buckets, stacking and vmap
# ---------------------------------------------------------------------------------------------


def test_default_buckets():
    sizes = default_buckets(1000)
    assert sizes[0] == 8
    assert sizes[-1] >= 1000 > sizes[-2]
    for a, b in zip(sizes, sizes[1:], strict=False):
        assert a < b <= max(a + 1, int(np.ceil(a * 1.25)))
    # Few shapes to compile: logarithmic in the range.
    assert len(sizes) <= np.log(1000 / 8) / np.log(1.25) + 2
    assert default_buckets(5) == [8]
    assert default_buckets(8) == [8]
    assert default_buckets(100, minimum=10, growth=2.0) == [10, 20, 40, 80, 160]


def test_bucket():
    sizes = default_buckets(300)
    for n in range(1, 301):
        b = bucket(n, sizes)
        assert b in sizes and b >= n
        assert all(s < n for s in sizes if s < b)
    assert bucket(7, [50, 10, 20]) == 10  # unsorted sizes
    assert bucket(20, [50, 10, 20]) == 20
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket(51, [50, 10, 20])


def _systems():
    return [System.from_ase(a, cutoff=CUTOFF) for a in argon_structures()]


def test_stack_vmap_energy_equals_per_structure_and_ase():
    pot = lj()
    params = pot.init(jax.random.key(0), None)
    systems = _systems()
    n_atoms = bucket(max(s.n_atoms for s in systems), default_buckets(64))
    n_edges = bucket(max(s.n_edges for s in systems), default_buckets(4096))
    batch = stack(systems, n_atoms=n_atoms, n_edges=n_edges)
    assert batch.positions.shape == (len(systems), n_atoms, 3)
    assert batch.senders.shape == (len(systems), n_edges)

    energies, forces = jax.jit(jax.vmap(energy_and_forces(pot), in_axes=(None, 0)))(params, batch)
    assert energies.shape == (len(systems),)
    for k, (atoms, system) in enumerate(zip(argon_structures(), systems, strict=True)):
        e_one, f_one, _ = _energy_forces_grad(params, system)
        e_ase, f_ase = ase_lj_energy_forces(atoms)
        n = len(atoms)
        assert abs(e_ase) > 1e-3  # non-trivial (forces vanish by symmetry in a 1-atom cell)
        assert n == 1 or np.abs(f_ase).max() > 1e-3
        np.testing.assert_allclose(energies[k], e_one, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(energies[k], e_ase, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(forces[k, :n], f_one, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(forces[k, :n], f_ase, rtol=1e-8, atol=1e-10)
        assert np.all(np.asarray(forces[k, n:]) == 0.0)


def test_stack_defaults_and_unstack():
    systems = _systems()
    batch = stack(systems)
    assert batch.n_atoms == max(int(s.n_real_atoms) for s in systems)
    assert batch.n_edges == max(s.n_edges for s in systems)
    for original, atoms, back in zip(systems, argon_structures(), unstack(batch), strict=True):
        assert back.n_atoms == batch.n_atoms
        out = back.to_ase()
        np.testing.assert_array_equal(out.get_positions(), atoms.get_positions())
        np.testing.assert_array_equal(out.pbc, atoms.pbc)
        assert int(np.sum(back.edge_mask)) == original.n_edges
    with pytest.raises(ValueError, match="at least one"):
        stack([])
    with pytest.raises(ValueError, match="unstack a batch first"):
        batch.to_ase()


# ---------------------------------------------------------------------------------------------
# Padding never changes a real atom's result
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("structure", [1, 2, 4], ids=["crystal", "cluster", "slab"])
def test_padding_does_not_change_energy_or_forces(structure):
    pot = lj()
    params = pot.init(jax.random.key(0), None)
    atoms = argon_structures()[structure]
    system = System.from_ase(atoms, cutoff=CUTOFF)
    n = len(atoms)
    padded = system.pad(n + 5, system.n_edges + 37)
    # Garbage in the padding atoms: on top of real atoms, with a real element.
    pos = np.asarray(padded.positions).copy()
    pos[n:] = pos[np.arange(5) % n]
    padded = padded.replace(positions=jnp.asarray(pos), species=padded.species.at[n:].set(18))

    e, f, _ = _energy_forces_grad(params, system)
    e_pad, f_pad, grad = _energy_forces_grad(params, padded)
    assert np.abs(np.asarray(f)).max() > 1e-4
    np.testing.assert_allclose(e_pad, e, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(f_pad[:n], f, rtol=1e-10, atol=1e-13)
    assert np.all(np.asarray(f_pad[n:]) == 0.0)
    # The raw gradient (not only the masked forces) is exactly 0 on padding, and finite.
    assert np.all(np.isfinite(np.asarray(grad)))
    assert np.all(np.asarray(grad[n:]) == 0.0)
    if structure == 2:
        # The jitted neighbour list on the padded system gives the same energy and forces.
        nbrs = neighbors.allocate(padded, CUTOFF, method="brute")
        assert not bool(nbrs.overflow)
        e_nb, f_nb, _ = _energy_forces_grad(params, nbrs.attach(padded))
        np.testing.assert_allclose(e_nb, e, rtol=1e-12)
        np.testing.assert_allclose(f_nb[:n], f, rtol=1e-10, atol=1e-13)
        assert np.all(np.asarray(f_nb[n:]) == 0.0)


def test_padding_edges_have_zero_vectors():
    system = System.from_ase(argon_structures()[1], cutoff=CUTOFF).pad(12, 1000)
    vec = np.asarray(system.edge_vectors())
    mask = np.asarray(system.edge_mask)
    assert mask.sum() > 0 and (~mask).sum() > 0
    assert np.all(vec[~mask] == 0.0) and np.all(np.linalg.norm(vec[mask], axis=1) > 1.0)


# ---------------------------------------------------------------------------------------------
# The one padding kernel: every path gives the same arrays as a plain reference
# ---------------------------------------------------------------------------------------------


def reference_padding(atoms, cutoff, n_pad, e_pad):
    """What padding means (DESIGN.md), written out slot by slot with ASE's neighbour list."""
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    i, j, s = ase_neighbor_list("ijS", atoms, cutoff)
    order = np.lexsort((j, i))
    i, j, s = i[order], j[order], s[order]
    n, e = len(atoms), len(i)
    out = {"positions": np.zeros((n_pad, 3)), "species": np.zeros(n_pad, int),
           "masses": np.ones(n_pad), "atom_mask": np.zeros(n_pad, bool),
           "cell": np.asarray(atoms.cell), "pbc": atoms.pbc,
           "senders": np.full(e_pad, n_pad), "receivers": np.full(e_pad, n_pad),
           "shifts": np.zeros((e_pad, 3))}
    for k in range(n):
        out["positions"][k] = atoms.positions[k]
        out["species"][k] = atoms.numbers[k]
        out["masses"][k] = atoms.get_masses()[k]
        out["atom_mask"][k] = True
    for k in range(e):
        out["receivers"][k], out["senders"][k], out["shifts"][k] = i[k], j[k], s[k]
    return out


def _canonical_edges(arrays):
    """Edges in (receiver, sender, shift) order: the order among images is not specified."""
    r, s, sh = (np.asarray(arrays[k]) for k in ("receivers", "senders", "shifts"))
    order = np.lexsort((sh[:, 2], sh[:, 1], sh[:, 0], s, r))
    return {**arrays, "receivers": r[order], "senders": s[order], "shifts": sh[order]}


def assert_system_equals(system, expected, dtype=None):
    dtype = jax.dtypes.canonicalize_dtype(np.float64) if dtype is None else dtype
    actual = _canonical_edges({name: getattr(system, name) for name in expected})
    expected = _canonical_edges(expected)
    for name, want in expected.items():
        got = np.asarray(actual[name])
        assert got.shape == np.shape(want), name
        if got.dtype.kind == "f":
            assert got.dtype == dtype, name
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("structure", [0, 1, 2, 4], ids=["primitive", "crystal", "cluster",
                                                         "slab"])
def test_every_padding_path_matches_the_reference(structure):
    atoms = argon_structures()[structure]
    tight = System.from_ase(atoms, cutoff=CUTOFF)
    n, e = len(atoms), tight.n_edges
    assert e > 0
    assert_system_equals(tight, reference_padding(atoms, CUTOFF, n, e))
    want = reference_padding(atoms, CUTOFF, n + 3, e + 17)
    assert_system_equals(System.from_ase(atoms, cutoff=CUTOFF, n_atoms=n + 3, n_edges=e + 17),
                         want)
    assert_system_equals(tight.pad(n + 3, e + 17), want)
    assert_system_equals(System.from_ase(atoms, n_atoms=n + 3).with_edges(CUTOFF, e + 17), want)
    batch = stack([tight, tight.pad(n + 1, e)], n_atoms=n + 3, n_edges=e + 17)
    for row in unstack(batch):
        assert_system_equals(row, want)
    raw = pad_arrays(atoms.positions, atoms.numbers, cell=atoms.cell, pbc=atoms.pbc,
                     receivers=tight.receivers, senders=tight.senders, shifts=tight.shifts,
                     n_atoms=n + 3, n_edges=e + 17, dtype=np.float64)
    assert raw["positions"].dtype == np.float64 and raw["senders"].dtype == np.int32
    assert_system_equals(System.from_padded(raw, put=lambda x: x), want, dtype=np.float64)


def test_pad_arrays_refuses_what_does_not_fit():
    pos = np.zeros((3, 3))
    with pytest.raises(ValueError, match="frame 2: 3 atoms do not fit in 2 padded slots"):
        pad_arrays(pos, [1, 1, 1], n_atoms=2, where="frame 2")
    with pytest.raises(ValueError, match="frame 2: 2 edges do not fit in 1 padded slots"):
        pad_arrays(pos, [1, 1, 1], receivers=[0, 1], senders=[1, 0], n_edges=1, where="frame 2")
    with pytest.raises(ValueError, match="2 receivers, 1 senders"):
        pad_arrays(pos, [1, 1, 1], receivers=[0, 1], senders=[1])
    with pytest.raises(ValueError, match="different"):
        stack_arrays([pad_arrays(pos, [1, 1, 1]), pad_arrays(pos, [1, 1, 1], n_atoms=4)])
    dummy = pad_arrays(np.zeros((0, 3)), [], n_atoms=4, n_edges=5)
    assert not dummy["atom_mask"].any() and np.all(dummy["senders"] == 4)
