"""Bad input on the data side: structures, labels, files. Each case asserts a clear message.

Fast on purpose: small structures, ASE's EMT/LJ for labels, nothing jitted except where a
padded batch is evaluated.
"""

import time
import warnings
from pathlib import Path

import ase
import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator

from jaxpot import data, io
from jaxpot.system import System, validate_arrays

CUTOFF = 3.0
SHARED = Path("/work/shared/data")


def _labelled(atoms, calc=None):
    atoms = atoms.copy()
    atoms.calc = calc or EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        results["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _copper_frames(n, seed=0, rattle=0.08):
    """Rattled copies of one 32-atom fcc Cu cell (same cell and atom order), EMT labels."""
    base = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    out = []
    for k in range(n):
        a = base.copy()
        a.rattle(rattle, seed=seed + k)
        out.append(_labelled(a))
    return out


def _argon_clusters(n, seed=0):
    """Rattled, randomly rotated 8-atom argon clusters (non-periodic), LJ labels."""
    rng = np.random.default_rng(seed)
    cube = 3.8 * np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0)
    out = []
    for _ in range(n):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        x = (cube + rng.normal(scale=0.08, size=cube.shape)) @ q.T
        out.append(_labelled(ase.Atoms("Ar8", positions=x), calc))
    return out


@pytest.fixture(scope="module")
def copper():
    return _copper_frames(20)


@pytest.fixture(scope="module")
def copper_file(copper, tmp_path_factory):
    path = tmp_path_factory.mktemp("cu") / "cu.xyz"
    io.write(path, copper[:4])
    return path


def _scaled(frames, energy=1.0, forces=1.0):
    out = []
    for a in frames:
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy() * energy,
                                       forces=a.get_forces() * forces)
        out.append(b)
    return out


def _write(tmp_path, frames, name="f.xyz"):
    path = tmp_path / name
    io.write(path, frames)
    return path


# ---------------------------------------------------------------------------------------------
# Structures: masses and atomic numbers
# ---------------------------------------------------------------------------------------------

POS3 = np.array([[0.0, 0, 0], [2.0, 0, 0], [0.0, 2.5, 0]])


@pytest.mark.parametrize("mass", [-1.0, 0.0, np.nan, np.inf, -np.inf])
def test_bad_mass_names_the_atom(mass):
    masses = np.array([12.0, 1.0, 16.0])
    masses[1] = mass
    with pytest.raises(ValueError, match=r"frame 4: mass of atom 1 \(atomic number 1\)"):
        System.from_arrays(POS3, [6, 1, 8], masses=masses, where="frame 4")


def test_bad_mass_from_atoms_names_frame_and_atom(copper):
    frames = [a.copy() for a in copper[:3]]
    for a, b in zip(frames, copper[:3], strict=True):
        a.calc = b.calc
    masses = frames[2].get_masses()
    masses[5] = -63.5
    frames[2].set_masses(masses)
    with pytest.raises(ValueError, match=r"src: frame 2: mass of atom 5 .* -63\.5"):
        data.from_atoms(frames, cutoff=CUTOFF, source="src")


def test_bad_mass_in_a_file(tmp_path, copper):
    frames = [a.copy() for a in copper[:2]]
    for a, b in zip(frames, copper[:2], strict=True):
        a.calc = b.calc
    masses = frames[1].get_masses()
    masses[0] = 0.0
    frames[1].set_masses(masses)
    path = _write(tmp_path, frames, "masses.xyz")
    with pytest.raises(ValueError, match=r"masses\.xyz: frame 1: mass of atom 0"):
        data.read_extxyz(path, cutoff=CUTOFF)


def test_wrong_number_of_masses():
    with pytest.raises(ValueError, match=r"\(2,\) masses for 3 atoms"):
        validate_arrays(POS3, [6, 1, 8], np.zeros((3, 3)), False, masses=[1.0, 2.0])


@pytest.mark.parametrize("value", [6.5, 1.0001, np.nan, np.inf])
def test_non_integer_atomic_number_names_the_atom(value):
    numbers = np.array([6.0, 1.0, 8.0])
    numbers[2] = value
    with pytest.raises(ValueError, match=r"atomic number .* of atom 2 is not an integer"):
        System.from_arrays(POS3, numbers)


