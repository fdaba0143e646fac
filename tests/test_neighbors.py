"""Neighbour lists: host and jitted paths against ASE, padding, Verlet skin, overflow.

ASE's ``neighbor_list("ijS")`` is the independent reference: every path must return exactly
the same set of (receiver i, sender j, image shift S) for ``|x_j - x_i + S·cell| < cutoff``.
"""

import dataclasses
import functools
import itertools

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk, fcc111
from ase.neighborlist import neighbor_list as ase_neighbor_list

from jaxpot import neighbors
from jaxpot.system import System

_rebuild = jax.jit(neighbors.rebuild)
_update = jax.jit(neighbors.update)


# ---------------------------------------------------------------------------------------------
# Structures
# ---------------------------------------------------------------------------------------------


def _rng(seed):
    return np.random.default_rng(seed)


def _unwrap_some(atoms, seed, fraction=0.3):
    """Move a fraction of the atoms by random lattice vectors along periodic directions."""
    rng = _rng(seed)
    pos = atoms.get_positions()
    pick = rng.random(len(atoms)) < fraction
    images = rng.integers(-2, 3, (len(atoms), 3)) * atoms.pbc
    pos[pick] += images[pick] @ atoms.cell.array
    atoms.set_positions(pos)
    return atoms


def fcc_primitive():
    return bulk("Cu", "fcc", a=3.61)  # one atom, perpendicular width 2.08 Å


def bcc_primitive():
    return bulk("Fe", "bcc", a=2.87)  # one atom


def hcp_primitive():
    return bulk("Mg", "hcp", a=3.21, c=5.21)  # two atoms


def triclinic(seed, pbc=True):
    """A random triclinic cell with rattled atoms, many of them outside the cell.

    With mixed ``pbc`` the non-periodic cell rows stay tilted (neither zero nor orthogonal to
    the periodic ones), which the list must ignore.
    """
    rng = _rng(seed)
    cell = np.diag(rng.uniform(4.0, 7.0, 3)) + np.triu(rng.uniform(-2.0, 2.0, (3, 3)), 1)
    cell = cell @ _random_rotation(rng).T
    frac = rng.uniform(-0.7, 1.7, (9, 3))
    return ase.Atoms("Ar9", positions=frac @ cell, cell=cell, pbc=pbc)


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def cluster(n=500):
    """A random non-periodic cluster of ``n`` atoms (no cell)."""
    rng = _rng(5)
    pos = rng.uniform(-9.0, 9.0, (n, 3))
    pos[0] = [0.3, 0.2, 0.1]  # an atom near the origin, where padding atoms sit
    return ase.Atoms(f"Ar{n}", positions=pos)


def slab():
    """Cu(111) slab, periodic in-plane only, rattled, some atoms unwrapped in-plane."""
    atoms = fcc111("Cu", size=(7, 7, 3), vacuum=6.0)
    atoms.rattle(0.15, seed=2)
    atoms.pbc = (True, True, False)
    return _unwrap_some(atoms, 3)


def wire():
    """Periodic along x only; the non-periodic cell rows are zero."""
    rng = _rng(7)
    length = 5.3
    pos = np.column_stack(
        [rng.uniform(-3.0, 8.0, 24), rng.uniform(-4.0, 4.0, 24), rng.uniform(-4.0, 4.0, 24)]
    )
    return ase.Atoms("Ar24", positions=pos, cell=[[length, 0, 0], [0, 0, 0], [0, 0, 0]],
                     pbc=(True, False, False))


