"""jaxpot.io: reading labelled extxyz, label extraction, atomic writes, clear errors."""

import os

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from jaxpot import io, serialization


def _frames(n=3):
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.02 * i, cubic=True)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, **atoms.calc.results)
        frames.append(atoms)
    return frames


def test_round_trip_labels(tmp_path):
    frames = _frames()
    path = tmp_path / "data.xyz"
    io.write(path, frames)
    back = io.read(path)
    assert len(back) == 3
    y = io.labels(back)
    ref = io.labels(frames)
    assert y["energy"].shape == (3,) and y["energy"].dtype == np.float64
    np.testing.assert_allclose(y["energy"], [a.get_potential_energy() for a in frames],
                               rtol=1e-12)
    assert len(set(y["energy"].tolist())) == 3
    for f, f_ref in zip(y["forces"], ref["forces"], strict=True):
        np.testing.assert_allclose(f, f_ref, atol=1e-12)
    assert y["stress"].shape == (3, 3, 3)
    np.testing.assert_allclose(y["stress"], ref["stress"], atol=1e-12)
    np.testing.assert_allclose(y["stress"], y["stress"].transpose(0, 2, 1))
    assert np.abs(y["stress"]).max() > 0
    np.testing.assert_allclose(back[1].get_positions(), frames[1].get_positions(), atol=1e-7)
    assert back[0].get_potential_energy() == y["energy"][0]


def test_custom_keys_and_index(tmp_path):
    frames = _frames()
    for k, atoms in enumerate(frames):
        atoms.info["REF_energy"] = -1.0 - k
        atoms.arrays["REF_forces"] = np.full((len(atoms), 3), float(k))
        sym = np.arange(9.0).reshape(3, 3)
        atoms.info["REF_stress"] = (sym + sym.T) * (k + 1)
    path = tmp_path / "custom.xyz"
    io.write(path, frames)
    back = io.read(path, energy_key="REF_energy", forces_key="REF_forces",
                   stress_key="REF_stress")
    y = io.labels(back)
    np.testing.assert_array_equal(y["energy"], [-1.0, -2.0, -3.0])
    np.testing.assert_array_equal(y["forces"][2], np.full((4, 3), 2.0))
    sym = np.arange(9.0).reshape(3, 3)
    np.testing.assert_array_equal(y["stress"][1], (sym + sym.T) * 2)
    one = io.read(path, index=1, energy_key="REF_energy")
    assert len(one) == 1 and one[0].get_potential_energy() == -2.0
    last_two = io.read(path, index="1:", energy_key="REF_energy")
    assert [a.get_potential_energy() for a in last_two] == [-2.0, -3.0]


def test_unlabelled_structures_read_fine(tmp_path):
    path = tmp_path / "plain.xyz"
    io.write(path, [molecule("H2O"), molecule("CH4")])
    frames = io.read(path)
    assert [len(a) for a in frames] == [3, 5]
    with pytest.raises(ValueError, match="frame 0 .*no energy"):
        io.labels(frames)
    with pytest.raises(ValueError, match=r"frame 0 has no energy label under key 'energy'"):
        io.read(path, require=["energy"])


def test_missing_label_names_frame_and_key(tmp_path):
    frames = _frames()
    frames[2].calc = None
    path = tmp_path / "partial.xyz"
    io.write(path, frames)
    with pytest.raises(ValueError, match=r"frame 2 has no energy label") as err:
        io.read(path)
    assert str(path) in str(err.value)
    # a key the user asked for explicitly must exist
    with pytest.raises(ValueError, match=r"frame 0 has no energy label under key 'DFT_energy'"):
        io.read(path, energy_key="DFT_energy")
    # ignoring labels works
    assert len(io.read(path, energy_key=None, forces_key=None, stress_key=None)) == 3


def test_labels_forces_partial():
    frames = _frames(2)
    frames[1].calc = SinglePointCalculator(frames[1], energy=1.0)
    with pytest.raises(ValueError, match="frame 1 has no forces"):
        io.labels(frames)


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        io.read(tmp_path / "nope.xyz")
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\n\nQq 0 0 0\nAr 1 1 1\n")
    with pytest.raises(ValueError, match="bad.xyz"):
        io.read(bad)
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("this is not\nan xyz file at all\n")
    with pytest.raises(ValueError, match="garbage.xyz"):
        io.read(garbage)
    with pytest.raises(ValueError, match="directory"):
        io.read(tmp_path)
    with pytest.raises(FileNotFoundError):
        io.read_structure(tmp_path / "nope.cif")


def test_bad_label_shapes(tmp_path):
    atoms = bulk("Cu", cubic=True)
    atoms.info["E"] = np.array([1.0, 2.0])
    path = tmp_path / "x.xyz"
    io.write(path, atoms)
    with pytest.raises(ValueError, match="frame 0: energy 'E' must be one number"):
        io.read(path, energy_key="E")


def test_read_structure_takes_last_frame(tmp_path):
    frames = _frames()
    path = tmp_path / "t.xyz"
    io.write(path, frames)
    np.testing.assert_allclose(io.read_structure(path).cell, frames[-1].cell)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "data.xyz"
    io.write(path, _frames(2))
    before = path.read_bytes()

    def fail(fileobj, images, format=None):
        fileobj.write("3\npartial")
        raise RuntimeError("simulated crash mid-write")

    monkeypatch.setattr(io.ase.io, "write", fail)
    with pytest.raises(RuntimeError, match="simulated"):
        io.write(path, _frames(3))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["data.xyz"]
    assert len(io.read(path)) == 2


def test_atomic_write_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with serialization.atomic_write(tmp_path / "no" / "x.txt", "w") as f:
            f.write("x")


def test_charges_and_weights_round_trip(tmp_path):
    frames = _frames()
    for k, atoms in enumerate(frames):
        results = dict(atoms.calc.results)
        results["charges"] = np.linspace(-0.5, 0.5, len(atoms)) * (k + 1)
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["weight"] = 0.5 * (k + 1)
    path = tmp_path / "q.xyz"
    io.write(path, frames)
    back = io.read(path)
    for k, atoms in enumerate(back):
        np.testing.assert_allclose(atoms.get_charges(), frames[k].calc.results["charges"])
        assert atoms.info["weight"] == 0.5 * (k + 1)
    y = io.extract_labels(back, source="q.xyz")
    assert y.has("charges") and y.weight.tolist() == [0.5, 1.0, 1.5]
    assert y.present["stress"].all() and y.stress[0].shape == (3, 3)


def test_read_frames_with_a_format(tmp_path):
    path = tmp_path / "frames.data"
    io.write(path, _frames(2))
    assert len(io.read_frames(path, format="extxyz")) == 2
    path.write_text("5\n\nH 0 0 0\n")
    with pytest.raises(ValueError, match=r"frames\.data: line 1 claims 5 atoms"):
        io.read_frames(path, format="extxyz")