def test_integer_valued_float_numbers_are_fine():
    system = System.from_arrays(POS3, np.array([6.0, 1.0, 8.0]))
    assert np.asarray(system.species).tolist() == [6, 1, 8]


@pytest.mark.parametrize("z", [0, -3, 119, 1000])
def test_atomic_number_out_of_range(z):
    with pytest.raises(ValueError, match=rf"atomic number {z}\) at atom 1; .*1\.\.118"):
        System.from_arrays(POS3, [6, z, 8])


@pytest.mark.parametrize("numbers", [["C", "H", "O"], [True, True, False]])
def test_atomic_numbers_of_wrong_type(numbers):
    with pytest.raises(ValueError, match="atomic numbers must be integers"):
        validate_arrays(POS3, np.array(numbers), np.zeros((3, 3)), False)


# ---------------------------------------------------------------------------------------------
# Label keys and partly labelled files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["energy", "forces", "stress", "charges"])
def test_key_that_exists_in_no_frame_lists_existing_keys(copper_file, kind):
    with pytest.raises(ValueError, match=rf"no {kind} label under key 'typo', nor does any "
                                         r"other frame .*calculator results \["):
        io.read(copper_file, **{f"{kind}_key": "typo"})


@pytest.mark.parametrize("kind", ["forces", "stress"])
def test_key_typo_in_training_data(copper_file, kind):
    with pytest.raises(ValueError, match=rf"cu\.xyz: frame 0 has no {kind} label under key "
                                         r"'REF_\w+'.*'forces'"):
        data.read_extxyz(copper_file, cutoff=CUTOFF, **{f"{kind}_key": f"REF_{kind}"})


def test_weight_key_typo(copper_file):
    with pytest.raises(ValueError, match=r"no frame has a weight under info key 'wieght'"):
        io.read(copper_file, weight_key="wieght")


@pytest.mark.parametrize("kind", ["energy", "forces", "stress"])
def test_frame_missing_a_label_is_named(tmp_path, copper, kind):
    frames = [a.copy() for a in copper[:5]]
    for k, (a, b) in enumerate(zip(frames, copper[:5], strict=True)):
        results = dict(b.calc.results)
        if k in (3, 4):
            results.pop(kind)
        a.calc = SinglePointCalculator(a, **results)
    path = _write(tmp_path, frames, "partial.xyz")
    with pytest.raises(ValueError, match=rf"partial\.xyz: frame 3 has no {kind} label under "
                                         rf"key '{kind}', but frame 0 has one \(2 of 5"):
        data.read_extxyz(path, cutoff=CUTOFF)
    # Allowed explicitly: masked for that term, with a warning that counts the frames.
    with pytest.warns(UserWarning, match=rf"2 of 5 frames have no {kind} label.*masked"):
        ds = data.read_extxyz(path, cutoff=CUTOFF, allow_partial=True)
    batch = data.collate(ds.structures, 6, 40, 2000)
    has = np.asarray(getattr(batch, f"has_{kind}"))
    np.testing.assert_array_equal(has, [True, True, True, False, False, False])
    if kind == "forces":
        assert np.all(np.asarray(batch.forces)[3:] == 0) and np.abs(batch.forces[0]).max() > 0
    if kind == "energy":
        assert np.isnan(ds.energies[3]) and np.isfinite(data.statistics(ds).energy_std_per_atom)


def test_required_label_cannot_be_partial(copper):
    frames = _scaled(copper[:3])
    frames[1].calc = SinglePointCalculator(frames[1], energy=1.0)
    with pytest.raises(ValueError, match="frame 1 has no forces label"):
        data.from_atoms(frames, cutoff=CUTOFF, require_forces=True, allow_partial=True)


def test_no_energy_anywhere_is_refused_for_training(copper):
    frames = [a.copy() for a in copper[:3]]
    with pytest.raises(ValueError, match="frame 0 has no energy label under key 'energy'"):
        data.from_atoms(frames, cutoff=CUTOFF)


