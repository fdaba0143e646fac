"""Tests of jaxpot.data: reading labels, validation, element refs, statistics, shapes, batches."""

import ase
import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

from jaxpot import data


def _emt_images(n=6, seed=0):
    images = []
    for i in range(n):
        reps = (2, 2, 2) if i % 2 else (2, 2, 1)
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(reps)
        if i % 3 == 2:
            del a[0]  # a vacancy: another atom count
        a.rattle(0.05, seed=seed + i)
        a.calc = EMT()
        a.get_potential_energy()
        a.get_stress()
        images.append(a)
    return images


@pytest.fixture(scope="module")
def images():
    return _emt_images()


def test_read_extxyz_labels(images, tmp_path):
    path = tmp_path / "cu.xyz"
    ase.io.write(path, images, format="extxyz")
    ds = data.read_extxyz(path, cutoff=3.0)
    assert len(ds) == len(images) and ds.has_stress and ds.has_forces
    for s, a in zip(ds.structures, images, strict=True):
        assert s.energy == pytest.approx(a.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(s.forces, a.get_forces(), atol=1e-6)
        np.testing.assert_allclose(s.stress, a.get_stress(voigt=False), atol=1e-8)
        # Edges are the exact host list for the cutoff.
        i, _ = neighbor_list("ij", a, 3.0)
        assert s.n_edges == len(i)
    # Live calculator results are accepted too.
    ds2 = data.from_atoms(images, cutoff=3.0)
    assert ds2.energies == pytest.approx(ds.energies, abs=1e-6)


def test_custom_label_keys(tmp_path):
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.rattle(0.02, seed=1)
    a.info["REF_energy"] = -1.5
    a.arrays["REF_forces"] = np.ones((len(a), 3))
    a.info["REF_stress"] = np.arange(6, dtype=float)
    path = tmp_path / "ref.xyz"
    ase.io.write(path, [a, a], format="extxyz")
    ds = data.read_extxyz(path, cutoff=3.0, energy_key="REF_energy", forces_key="REF_forces",
                          stress_key="REF_stress")
    s = ds[1]
    assert s.energy == -1.5
    np.testing.assert_array_equal(s.forces, np.ones((4, 3)))
    # Voigt xx yy zz yz xz xy -> symmetric 3x3.
    np.testing.assert_array_equal(s.stress, [[0, 5, 4], [5, 1, 3], [4, 3, 2]])
    ds = data.read_extxyz(path, cutoff=3.0, energy_key="REF_energy", forces_key=None,
                          stress_key=None)
    assert ds[0].forces is None and not ds.has_stress


def test_validation_names_file_and_frame(images, tmp_path):
    bad = [a.copy() for a in images[:3]]
    for a, b in zip(bad, images[:3], strict=True):
        a.info["energy"] = b.get_potential_energy()
    bad[2].info["energy"] = float("nan")
    path = tmp_path / "bad.xyz"
    ase.io.write(path, bad, format="extxyz")
    with pytest.raises(ValueError, match=r"bad\.xyz: frame 2: energy is not finite"):
        data.read_extxyz(path, cutoff=3.0, forces_key=None, stress_key=None)
    with pytest.raises(ValueError, match=r"frame 0 has no energy label under key 'E', nor does "
                       r"any other frame.*calculator results \['energy'\]"):
        data.read_extxyz(path, cutoff=3.0, energy_key="E")
    nanpos = [a.copy() for a in images[:2]]
    for a, b in zip(nanpos, images[:2], strict=True):
        a.info["energy"] = b.get_potential_energy()
    nanpos[1].positions[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"src: frame 1: non-finite position for atom 3"):
        data.from_atoms(nanpos, cutoff=3.0, source="src", forces_key=None, stress_key=None)
    shortf = images[0].copy()
    shortf.info["energy"] = 0.0
    shortf.arrays["f"] = np.zeros((len(shortf), 3))
    shortf.arrays["f"][0, 0] = np.inf
    with pytest.raises(ValueError, match="frame 0: non-finite force on atom 0"):
        data.from_atoms([shortf], cutoff=3.0, forces_key="f", stress_key=None)
    with pytest.raises(ValueError, match="no such file"):
        data.read_extxyz(tmp_path / "missing.xyz", cutoff=3.0)


def _molecules(compositions, energies):
    out = []
    for comp, e in zip(compositions, energies, strict=True):
        numbers = [z for z, c in comp.items() for _ in range(c)]
        pos = np.arange(len(numbers))[:, None] * np.array([1.5, 0.0, 0.0])
        a = ase.Atoms(numbers=numbers, positions=pos)
        a.info["energy"] = e
        out.append(a)
    return data.from_atoms(out, cutoff=1.0, forces_key=None, stress_key=None)


def test_element_refs_recover_offsets():
    rng = np.random.default_rng(0)
    true = {1: -13.6, 6: -1030.0, 8: -2040.5}
    comps = [{z: int(rng.integers(1, 5)) for z in true} for _ in range(20)]
    energies = [sum(true[z] * c for z, c in comp.items()) + 1e-3 * rng.normal()
                for comp in comps]
    refs = data.fit_element_refs(_molecules(comps, energies))
    for z, v in true.items():
        assert refs[z] == pytest.approx(v, abs=5e-3)


def test_element_refs_rank_deficient_min_norm():
    # One stoichiometry (ethanol, C2H6O): only n·e is determined; lstsq gives the min-norm e.
    comp = {6: 2, 1: 6, 8: 1}
    energies = [-310.0, -309.8, -309.9]
    ds = _molecules([comp] * 3, energies)
    refs = data.fit_element_refs(ds)
    n = np.array([comp[z] for z in sorted(comp)], float)
    e = np.array([refs[z] for z in sorted(comp)])
    assert n @ e == pytest.approx(np.mean(energies), abs=1e-9)
    np.testing.assert_allclose(e, n * np.mean(energies) / (n @ n), rtol=1e-9)
    st = data.statistics(ds)
    assert st.energy_mean_per_atom == pytest.approx(0.0, abs=1e-9)


def test_statistics(images):
    ds = data.from_atoms(images, cutoff=3.0)
    st = data.statistics(ds)
    f = np.concatenate([a.get_forces() for a in images])
    assert st.force_rms == pytest.approx(np.sqrt(np.mean(f**2)), rel=1e-9)
    n_nb = sum(len(neighbor_list("i", a, 3.0)) for a in images)
    assert st.avg_num_neighbors == pytest.approx(n_nb / sum(len(a) for a in images))
    e_pa = np.array([(a.get_potential_energy() - st.element_refs[29] * len(a)) / len(a)
                     for a in images])
    assert st.energy_std_per_atom == pytest.approx(np.std(e_pa), rel=1e-9)
    assert st.has_stress and st.stress_rms > 0
    assert data.Statistics.from_dict(st.to_dict()) == st


def test_split_reproducible(images):
    ds = data.from_atoms(images, cutoff=3.0)
    tr, va = data.split(ds, 0.34, seed=3)
    tr2, va2 = data.split(ds, 0.34, seed=3)
    assert [s.energy for s in va] == [s.energy for s in va2] and len(va) == 2
    assert sorted(s.energy for s in tr + va) == sorted(ds.energies)


def test_shapes_bounded_and_everything_fits():
    rng = np.random.default_rng(1)
    mols = []
    for n in rng.integers(1, 60, size=80):
        pos = rng.uniform(0, 6.0, size=(int(n), 3)) + np.arange(int(n))[:, None] * 1.2
        a = ase.Atoms(numbers=[1] * int(n), positions=pos)
        a.info["energy"] = 0.0
        mols.append(a)
    ds = data.from_atoms(mols, cutoff=3.0, forces_key=None, stress_key=None)
    for max_shapes in (1, 3, 6):
        shapes = data.choose_shapes(ds, max_shapes=max_shapes)
        assert 1 <= len(shapes) <= max_shapes
        loader = data.BatchLoader(ds, 7, shapes=shapes)
        seen = np.concatenate([idx for _, idx in loader.plan(0)])
        assert sorted(seen.tolist()) == list(range(len(ds)))
        assert {b.shape[1:] for b in loader.batches(0)} <= set(shapes)
        assert all(b.shape[0] == 7 for b in loader.batches(0))


def test_batches_padding_and_shuffle(images):
    ds = data.from_atoms(images, cutoff=3.0)
    loader = data.BatchLoader(ds, 4, seed=5)
    p0, p0b, p1 = loader.plan(0), loader.plan(0), loader.plan(1)
    assert [i.tolist() for _, i in p0] == [i.tolist() for _, i in p0b]
    assert [i.tolist() for _, i in p0] != [i.tolist() for _, i in p1]
    n_real = 0
    for (_, idx), b in zip(p0, loader.batches(0), strict=True):
        w = np.asarray(b.weight)
        assert w.sum() == len(idx) and np.all(w[len(idx):] == 0)
        mask = np.asarray(b.system.atom_mask)
        np.testing.assert_array_equal(mask.sum(1), np.asarray(b.n_atoms))
        assert np.all(np.asarray(b.forces)[~mask] == 0)
        assert np.all(np.asarray(b.system.senders)[len(idx):] == b.shape[1])  # dummy edges
        for k, i in enumerate(idx):
            s = ds[int(i)]
            np.testing.assert_array_equal(np.asarray(b.forces)[k, : s.n_atoms], s.forces)
            assert float(b.energy[k]) == s.energy
        n_real += len(idx)
    assert n_real == len(ds)
    # A padded System gives the same edge vectors as the unpadded structure.
    s = ds[0]
    sys_pad = s.system(n_atoms=s.n_atoms + 3, n_edges=s.n_edges + 10)
    sys_raw = s.system()
    np.testing.assert_allclose(np.asarray(sys_pad.edge_vectors())[: s.n_edges],
                               np.asarray(sys_raw.edge_vectors()))


def test_structure_and_batch_padding_match_system(images):
    """Structure.system and every row of a collated batch pad exactly like System.from_ase."""
    import jax

    from jaxpot.system import System, unstack

    ds = data.from_atoms(images, cutoff=3.0)
    n, e = int(ds.n_atoms.max()) + 2, int(ds.n_edges.max()) + 9
    batch = data.collate(ds.structures, len(ds) + 1, n, e)
    rows = unstack(batch.system)
    for k, (s, a) in enumerate(zip(ds.structures, images, strict=True)):
        want = System.from_ase(a, cutoff=3.0, n_atoms=n, n_edges=e)
        for got in (s.system(n_atoms=n, n_edges=e), rows[k]):
            for name in ("positions", "species", "masses", "atom_mask", "cell", "pbc",
                         "senders", "receivers", "shifts"):
                np.testing.assert_array_equal(np.asarray(getattr(got, name)),
                                              np.asarray(getattr(want, name)), err_msg=name)
    assert not np.asarray(rows[-1].atom_mask).any()  # the dummy
    host = ds[0].system(put=lambda x: x)
    assert type(host.positions) is np.ndarray and isinstance(ds[0].system().positions,
                                                             jax.Array)


def test_batch_padding_leaves_the_energy_unchanged(images):
    """Padding atoms, edges and dummy structures change nothing (Morse; the NequIP and MACE
    padding tests in test_models.py go through the same kernel, jaxpot.system.pad_arrays)."""
    import jax

    from jaxpot import energy_and_forces, potentials

    pot = potentials.morse(D=0.3, alpha=1.4, r0=2.7, cutoff=3.0)
    params = pot.init(None, None)
    ds = data.from_atoms(images[:3], cutoff=3.0)
    ef = jax.jit(jax.vmap(energy_and_forces(pot), in_axes=(None, 0)))
    n, e = int(ds.n_atoms.max()), int(ds.n_edges.max())
    tight = data.collate(ds.structures, 3, n, e)
    padded = data.collate(ds.structures, 5, n + 6, e + 40)
    e1, f1 = ef(params, tight.system)
    e2, f2 = ef(params, padded.system)
    assert np.ptp(np.asarray(e1)) > 0 and np.abs(np.asarray(f1)).max() > 1e-4
    np.testing.assert_allclose(np.asarray(e2)[:3], np.asarray(e1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(f2)[:3, :n], np.asarray(f1), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(f2)[:3, n:] == 0) and np.all(np.asarray(e2)[3:] == 0)
