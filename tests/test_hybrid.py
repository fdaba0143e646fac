"""Hybrid models (jaxpot.models.hybrid): electrostatics against pymatgen's Ewald sum, the
physics suite, fixed/predicted/QEq charges, save/load, the --long-range training flags and the
ASE calculator's charges."""

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

import jaxpot
from jaxpot import cli, testing
from jaxpot.registry import from_config
from jaxpot.train.config import TrainConfig, parse_charges

SMALL = {"features": "4x0e+2x1o", "radial_hidden": [8], "readout_hidden": 4, "num_layers": 1,
         "num_bessel": 4}
CUT = 3.5


def _nacl(seed=0, strain=0.03, rattle=0.1):
    rng = np.random.default_rng(seed)
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.set_cell(atoms.cell @ (np.eye(3) + strain * rng.normal(size=(3, 3))), scale_atoms=True)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return atoms


def _cluster(seed=0):
    atoms = _nacl(seed)
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    return atoms


def _hybrid(mode, periodic=True, **kw):
    opts = {"max_lengths": 7.0}
    if not periodic:
        opts = {"periodic": False}
    kwargs = {"short": {"name": "nequip", "kwargs": SMALL}, "charges": mode,
              "species": ["Na", "Cl"], "cutoff": CUT, "coulomb_options": opts, **kw}
    if mode == "fixed":
        kwargs.setdefault("charge_values", {"Na": 1, "Cl": -1})
    return from_config({"name": "hybrid", "kwargs": kwargs})


@pytest.mark.slow  # ~200 s CPU on the loaded 2-core machine (pymatgen at acc_factor 14)
def test_fixed_charges_electrostatics_equal_pymatgen():
    """E_hybrid − E_short is pymatgen's Ewald energy of the formal charges, and the forces
    agree, on a strained, rattled triclinic cell."""
    from pymatgen.analysis.ewald import EwaldSummation
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = _nacl(1)
    pot = _hybrid("fixed", coulomb_options={"accuracy": 1e-10, "max_lengths": 6.5})
    short = from_config(pot.config["kwargs"]["short"])
    system = jaxpot.System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(jax.random.key(0), system)
    short_params = {k: v for k, v in params.items() if k != "long_range"}
    e, f = jaxpot.energy_and_forces(pot)(params, system)
    e_s, f_s = jaxpot.energy_and_forces(short)(short_params, system)
    atoms.set_initial_charges(np.where(atoms.numbers == 11, 1.0, -1.0))
    ref = EwaldSummation(AseAtomsAdaptor.get_structure(atoms), acc_factor=14,
                         compute_forces=True)
    assert abs(ref.total_energy) > 10.0
    np.testing.assert_allclose(e - e_s, ref.total_energy, atol=1e-6)
    np.testing.assert_allclose(f - f_s, ref.forces, atol=1e-6)
    np.testing.assert_allclose(pot.atomic(params, system)["charges"],
                               np.where(atoms.numbers == 11, 1.0, -1.0))


@pytest.mark.parametrize("mode,periodic", [
    ("fixed", True), pytest.param("predicted", True, marks=pytest.mark.slow), ("qeq", False)])
def test_physics_suite(mode, periodic):
    atoms = _nacl(2) if periodic else _cluster(2)
    pot = _hybrid(mode, periodic)
    system = jaxpot.System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(jax.random.key(1), system)
    testing.assert_rotation_reflection_invariance(pot, params, system)
    testing.assert_translation_invariance(pot, params, system)
    testing.assert_permutation_invariance(pot, params, system)
    testing.assert_padding_invariance(pot, params, system)
    out = pot.atomic(params, system)
    np.testing.assert_allclose(jnp.sum(out["energy"]), pot.energy(params, system), rtol=1e-10)
    assert abs(float(jnp.sum(out["charges"]))) < 1e-10
    if mode != "fixed":
        assert float(jnp.max(jnp.abs(out["charges"]))) > 1e-4  # learned, not all zero


def test_qeq_forces_through_the_solve_match_finite_differences():
    atoms = _cluster(3)
    for method in ("exact", "cg"):
        pot = _hybrid("qeq", periodic=False, qeq_method=method, total_charge=1.0)
        system = jaxpot.System.from_ase(atoms, cutoff=pot.cutoff)
        params = pot.init(jax.random.key(2), system)
        testing.assert_forces_match_finite_differences(pot, params, system)
        np.testing.assert_allclose(jnp.sum(pot.atomic(params, system)["charges"]), 1.0,
                                   atol=1e-10)