def large_cubic():
    """500-atom periodic fcc, rattled and partly unwrapped (cell-list territory)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 5, 5))
    atoms.rattle(0.2, seed=4)
    return _unwrap_some(atoms, 5)


def large_triclinic():
    """512-atom periodic fcc built from the (triclinic, 60°) primitive cell."""
    atoms = bulk("Cu", "fcc", a=3.61).repeat((8, 8, 8))
    atoms.rattle(0.2, seed=6)
    return _unwrap_some(atoms, 7)


# (id, builder, cutoff, methods the jitted path is checked with)
CASES = [
    ("fcc-1atom", fcc_primitive, 7.5, ("brute",)),
    ("bcc-1atom", bcc_primitive, 6.0, ("brute",)),
    ("hcp-2atom", hcp_primitive, 8.0, ("brute",)),
    ("triclinic-0", lambda: triclinic(0), 5.0, ("brute",)),
    ("triclinic-1", lambda: triclinic(1), 7.0, ("brute",)),
    ("triclinic-FTT", lambda: triclinic(2, pbc=(False, True, True)), 6.0, ("brute",)),
    ("triclinic-TFT", lambda: triclinic(3, pbc=(True, False, True)), 6.0, ("brute",)),
    ("cluster-500", cluster, 4.0, ("brute", "cell")),
    ("slab-TTF", slab, 4.5, ("brute", "cell")),
    ("wire-TFF", wire, 4.0, ("brute",)),
    ("large-cubic", large_cubic, 5.0, ("cell",)),
    ("large-triclinic", large_triclinic, 4.5, ("cell",)),
]
# Jitted-path combinations that each cost a compile but add little over the others.
SLOW_JIT = {("bcc-1atom", "brute"), ("triclinic-1", "brute"), ("cluster-500", "brute"),
            ("slab-TTF", "brute"), ("large-triclinic", "cell"), ("triclinic-TFT", "brute")}
JIT_CASES = [
    pytest.param(c[0], m, id=f"{c[0]}-{m}",
                 marks=[pytest.mark.slow] if (c[0], m) in SLOW_JIT else [])
    for c in CASES for m in c[3]
]


# ---------------------------------------------------------------------------------------------
# Edge sets
# ---------------------------------------------------------------------------------------------


def _as_set(i, j, shifts):
    shifts = np.rint(np.asarray(shifts)).astype(int)
    i, j = np.asarray(i).tolist(), np.asarray(j).tolist()
    return sorted(zip(i, j, map(tuple, shifts.tolist()), strict=True))


def ase_edges(atoms, cutoff):
    i, j, s = ase_neighbor_list("ijS", atoms, cutoff)
    return _as_set(i, j, s)


def host_edges(atoms, cutoff):
    r, s, shifts = neighbors.neighbor_list(
        atoms.get_positions(), atoms.cell.array, atoms.pbc, cutoff
    )
    return _as_set(r, s, shifts)


def jit_edges(nbrs, system, cutoff=None):
    """Real edges of a jitted list (sentinel slots dropped), optionally only those < cutoff."""
    n = system.n_atoms
    senders = np.asarray(nbrs.senders)
    keep = senders < n
    if cutoff is not None:
        vec = np.asarray(nbrs.attach(system).edge_vectors())
        keep &= np.linalg.norm(vec, axis=1) < cutoff
    return _as_set(np.asarray(nbrs.receivers)[keep], senders[keep], np.asarray(nbrs.shifts)[keep])


def _case(case_id):
    return next(c for c in CASES if c[0] == case_id)


@functools.cache
def allocated(case_id, method):
    """``(atoms, system, nbrs)`` for a case; cached so each spec compiles once per session."""
    _, build, cutoff, _ = _case(case_id)
    atoms = build()
    system = System.from_ase(atoms)
    return atoms, system, neighbors.allocate(system, cutoff, method=method)


def _rattled(atoms, scale, seed):
    out = atoms.copy()
    out.set_positions(atoms.get_positions() + _rng(seed).normal(scale=scale, size=(len(atoms), 3)))
    return out


# ---------------------------------------------------------------------------------------------
# 1. Exact agreement with ASE
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_host_list_equals_ase(case):
    _, build, cutoff, _ = case
    atoms = build()
    reference = ase_edges(atoms, cutoff)
    assert len(reference) > 0
    assert host_edges(atoms, cutoff) == reference


@pytest.mark.parametrize("case_id,method", JIT_CASES)
def test_jitted_list_equals_ase(case_id, method):
    atoms, system, nbrs = allocated(case_id, method)
    cutoff = nbrs.spec.cutoff
    assert nbrs.spec.method == method
    reference = ase_edges(atoms, cutoff)
    assert len(reference) > 0
    assert not bool(nbrs.overflow)
    assert jit_edges(nbrs, system) == reference

    # Rebuilt under jit for other positions, the list follows them, and comes back.
    moved_atoms = _rattled(atoms, 0.1, seed=11)
    moved = system.replace(positions=jnp.asarray(moved_atoms.get_positions()))
    stale = _rebuild(nbrs, moved)
    assert not bool(stale.overflow)
    assert jit_edges(stale, moved) == ase_edges(moved_atoms, cutoff)
    fresh = _rebuild(stale, system)
    assert jit_edges(fresh, system) == reference
    np.testing.assert_array_equal(fresh.reference_positions, system.positions)
    # Empty slots point at the sentinel on both ends.
    empty = np.asarray(fresh.senders) == system.n_atoms
    assert np.all(np.asarray(fresh.receivers)[empty] == system.n_atoms)
    assert np.all(np.asarray(fresh.shifts)[empty] == 0.0)


@pytest.mark.parametrize("case_id,method", [("triclinic-0", "brute"), ("slab-TTF", "cell")])
def test_jitted_list_in_float32(case_id, method):
    """MD runs in float32: the list is still ASE's, up to pairs within round-off of the cutoff."""
    _, build, cutoff, _ = _case(case_id)
    atoms = build()
    system = System.from_ase(atoms, dtype=jnp.float32)
    assert system.positions.dtype == jnp.float32
    nbrs = neighbors.allocate(system, cutoff, method=method)
    assert nbrs.shifts.dtype == jnp.float32 and not bool(nbrs.overflow)
    i, j, shifts, dist = ase_neighbor_list("ijSd", atoms, cutoff + 1e-3)
    sure = dist < cutoff - 1e-3
    inside = set(_as_set(i[sure], j[sure], shifts[sure]))
    maybe = set(_as_set(i, j, shifts))
    got = set(jit_edges(nbrs, system))
    assert len(inside) > 0
    assert inside <= got <= maybe