# ---------------------------------------------------------------------------------------------
# Label values
# ---------------------------------------------------------------------------------------------


def _with(copper, k, **results):
    frames = [a.copy() for a in copper[:4]]
    for i, (a, b) in enumerate(zip(frames, copper[:4], strict=True)):
        r = dict(b.calc.results)
        if i == k:
            r.update(results)
        a.calc = SinglePointCalculator(a, **r)
    return frames


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_energy(copper, value):
    with pytest.raises(ValueError, match=r"src: frame 2: energy is not finite"):
        data.from_atoms(_with(copper, 2, energy=value), cutoff=CUTOFF, source="src")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_force_names_frame_and_atom(copper, value):
    f = copper[1].get_forces().copy()
    f[7, 2] = value
    with pytest.raises(ValueError, match=r"src: frame 1: non-finite force on atom 7"):
        data.from_atoms(_with(copper, 1, forces=f), cutoff=CUTOFF, source="src")


def test_absurd_force_names_frame_and_atom(copper):
    f = copper[3].get_forces().copy()
    f[11] = [2e3, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"frame 3: forces on atom 11 has magnitude 2000"):
        data.from_atoms(_with(copper, 3, forces=f), cutoff=CUTOFF)


@pytest.mark.parametrize("value", [np.nan, 5e3])
def test_bad_stress(copper, value):
    s = copper[0].calc.results["stress"].copy()
    s[1] = value
    with pytest.raises(ValueError, match=r"frame 0: (non-finite stress|stress has a component)"):
        data.from_atoms(_with(copper, 0, stress=s), cutoff=CUTOFF)


def test_wrong_shapes(copper):
    with pytest.raises(ValueError, match=r"frame 1: forces have shape \(3, 3\), expected \(32"):
        data.from_atoms(_with(copper, 1, forces=np.zeros((3, 3))), cutoff=CUTOFF)
    with pytest.raises(ValueError, match=r"frame 2: stress must have 6 \(Voigt\) or 9 values"):
        data.from_atoms(_with(copper, 2, stress=np.zeros(5)), cutoff=CUTOFF)


def test_energy_that_is_not_a_number(copper):
    frames = _with(copper, 0)
    frames[3].calc = None
    frames[3].info["energy"] = "abc"
    with pytest.raises(ValueError, match=r"frame 3: energy 'abc' is not a number"):
        data.from_atoms(frames, cutoff=CUTOFF)


def test_non_finite_charges(copper):
    frames = _with(copper, 0)
    for a in frames:
        a.arrays["q"] = np.zeros(len(a))
    frames[2].arrays["q"][4] = np.nan
    with pytest.raises(ValueError, match=r"frame 2: non-finite charge on atom 4"):
        data.from_atoms(frames, cutoff=CUTOFF, charges_key="q")


def test_charges_reach_the_batch(copper):
    frames = _with(copper, 0)
    for k, a in enumerate(frames):
        a.arrays["q"] = np.linspace(-1, 1, len(a)) * (k + 1)
    ds = data.from_atoms(frames, cutoff=CUTOFF, charges_key="q")
    assert ds.has_charges and not data.from_atoms(frames, cutoff=CUTOFF).has_charges
    batch = data.collate(ds.structures[:2], 3, 40, 2000)
    np.testing.assert_allclose(np.asarray(batch.charges)[1, :32], frames[1].arrays["q"],
                               rtol=1e-6)
    assert np.asarray(batch.has_charges).tolist() == [True, True, False]


@pytest.mark.parametrize("energy", [1e10, -1e10, 1e5])
def test_energy_outlier_names_the_frame(copper, energy):
    frames = _scaled(copper[:12])
    frames[7].calc.results["energy"] = energy
    with pytest.raises(ValueError, match=r"frame 7: energy per atom .* far from the other"):
        data.from_atoms(frames, cutoff=CUTOFF)
    ds = data.from_atoms(frames, cutoff=CUTOFF, check_outliers=False, check_units=False)
    assert ds[7].energy == energy