def test_save_load_round_trip(tmp_path):
    atoms = _nacl(4)
    pot = _hybrid("predicted")
    system = jaxpot.System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(jax.random.key(3), system)
    path = tmp_path / "hybrid.jaxpot"
    jaxpot.save_model(path, pot, params)
    assert path.read_bytes()[:2] != b"\x80\x04"  # not a pickle stream
    loaded, lparams = jaxpot.load_model(path)
    assert loaded.config == pot.config and not loaded.local
    np.testing.assert_allclose(loaded.energy(lparams, system), pot.energy(params, system),
                               rtol=1e-12)


def test_options_are_checked():
    with pytest.raises(ValueError, match="no charge for element"):
        _hybrid("fixed", charge_values={"Na": 1})
    with pytest.raises(ValueError, match="charges must be one of"):
        _hybrid("ewald")
    with pytest.raises(ValueError, match="--charges"):
        TrainConfig(train="x.xyz", long_range="fixed-charges").validate()
    with pytest.raises(ValueError, match="applies only to --long-range fixed-charges"):
        TrainConfig(train="x.xyz", long_range="qeq", charges="Na=1").validate()
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        TrainConfig(train="x.xyz", long_range="fixed-charges", charges="Na=1,Xx=-1").validate()
    with pytest.raises(ValueError, match="not ELEMENT=CHARGE"):
        parse_charges("Na:1")
    with pytest.raises(ValueError, match="--long-range"):
        TrainConfig(train="x.xyz", long_range="ewald").validate()
    cfg = TrainConfig(train="x.xyz", long_range="fixed-charges", charges="Na=1,Cl=-1",
                      model_kwargs={"num_layers": 1}).validate()
    assert cfg.model == "hybrid" and cfg.model_kwargs["charge_values"] == {"Na": 1.0, "Cl": -1.0}
    assert cfg.model_kwargs["short"] == {"name": "nequip", "kwargs": {"num_layers": 1}}


@pytest.fixture(scope="module")
def nacl_files(tmp_path_factory):
    """A tiny NaCl set labelled by ASE's Lennard-Jones (any labels do for a smoke run)."""
    from ase.calculators.lj import LennardJones

    d = tmp_path_factory.mktemp("nacl")
    frames = []
    for seed in range(6):
        atoms = _nacl(seed, strain=0.01, rattle=0.05)
        atoms.calc = LennardJones(sigma=2.5, epsilon=0.05, rc=CUT, smooth=True)
        atoms.get_potential_energy()
        atoms.get_forces()
        frames.append(atoms)
    ase.io.write(d / "train.xyz", frames[:4], format="extxyz")
    ase.io.write(d / "valid.xyz", frames[4:], format="extxyz")
    return d


def test_train_fixed_charges_end_to_end(nacl_files, tmp_path, capsys):
    """``jaxpot train --long-range fixed-charges --charges Na=1,Cl=-1`` writes a model that the
    ASE calculator loads and that reports the charges."""
    out = tmp_path / "run"
    code = cli.main(["train", "--train", str(nacl_files / "train.xyz"), "--valid",
                     str(nacl_files / "valid.xyz"), "--cutoff", str(CUT), "--epochs", "1",
                     "--batch-size", "2", "--model-kwargs", '{"features": "4x0e+2x1o", '
                     '"radial_hidden": [8], "readout_hidden": 4, "num_layers": 1}',
                     "--long-range", "fixed-charges", "--charges", "Na=1,Cl=-1", "--out",
                     str(out), "--dtype", "float64"])
    assert code == 0
    pot, params = jaxpot.load_model(out / "model")
    assert pot.config["name"] == "hybrid" and pot.config["kwargs"]["charges"] == "fixed"
    shift = np.asarray(params["long_range"]["coulomb_shift"])
    assert np.all(shift < -1.0)  # prepare took the mean Madelung energy out
    atoms = ase.io.read(nacl_files / "valid.xyz", 0)
    atoms.calc = jaxpot.ase.Calculator(pot, params)
    atoms.get_potential_energy()
    charges = atoms.calc.get_property("charges", atoms)
    np.testing.assert_array_equal(charges, np.where(atoms.numbers == 11, 1.0, -1.0))


def test_train_refuses_non_neutral_charges(nacl_files, tmp_path, capsys):
    code = cli.main(["train", "--train", str(nacl_files / "train.xyz"), "--valid",
                     str(nacl_files / "valid.xyz"), "--cutoff", str(CUT), "--epochs", "1",
                     "--long-range", "fixed-charges", "--charges", "Na=1,Cl=-2", "--out",
                     str(tmp_path / "bad")])
    assert code == 2
    assert "total charge of -4 e" in capsys.readouterr().err