def test_small_cells_see_their_own_images():
    """One-atom cells: the atom's only neighbours are its own images, many per shell."""
    for case_id in ["fcc-1atom", "bcc-1atom"]:
        _, build, cutoff, _ = _case(case_id)
        atoms = build()
        edges = ase_edges(atoms, cutoff)
        assert all(i == j == 0 for i, j, _ in edges)
        assert len(edges) > 50  # several shells of images
        assert host_edges(atoms, cutoff) == edges
    _, system, nbrs = allocated("fcc-1atom", "brute")
    assert jit_edges(nbrs, system) == ase_edges(fcc_primitive(), 7.5)
    assert int(nbrs.max_count) == len(ase_edges(fcc_primitive(), 7.5))
    # hcp: the two atoms see both each other's images and their own.
    edges = ase_edges(hcp_primitive(), 8.0)
    assert any(i == j for i, j, _ in edges) and any(i != j for i, j, _ in edges)


@pytest.mark.parametrize("case_id", ["triclinic-0", "slab-TTF", "wire-TFF", "large-cubic"])
def test_edge_vectors_equal_ase_distance_vectors(case_id):
    atoms, system, nbrs = allocated(case_id, _case(case_id)[3][-1])
    cutoff = nbrs.spec.cutoff
    i, j, s, d = ase_neighbor_list("ijSD", atoms, cutoff)
    reference = {
        (a, b, tuple(c)): v
        for a, b, c, v in zip(i.tolist(), j.tolist(), s.tolist(), d, strict=True)
    }
    assert len(reference) > 0
    with_edges = nbrs.attach(system)
    vec = np.asarray(with_edges.edge_vectors())
    mask = np.asarray(with_edges.edge_mask)
    rcv, snd = np.asarray(with_edges.receivers), np.asarray(with_edges.senders)
    shifts = np.rint(np.asarray(with_edges.shifts)).astype(int)
    keys = _as_set(rcv[mask], snd[mask], shifts[mask])
    assert keys == sorted(reference)
    expected = np.array([
        reference[(int(rcv[e]), int(snd[e]), tuple(shifts[e].tolist()))]
        for e in np.nonzero(mask)[0]
    ])
    np.testing.assert_allclose(vec[mask], expected, atol=1e-10)
    # Padding edges have exactly zero vectors.
    assert np.all(vec[~mask] == 0.0)
    # The System built on the host (from_ase(cutoff=...)) gives the same vectors.
    host = System.from_ase(atoms, cutoff=cutoff)
    hv = np.asarray(host.edge_vectors())
    host_keys = zip(np.asarray(host.receivers).tolist(), np.asarray(host.senders).tolist(),
                    np.rint(np.asarray(host.shifts)).astype(int).tolist(), strict=True)
    expected = np.array([reference[(a, b, tuple(c))] for a, b, c in host_keys])
    assert len(expected) == len(reference)
    np.testing.assert_allclose(hv, expected, atol=1e-10)


def test_edge_vector_sign_convention():
    """Edge vector is x_j - x_i (+ S·cell): receiver i is the centre, sender j the neighbour."""
    system = System.from_arrays([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]], [18, 18], cutoff=2.0)
    vec = np.asarray(system.edge_vectors())
    for e in range(system.n_edges):
        expected = [1.5, 0, 0] if int(system.receivers[e]) == 0 else [-1.5, 0, 0]
        np.testing.assert_allclose(vec[e], expected)