def test_kcal_frame_among_ev_frames_of_total_energies():
    # DFT-like total energies (ethanol ~ -310 eV): one frame in kcal/mol is 23x further out.
    rng = np.random.default_rng(0)
    numbers = [np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])] * 30
    energies = -310.0 + 0.3 * rng.normal(size=30)
    energies[11] *= 23.06
    bad = io.energy_outliers(numbers, energies)
    assert [b[0] for b in bad] == [11]
    assert io.energy_outliers(numbers, energies[np.arange(30) != 11]) == []


def test_outlier_floor_keeps_mixtures_clear():
    # Free atoms (0 eV) beside a solid (-3.5 eV/atom): a legitimate mixture, not an outlier.
    numbers = [np.full(32, 29)] * 20 + [np.array([29])] * 2
    energies = np.r_[-3.5 * 32 + 0.01 * np.arange(20), 0.0, 0.01]
    assert io.energy_outliers(numbers, energies) == []


@pytest.mark.parametrize("weight", [-1.0, np.nan])
def test_bad_weight_names_the_frame(copper, weight):
    frames = _with(copper, 0)
    frames[2].info["weight"] = weight
    with pytest.raises(ValueError, match=r"frame 2: weight 'weight' is (negative|not finite)"):
        data.from_atoms(frames, cutoff=CUTOFF)


def test_all_zero_weights(copper):
    frames = _with(copper, 0)
    for a in frames:
        a.info["w"] = 0.0
    with pytest.raises(ValueError, match="every frame has weight 0"):
        data.from_atoms(frames, cutoff=CUTOFF, weight_key="w")


def test_weights_reach_the_batch(tmp_path, copper):
    frames = _with(copper, 0)
    frames[1].info["weight"] = 2.5
    ds = data.read_extxyz(_write(tmp_path, frames), cutoff=CUTOFF)
    assert [s.weight for s in ds] == [1.0, 2.5, 1.0, 1.0]
    batch = data.collate(ds.structures, 5, 40, 2000)
    np.testing.assert_array_equal(np.asarray(batch.weight), [1.0, 2.5, 1.0, 1.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Units that disagree between energies and forces
# ---------------------------------------------------------------------------------------------


def test_consistent_labels_give_a_ratio_near_one(copper):
    y = io.extract_labels(copper, check_units=False)
    r = io.energy_force_consistency(copper, y.energy, y.forces)
    assert r is not None and r["correlation"] > 0.9
    assert 0.85 < r["ratio"] < 1.15
    # The check sees the scale: energies x2 give a ratio of 2.
    r2 = io.energy_force_consistency(copper, 2 * y.energy, y.forces)
    assert r2["ratio"] == pytest.approx(2 * r["ratio"], rel=1e-9)


def test_rotated_molecules_ratio_near_one():
    frames = _argon_clusters(24)
    y = io.extract_labels(frames, check_units=False)
    r = io.energy_force_consistency(frames, y.energy, y.forces)
    assert r is not None and r["correlation"] > 0.9 and 0.8 < r["ratio"] < 1.25


@pytest.mark.parametrize("scale, energy, forces, name", [
    ("kcal", 23.06, 1.0, "kcal/mol"),
    ("kJ", 96.485, 1.0, "kJ/mol"),
    ("meV", 1000.0, 1.0, "meV"),
    ("Ha", 1 / 27.211, 1.0, "Hartree"),
    ("kcal_forces", 1.0, 23.06, r"forces in kcal/mol/Å"),
])
def test_units_that_disagree_are_refused(copper, tmp_path, scale, energy, forces, name):
    frames = _scaled(copper, energy=energy, forces=forces)
    path = _write(tmp_path, frames, f"{scale}.xyz")
    with pytest.raises(ValueError, match=rf"{scale}\.xyz: energies and forces disagree in "
                                         rf"units.*nearest common mismatch: .*{name}"):
        io.read(path)
    assert len(io.read(path, check_units=False)) == 20


def test_units_refused_for_slabs():
    base = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    base.center(vacuum=4.0, axis=2)
    base.pbc = (True, True, False)
    frames = []
    for k in range(20):
        a = base.copy()
        a.rattle(0.08, seed=100 + k)
        frames.append(_labelled(a))
    y = io.extract_labels(frames, check_units=False)
    r = io.energy_force_consistency(frames, y.energy, y.forces)
    assert r["correlation"] > 0.9 and 0.8 < r["ratio"] < 1.25
    with pytest.raises(ValueError, match="disagree in units.*kJ/mol"):
        io.extract_labels(_scaled(frames, energy=96.485), source="slab")


def test_units_refused_for_molecules_too():
    frames = _scaled(_argon_clusters(24), energy=23.06)
    with pytest.raises(ValueError, match="disagree in units.*kcal/mol"):
        data.from_atoms(frames, cutoff=5.0, source="argon")


def test_unrelated_frames_give_no_verdict(copper):
    # Every frame a different cell: no pairs to compare, no false alarm.
    frames = []
    for k, a in enumerate(copper[:16]):
        b = a.copy()
        b.set_cell(b.cell * (1 + 0.01 * k), scale_atoms=True)
        frames.append(_labelled(b))
    y = io.extract_labels(frames, check_units=False)
    assert io.energy_force_consistency(frames, 23.06 * y.energy, y.forces) is None


# ---------------------------------------------------------------------------------------------
# Train/valid overlap
# ---------------------------------------------------------------------------------------------


def test_check_overlap(copper):
    train, valid = copper[:10], copper[10:]
    assert io.check_overlap(train, valid) == []
    assert io.check_overlap(train, train) == [(i, i) for i in range(10)]
    mixed = [copper[12], copper[3], copper[15], copper[7]]
    assert io.check_overlap(train + valid, mixed) == [(3, 1), (7, 3), (12, 0), (15, 2)]
    moved = copper[3].copy()
    moved.positions[0, 0] += 1e-3
    assert io.check_overlap(train, [moved]) == []


def test_check_overlap_on_datasets(copper):
    ds = data.from_atoms(copper[:6], cutoff=CUTOFF)
    assert data.check_overlap(ds, ds[[4, 1]]) == [(1, 1), (4, 0)]
    assert data.check_overlap(ds[:3], ds[3:]) == []


# ---------------------------------------------------------------------------------------------
# Files whose header lies
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["read", "read_structure", "read_extxyz"])
def test_huge_atom_count_does_not_hang(tmp_path, reader):
    path = tmp_path / "huge.xyz"
    path.write_text("1000000000\nProperties=species:S:1:pos:R:3 pbc=\"F F F\"\n"
                    "H 0 0 0\nH 0 0 0.74\n")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"huge\.xyz: line 1 claims 1000000000 atoms, but only "
                                         r"\d+ bytes follow"):
        if reader == "read_extxyz":
            data.read_extxyz(path, cutoff=CUTOFF)
        else:
            getattr(io, reader)(path)
    assert time.perf_counter() - start < 5.0


def test_huge_atom_count_in_a_later_frame(tmp_path):
    path = tmp_path / "later.xyz"
    io.write(path, [ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])] * 2)
    with open(path, "a") as f:
        f.write("999999999\ncomment\nH 0 0 0\n")
    with pytest.raises(ValueError, match=r"later\.xyz: line 9 claims 999999999 atoms"):
        io.read_frames(path)


def test_negative_atom_count(tmp_path):
    path = tmp_path / "neg.xyz"
    path.write_text("-5\n\nH 0 0 0\n")
    with pytest.raises(ValueError, match=r"neg\.xyz: line 1 claims -5 atoms"):
        io.read_frames(path)


# ---------------------------------------------------------------------------------------------
# One host path: no device round trip, one placement per batch
# ---------------------------------------------------------------------------------------------