def test_host_list_options_and_bad_cells():
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    r, s, _ = neighbors.neighbor_list(pos, None, False, 1.5, self_interaction=True)
    assert sorted(zip(r.tolist(), s.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    r, _, _ = neighbors.neighbor_list(pos, None, False, 0.5)
    assert r.size == 0
    with pytest.raises(ValueError, match="singular"):
        neighbors.neighbor_list(pos, np.diag([3.0, 3.0, 0.0]), True, 1.5)
    # A zero cell row is fine where that direction is not periodic.
    r, _, _ = neighbors.neighbor_list(pos, np.diag([3.0, 3.0, 0.0]), [True, True, False], 1.5)
    assert r.size == 2


# ---------------------------------------------------------------------------------------------
# 2. Padding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case_id,method",
    [
        pytest.param("cluster-500", "brute", marks=pytest.mark.slow),
        ("cluster-500", "cell"),  # regression: padding atoms used to leak in from the dump bin
        ("triclinic-0", "brute"),
    ],
)
def test_padding_atoms_never_appear(case_id, method):
    _, build, cutoff, _ = _case(case_id)
    atoms = build()
    n_real = len(atoms)
    padded = System.from_ase(atoms, n_atoms=n_real + 7)
    # Padding positions are garbage that would produce edges if they were not masked: next to
    # the outermost real atoms (whose cell-list stencils leave the box) and at the origin (next
    # to atom 0 of the cluster).
    garbage = np.asarray(padded.positions).copy()
    real_pos = garbage[:n_real]
    outermost = np.concatenate([real_pos.argmin(axis=0), real_pos.argmax(axis=0)])
    garbage[n_real:-1] = real_pos[outermost] + 0.05
    padded = padded.replace(positions=jnp.asarray(garbage))
    nbrs = neighbors.allocate(padded, cutoff, method=method)
    assert not bool(nbrs.overflow)
    n = padded.n_atoms
    senders, receivers = np.asarray(nbrs.senders), np.asarray(nbrs.receivers)
    real = senders < n
    assert real.sum() > 0
    assert np.all(senders[real] < n_real) and np.all(receivers[real] < n_real)
    assert np.all(receivers[~real] == n)
    reference = ase_edges(atoms, cutoff)
    assert jit_edges(nbrs, padded) == reference
    # Rebuilt under jit after the padding garbage moved: still the same real edges.
    garbage[n_real:] = garbage[n_real - 7 : n_real]
    moved = padded.replace(positions=jnp.asarray(garbage))
    assert jit_edges(_rebuild(nbrs, moved), moved) == reference
    # Edge vectors of empty slots are exactly zero.
    vec = np.asarray(nbrs.attach(padded).edge_vectors())
    assert np.all(vec[~real] == 0.0) and np.abs(vec[real]).max() > 0


# ---------------------------------------------------------------------------------------------
# 3. Verlet skin
# ---------------------------------------------------------------------------------------------


def _skin_system(method):
    if method == "brute":
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))
        atoms.rattle(0.2, seed=8)
        return atoms, 5.0, 1.0
    return cluster(200), 3.5, 1.0


@pytest.mark.parametrize("method", ["brute", "cell"])
def test_verlet_skin(method):
    atoms, cutoff, skin = _skin_system(method)
    system = System.from_ase(atoms)
    nbrs = neighbors.allocate(system, cutoff, skin=skin, method=method)
    assert not bool(nbrs.overflow)
    listed = set(jit_edges(nbrs, system))
    # The skin holds pairs beyond the cutoff.
    assert len(listed) > len(ase_edges(atoms, cutoff))
    assert listed == set(ase_edges(atoms, cutoff + skin))

    # Small moves (< skin/2): no rebuild, and every pair within the cutoff is still listed.
    rng = _rng(9)
    step = rng.normal(size=(len(atoms), 3))
    step *= 0.45 * skin / np.linalg.norm(step, axis=1).max()
    small = atoms.copy()
    small.set_positions(atoms.get_positions() + step)
    small_system = system.replace(positions=jnp.asarray(small.get_positions()))
    kept = _update(nbrs, small_system)
    assert not bool(kept.overflow)
    np.testing.assert_array_equal(kept.reference_positions, nbrs.reference_positions)
    np.testing.assert_array_equal(kept.senders, nbrs.senders)
    within = set(ase_edges(small, cutoff))
    assert within != set(ase_edges(atoms, cutoff))  # the moves changed the cutoff set
    assert within <= set(jit_edges(kept, small_system))
    assert not bool(neighbors.needs_rebuild(kept, small_system.positions, system.atom_mask))

    # One atom moves more than skin/2: update rebuilds and matches a fresh list.
    big = small.copy()
    pos = big.get_positions()
    pos[3] += [0.6 * skin, 0.0, 0.0]
    big.set_positions(pos)
    big_system = system.replace(positions=jnp.asarray(pos))
    assert bool(neighbors.needs_rebuild(kept, big_system.positions, system.atom_mask))
    rebuilt = _update(kept, big_system)
    assert not bool(rebuilt.overflow)
    np.testing.assert_array_equal(rebuilt.reference_positions, big_system.positions)
    assert set(jit_edges(rebuilt, big_system)) == set(ase_edges(big, cutoff + skin))
    assert jit_edges(rebuilt, big_system, cutoff) == ase_edges(big, cutoff)

    if method == "cell":
        # An atom leaving the cell list's box (non-periodic) sets overflow through update.
        pos[0] += [0.0, 0.0, 40.0]
        assert bool(_update(rebuilt, system.replace(positions=jnp.asarray(pos))).overflow)