def test_dataset_is_built_without_touching_a_device(copper, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("device_put while building a Dataset")

    monkeypatch.setattr(jax, "device_put", forbidden)
    # The patch misses put= defaults bound at import; JAX's guard sees every transfer.
    with jax.transfer_guard_host_to_device("disallow"):
        ds = data.from_atoms(copper[:4], cutoff=CUTOFF)
    for s in ds:
        for value in (s.positions, s.senders, s.shifts, s.forces, s.stress):
            assert type(value) is np.ndarray


def test_batch_loader_places_each_batch_once(copper):
    ds = data.from_atoms(copper[:7], cutoff=CUTOFF)
    calls = []

    def put(tree):
        leaves = jax.tree.leaves(tree)
        assert all(type(x) is np.ndarray for x in leaves)  # host arrays until now
        calls.append(len(leaves))
        return jax.device_put(tree)

    loader = data.BatchLoader(ds, 3, put=put)
    batches = list(loader.batches(0))
    assert len(calls) == len(batches) == len(loader) == 3
    assert all(isinstance(b.energy, jax.Array) for b in batches)
    host = list(data.BatchLoader(ds, 3, put=lambda b: b).batches(0))
    assert type(host[0].system.positions) is np.ndarray


# ---------------------------------------------------------------------------------------------
# The shared reference data sets raise no false alarm
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data sets not present")
@pytest.mark.parametrize("name", ["cu_emt", "ethanol_xtb", "nacl_bmh"])
def test_reference_data_sets_pass_clean(name):
    for split in ("train", "valid"):
        path = SHARED / name / f"{split}.xyz"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            frames = io.read(path)
        y = io.labels(frames)
        assert len(frames) == (1000 if split == "train" else 200)
        assert np.all(np.isfinite(y["energy"])) and y["forces"] is not None
        r = io.energy_force_consistency(frames, y["energy"], y["forces"])
        assert r["correlation"] > 0.9 and 0.7 < r["ratio"] < 1.1, r
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = data.read_extxyz(SHARED / name / "valid.xyz", cutoff=4.0)
    assert len(ds) == 200 and ds.has_forces and ds.has_stress == (name != "ethanol_xtb")
    train = io.read_frames(SHARED / name / "train.xyz")
    valid = io.read_frames(SHARED / name / "valid.xyz")
    assert io.check_overlap(train, valid) == []
    assert io.check_overlap(valid, valid) == [(i, i) for i in range(200)]


def test_info_label_wins_over_a_stale_calculator(copper):
    a = copper[0].copy()
    a.calc = SinglePointCalculator(a, energy=123.0, forces=np.zeros((len(a), 3)))
    a.info["energy"] = -4.5
    y = io.extract_labels([a], check_units=False)
    assert y.energy.tolist() == [-4.5]


def test_live_calculator_is_asked_for_missing_labels():
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.rattle(0.05, seed=3)
    a.calc = EMT()
    ds = data.from_atoms([a], cutoff=CUTOFF)
    ref = _labelled(a)
    assert ds[0].energy == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(ds[0].forces, ref.get_forces(), atol=1e-12)


def test_empty_input():
    assert len(data.from_atoms([], cutoff=CUTOFF)) == 0
    with pytest.raises(ValueError, match="src: no frames"):
        io.extract_labels([], source="src")
    with pytest.raises(ValueError, match="cutoff must be a positive distance"):
        data.from_atoms([], cutoff=-1.0)


def _break(atoms, how):
    if how == "nan position":
        atoms.positions[5, 1] = np.nan
    elif how == "overlap":
        atoms.positions[9] = atoms.positions[4] + [0.02, 0.0, 0.0]
    elif how == "singular cell":
        atoms.cell[2] = atoms.cell[0]
    elif how == "dummy element":
        atoms.numbers[6] = 0
    return atoms


@pytest.mark.parametrize("how, message", [
    ("nan position", r"frame 2: non-finite position for atom 5"),
    ("overlap", r"frame 2: atoms (4 and 9|9 and 4) overlap"),
    ("singular cell", r"frame 2: .*cell"),
    ("dummy element", r"frame 2: unknown element \(atomic number 0\) at atom 6"),
])
def test_bad_structure_in_a_file_names_file_and_frame(tmp_path, copper, how, message):
    frames = [a.copy() for a in copper[:3]]
    for a, b in zip(frames, copper[:3], strict=True):
        a.calc = SinglePointCalculator(a, **b.calc.results)
    _break(frames[2], how)
    path = tmp_path / "broken.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(ValueError, match=rf"broken\.xyz: {message}"):
        data.read_extxyz(path, cutoff=CUTOFF)