def test_update_in_a_scanned_random_walk_never_misses_pairs():
    """MD-like use: ``update`` inside ``lax.scan``; at every step the list has every pair."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.2, seed=12)
    system = System.from_ase(atoms)
    cutoff, skin, n_steps = 5.0, 1.0, 60
    nbrs = neighbors.allocate(system, cutoff, skin=skin, method="brute", capacity_multiplier=2.0)
    cell, n = system.cell, system.n_atoms
    shifts = jnp.asarray(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)))  # enough: L > 2 rc
    is_self = jnp.eye(n, dtype=bool)[:, None, :] & jnp.all(shifts == 0, axis=1)[None, :, None]

    def reference_count(x):
        w = x - jnp.floor(x @ jnp.linalg.inv(cell)) @ cell
        d = w[None, None, :, :] - w[:, None, None, :] + (shifts @ cell)[None, :, None, :]
        return jnp.sum((jnp.sum(d * d, axis=-1) < cutoff**2) & ~is_self)

    def step(carry, key):
        x, nb = carry
        x = x + 0.08 * jax.random.normal(key, x.shape, x.dtype)
        moved = system.replace(positions=x)
        nb = neighbors.update(nb, moved)
        vec = nb.attach(moved).edge_vectors()
        listed = jnp.sum((nb.senders < n) & (jnp.sum(vec * vec, axis=-1) < cutoff**2))
        rebuilt = jnp.all(nb.reference_positions == x)
        return (x, nb), (listed, reference_count(x), rebuilt, nb.overflow)

    keys = jax.random.split(jax.random.key(3), n_steps)
    run = jax.jit(lambda carry: jax.lax.scan(step, carry, keys))
    _, (listed, reference, rebuilt, overflow) = run((system.positions, nbrs))
    assert not np.asarray(overflow).any()
    assert np.asarray(reference).min() > 0
    np.testing.assert_array_equal(listed, reference)
    assert 0 < int(np.sum(rebuilt)) < n_steps // 2  # rebuilt now and then, reused mostly


def test_padding_atoms_do_not_trigger_rebuilds():
    _, system, nbrs = allocated("triclinic-0", "brute")
    padded = System.from_ase(triclinic(0), n_atoms=system.n_atoms + 3)
    nbrs = _with_spec(nbrs, padded, skin=1.0)
    pos = np.asarray(padded.positions).copy()
    pos[-3:] += 50.0  # padding atoms jump far away
    assert not bool(neighbors.needs_rebuild(nbrs, jnp.asarray(pos), padded.atom_mask))
    pos[0] += 0.51
    assert bool(neighbors.needs_rebuild(nbrs, jnp.asarray(pos), padded.atom_mask))


# ---------------------------------------------------------------------------------------------
# 4. Overflow
# ---------------------------------------------------------------------------------------------


def _with_spec(nbrs, system, **changes):
    """A Neighbors with a modified static spec (empty arrays sized for it)."""
    spec = dataclasses.replace(nbrs.spec, **changes)
    n, m = system.n_atoms, spec.max_neighbors
    return neighbors.Neighbors(
        senders=jnp.full((n * m,), n, jnp.int32),
        receivers=jnp.full((n * m,), n, jnp.int32),
        shifts=jnp.zeros((n * m, 3)),
        reference_positions=system.positions,
        overflow=jnp.zeros((), bool),
        max_count=jnp.zeros((), jnp.int32),
        spec=spec,
    )


@pytest.mark.parametrize("case_id,method", [("triclinic-0", "brute"), ("cluster-500", "cell")])
def test_overflow_after_compression(case_id, method):
    """A list allocated for one density overflows (inside jit) when the structure is compressed."""
    atoms, system, nbrs = allocated(case_id, method)
    dense = atoms.copy()
    if atoms.pbc.any():
        dense.set_cell(atoms.cell / 1.3, scale_atoms=True)
    else:  # compress towards the centre, so that the atoms stay inside the cell list's box
        centre = atoms.get_positions().mean(axis=0)
        dense.set_positions(centre + (atoms.get_positions() - centre) / 1.3)
    dense_system = System.from_ase(dense)
    over = _rebuild(nbrs, dense_system)
    assert bool(over.overflow)
    assert int(over.max_count) > nbrs.spec.max_neighbors
    # Overflow is sticky: a later rebuild that fits does not clear it.
    assert not bool(_rebuild(nbrs, system).overflow)
    assert bool(_rebuild(over, system).overflow)


def test_overflow_when_cell_deforms_brute():
    """A sheared/compressed cell that needs more image shifts than allocated overflows."""
    length, cutoff = 4.0, 7.8  # cutoff/length = 1.95: shifts up to ±2 are allocated
    atoms = ase.Atoms("Ar2", scaled_positions=[[0.02, 0.5, 0.5], [0.98, 0.5, 0.5]],
                      cell=np.eye(3) * length, pbc=True)
    nbrs = neighbors.allocate(System.from_ase(atoms), cutoff, method="brute")
    small = atoms.copy()
    small.set_cell(np.eye(3) * cutoff / 2.05, scale_atoms=True)  # now ±3 are needed
    system = System.from_ase(small)
    out = _rebuild(nbrs, system)
    assert int(out.max_count) <= nbrs.spec.max_neighbors  # the capacity alone would not tell
    assert jit_edges(out, system) != ase_edges(small, cutoff)  # pairs really are missing
    assert bool(out.overflow)
    # A deformation the shifts still cover is fine and exact.
    mild = atoms.copy()
    mild.set_cell(np.eye(3) * cutoff / 1.99, scale_atoms=True)
    out = _rebuild(nbrs, System.from_ase(mild))
    assert not bool(out.overflow)
    assert jit_edges(out, System.from_ase(mild)) == ase_edges(mild, cutoff)


def test_overflow_when_cell_deforms_cell_list():
    """Shearing the cell makes the bins narrower than the cutoff: overflow, not missed pairs."""
    atoms, system, nbrs = allocated("large-cubic", "cell")
    cutoff = nbrs.spec.cutoff
    for shear, expect_overflow in [(0.3, False), (1.5, True)]:
        cell = atoms.cell.array.copy()
        cell[2] += shear * cell[0]
        sheared = atoms.copy()
        sheared.set_cell(cell, scale_atoms=False)
        sheared_system = system.replace(cell=jnp.asarray(cell))
        out = _rebuild(nbrs, sheared_system)
        assert bool(out.overflow) == expect_overflow, shear
        assert int(out.max_count) <= nbrs.spec.max_neighbors
        reference = ase_edges(sheared, cutoff)
        assert (jit_edges(out, sheared_system) == reference) != expect_overflow


def test_overflow_hand_made_capacities():
    _, system, nbrs = allocated("cluster-500", "cell")
    small = _with_spec(nbrs, system, max_neighbors=3)
    out = _rebuild(small, system)
    assert bool(out.overflow) and int(out.max_count) > 3
    # Bins that are too small overflow even when max_neighbors is ample.
    tiny_bins = _with_spec(nbrs, system, bin_capacity=1)
    out = _rebuild(tiny_bins, system)
    assert bool(out.overflow) and int(out.max_count) <= tiny_bins.spec.max_neighbors
    # The unmodified list does not overflow.
    assert not bool(_rebuild(nbrs, system).overflow)


@pytest.mark.parametrize("case_id", ["cluster-500", "slab-TTF"])
def test_overflow_when_atom_leaves_cell_list_box(case_id):
    atoms, system, nbrs = allocated(case_id, "cell")
    assert not bool(_rebuild(nbrs, system).overflow)
    pos = np.asarray(system.positions).copy()
    pos[5, 2] += 40.0  # along z, non-periodic in both cases
    out = _rebuild(nbrs, system.replace(positions=jnp.asarray(pos)))
    assert bool(out.overflow)
    # Leaving through a periodic face is fine (slab: x is periodic).
    if atoms.pbc[0]:
        pos = np.asarray(system.positions).copy()
        pos[5] += 2.5 * atoms.cell.array[0]
        assert not bool(_rebuild(nbrs, system.replace(positions=jnp.asarray(pos))).overflow)


def test_allocate_rejects_cell_list_on_small_cells():
    system = System.from_ase(fcc_primitive())
    with pytest.raises(ValueError, match="brute"):
        neighbors.allocate(system, 4.0, method="cell")


# ---------------------------------------------------------------------------------------------
# 6. Host list backends (vesin and the exact loop), bad cells, growing open boxes
# ---------------------------------------------------------------------------------------------


def _random_structure(seed):
    """Random triclinic cell, random pbc (all, none or mixed), unwrapped atoms; some cells are
    smaller than the cutoff, so atoms see several images of a neighbour and of themselves."""
    rng = _rng(100 + seed)
    pbc = [(True,) * 3, (False,) * 3, tuple(rng.random(3) < 0.5)][seed % 3]
    small = seed % 4 == 1
    scale = (1.5, 3.0) if small else (4.0, 8.0)
    cell = np.diag(rng.uniform(*scale, 3)) + np.triu(rng.uniform(-1.0, 1.0, (3, 3)), 1)
    cell = cell @ _random_rotation(rng).T
    n = int(rng.integers(1, 4)) if small else int(rng.integers(5, 40))
    frac = rng.uniform(-1.0, 2.0, (n, 3))
    return ase.Atoms(f"Ar{n}", positions=frac @ cell, cell=cell, pbc=pbc), rng.uniform(3.0, 6.0)


@pytest.mark.parametrize("seed", range(24))
def test_host_backends_equal_ase_on_random_cells(seed):
    atoms, cutoff = _random_structure(seed)
    reference = ase_edges(atoms, cutoff)
    args = (atoms.get_positions(), atoms.cell.array, atoms.pbc, cutoff)
    fast = neighbors.neighbor_list(*args, method="vesin")
    exact = neighbors.neighbor_list(*args, method="exact")
    assert _as_set(*fast) == reference
    assert _as_set(*exact) == reference
    # Same arrays in the same order (receiver, sender, shift): no method-dependent sums.
    for a, b in zip(fast, exact, strict=True):
        np.testing.assert_array_equal(a, b)
    if seed % 4 == 1 and any(atoms.pbc):  # small periodic cells: an atom sees itself
        assert any(i == j for i, j, _ in reference)


def test_host_backends_match_on_a_large_cell():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((4, 4, 4))
    atoms.rattle(0.1, seed=1)
    _unwrap_some(atoms, 2)
    args = (atoms.get_positions(), atoms.cell.array, atoms.pbc, 8.5)
    fast = neighbors.neighbor_list(*args)
    assert _as_set(*fast) == ase_edges(atoms, 8.5)
    assert fast[0].size > 50 * len(atoms)
    with pytest.raises(ValueError, match="method"):
        neighbors.neighbor_list(*args, method="cells")


def test_self_interaction_with_vesin():
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    for method in ("vesin", "exact"):
        r, s, _ = neighbors.neighbor_list(pos, None, False, 1.5, self_interaction=True,
                                          method=method)
        assert list(zip(r.tolist(), s.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.mark.parametrize("method", ["vesin", "exact"])
def test_nearly_flat_cell_is_refused(method):
    """A third vector 1e-6 Å high passes the singularity check but needs ~1e7 images."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    cell = atoms.cell.array.copy()
    cell[2] = [1.0, 2.0, 1e-6]
    with pytest.raises(ValueError, match=r"1e-06 Å thick along lattice vector 2.*cutoff of 5"):
        neighbors.neighbor_list(atoms.get_positions(), cell, True, 5.0, method=method)
    # The same error reaches users through System and the jitted allocation.
    atoms.set_cell(cell)
    with pytest.raises(ValueError, match="thick"):
        System.from_ase(atoms, cutoff=5.0)
    with pytest.raises(ValueError, match="thick"):
        neighbors.allocate(System.from_ase(atoms), 5.0)


def test_image_shift_cap_keeps_legitimate_small_cells():
    atoms = fcc_primitive()  # 2.08 Å wide: a 12 Å cutoff needs 13³ images, fine
    r, _, _ = neighbors.neighbor_list(atoms.get_positions(), atoms.cell.array, True, 12.0)
    assert r.size == len(ase_neighbor_list("i", atoms, 12.0))
    with pytest.raises(ValueError, match="periodic images"):
        neighbors.neighbor_list(atoms.get_positions(), atoms.cell.array, True, 200.0)
    # A flat cell is fine where the thin direction is not periodic.
    r, _, _ = neighbors.neighbor_list(np.zeros((1, 3)), np.diag([3.0, 3.0, 1e-6]),
                                      [True, True, False], 4.0)
    assert r.size == len(ase_neighbor_list(
        "i", ase.Atoms("Ar", cell=np.diag([3.0, 3.0, 1e-6]), pbc=[True, True, False]), 4.0))


def test_non_finite_inputs_are_named():
    pos = np.zeros((4, 3))
    pos[2, 1] = np.nan
    with pytest.raises(ValueError, match="atom 2"):
        neighbors.neighbor_list(pos, None, False, 3.0)
    cell = np.eye(3) * 5.0
    cell[1, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite periodic rows"):
        neighbors.neighbor_list(np.zeros((1, 3)), cell, True, 3.0)
    for cutoff in (np.nan, -1.0):
        with pytest.raises(ValueError, match="cutoff"):
            neighbors.neighbor_list(np.zeros((1, 3)), np.eye(3) * 5.0, True, cutoff)


def _droplet(n=700, seed=8):
    """A dense argon droplet (non-periodic, cell-list territory above 512 atoms)."""
    rng = _rng(seed)
    pos = rng.normal(size=(4 * n, 3))
    radii = rng.uniform(0, 1, (4 * n, 1)) ** (1 / 3)
    pos = pos / np.linalg.norm(pos, axis=1, keepdims=True) * radii
    keep = [0]
    for k in range(1, len(pos)):  # no two atoms closer than 3.2 Å (poisson-disc thinning)
        if len(keep) == n:
            break
        if np.min(np.linalg.norm(pos[keep] * 22.0 - pos[k] * 22.0, axis=1)) > 3.2:
            keep.append(k)
    return ase.Atoms(f"Ar{len(keep)}", positions=pos[keep] * 22.0)


def test_open_cell_list_follows_an_evaporating_droplet():
    atoms = _droplet()
    assert len(atoms) > 512
    system = System.from_ase(atoms)
    nbrs = neighbors.allocate(system, 5.0, skin=0.5)
    assert nbrs.spec.method == "cell"
    centre = atoms.get_positions().mean(axis=0)

    def expanded(factor):
        pos = centre + (atoms.get_positions() - centre) * factor
        return atoms.copy(), system.replace(positions=jnp.asarray(pos, system.positions.dtype))

    # 20 % expansion (atoms evaporating outward): still inside the box, no overflow, exact.
    out_atoms, out_system = expanded(1.2)
    out_atoms.set_positions(np.asarray(out_system.positions, np.float64))
    out = _rebuild(nbrs, out_system)
    assert not bool(out.overflow)
    assert jit_edges(out, out_system, 5.0) == ase_edges(out_atoms, 5.0)
    # Tripled: atoms left the box, the flag says so ...
    far_atoms, far_system = expanded(3.0)
    far_atoms.set_positions(np.asarray(far_system.positions, np.float64))
    assert bool(_rebuild(nbrs, far_system).overflow)
    # ... and a list allocated for the current extent fits again and is exact.
    again = neighbors.allocate(far_system, 5.0, skin=0.5)
    assert not bool(again.overflow)
    assert jit_edges(again, far_system, 5.0) == ase_edges(far_atoms, 5.0)
    # Reallocating with more head-room (as after an overflow) gives a larger box.
    roomy = neighbors.allocate(system, 5.0, skin=0.5, capacity_multiplier=1.875)
    size = np.linalg.norm(np.asarray(roomy.spec.box), axis=1)
    assert np.all(size > np.linalg.norm(np.asarray(nbrs.spec.box), axis=1))


def test_open_cell_list_for_a_spread_out_gas_caps_its_bins():
    rng = _rng(9)
    atoms = ase.Atoms("Ar600", positions=rng.uniform(0, 2000.0, (600, 3)))
    atoms.positions[:20] = atoms.positions[0] + rng.uniform(-3, 3, (20, 3))  # one dense spot
    system = System.from_ase(atoms)
    nbrs = neighbors.allocate(system, 5.0, method="cell")
    assert np.prod(nbrs.spec.grid) <= 8 * len(atoms)
    assert not bool(nbrs.overflow)
    reference = ase_edges(atoms, 5.0)
    assert len(reference) > 20
    assert jit_edges(nbrs, system) == reference


def test_brute_list_too_large_for_memory_is_refused():
    # 5000 atoms in a thin periodic slab (too thin for the cell list): 1.6e9 candidate pairs.
    rng = _rng(12)
    cell = np.diag([80.0, 80.0, 2.0])
    atoms = ase.Atoms("Ar5000", positions=rng.uniform(0, 1, (5000, 3)) @ cell, cell=cell,
                      pbc=True)
    with pytest.raises(ValueError, match=r"5000 atoms over 63 periodic images.*19 GB"):
        neighbors.allocate(System.from_arrays(atoms.positions, atoms.numbers, cell=cell,
                                              pbc=True), 5.0)


def test_auto_uses_vesin_and_exact_is_the_fallback(monkeypatch):
    atoms = triclinic(4)
    args = (atoms.get_positions(), atoms.cell.array, atoms.pbc, 5.0)
    reference = ase_edges(atoms, 5.0)

    def no_exact(*a):
        raise AssertionError("the O(N²) path ran")

    with monkeypatch.context() as m:
        m.setattr(neighbors, "_exact_list", no_exact)
        assert _as_set(*neighbors.neighbor_list(*args)) == reference
        system = System.from_ase(atoms, cutoff=5.0)  # structures are built through it too
        assert _as_set(system.receivers, system.senders, system.shifts) == reference
    monkeypatch.setattr(neighbors, "_vesin", lambda: None)  # vesin missing: exact path
    assert _as_set(*neighbors.neighbor_list(*args)) == reference
    with pytest.raises(ValueError, match="pip install vesin"):
        neighbors.neighbor_list(*args, method="vesin")


@pytest.mark.parametrize("option,value,match", [
    ("cutoff", -1.0, "cutoff"), ("cutoff", np.nan, "cutoff"), ("skin", -0.1, "skin"),
    ("skin", np.inf, "skin"), ("capacity_multiplier", 0.5, "capacity_multiplier"),
    ("method", "cells", "method"), ("min_capacity", -3, "min_capacity"),
    ("min_capacity", 2.5, "min_capacity"),
])
def test_allocate_names_a_bad_option(option, value, match):
    system = System.from_ase(triclinic(0))
    kwargs = {"cutoff": 4.0, option: value}
    with pytest.raises(ValueError, match=match):
        neighbors.allocate(system, kwargs.pop("cutoff"), **kwargs)
