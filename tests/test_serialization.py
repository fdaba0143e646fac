"""Model files: round trips, corrupt/truncated/foreign files, atomic writes."""

import json
import os

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from ase.build import bulk

import jaxpot
from jaxpot import serialization
from jaxpot.potentials import lennard_jones, morse
from jaxpot.system import System


def _system():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    atoms.rattle(0.05, seed=3)
    return System.from_ase(atoms, cutoff=8.5)


def _model():
    pot = jaxpot.sum_potentials(lennard_jones(3.4, 0.0104, 8.5), morse(0.01, 1.3, 3.8, 7.0))
    params = pot.init(jax.random.key(0), None)
    return pot, params


def test_round_trip_identical_energy(tmp_path):
    pot, params = _model()
    path = tmp_path / "model.jaxpot"
    jaxpot.save_model(path, pot, params,
                      metadata={"note": "test", "rmse": np.float32(0.5), "v": jnp.ones(2)})
    pot2, params2 = jaxpot.load_model(path)
    assert pot2.config == pot.config
    assert pot2.cutoff == pot.cutoff
    system = _system()
    e1 = pot.energy(params, system)
    e2 = pot2.energy(params2, system)
    assert abs(float(e1)) > 0
    assert float(e1) == float(e2)  # bit-identical
    info = jaxpot.read_model_info(path)
    assert info["metadata"] == {"note": "test", "rmse": 0.5, "v": [1.0, 1.0]}
    assert info["format"] == serialization.FORMAT
    assert info["jaxpot_version"] == jaxpot.__version__
    assert info["params_shapes"]["term0"]["sigma"] == "float64[]"


def test_dtypes_shapes_and_containers_exact(tmp_path):
    params = {
        "dense": {"kernel": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 7,
                  "bias": np.linspace(-1, 1, 4)},
        "ints": np.array([[1, -2], [3, 4]], np.int32),
        "mask": np.array([True, False]),
        "bf16": jnp.ones((2, 3), jnp.bfloat16) * 1.5,
        "empty": np.zeros((0, 5), np.float64),
        "scalar": jnp.asarray(2.5),
        "layers": [np.ones(2, np.float16), np.full(3, 7, np.uint8)],
        "pair": (np.array(1.0), None),
        "python": 3,
    }
    path = tmp_path / "m.jaxpot"
    jaxpot.save_model(path, lennard_jones(1.0, 1.0, 2.5), params)
    _, back = jaxpot.load_model(path)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        if isinstance(a, int):
            assert a == b
            continue
        assert np.asarray(a).dtype == np.asarray(b).dtype
        assert np.asarray(a).shape == np.asarray(b).shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_refuses_unstorable_params(tmp_path):
    pot = lennard_jones(1.0, 1.0, 2.5)
    with pytest.raises(ValueError, match="cannot store"):
        jaxpot.save_model(tmp_path / "x", pot, {"f": lambda x: x})
    with pytest.raises(ValueError, match="dtype"):
        jaxpot.save_model(tmp_path / "x", pot, {"o": np.array(["a"], object)})
    assert not (tmp_path / "x").exists()


def test_file_has_no_pickle_and_json_config(tmp_path):
    pot, params = _model()
    path = tmp_path / "m.jaxpot"
    jaxpot.save_model(path, pot, params)
    outer = msgpack.unpackb(path.read_bytes(), raw=False)
    inner = msgpack.unpackb(outer["payload"], raw=False)
    assert json.loads(inner["config"]) == pot.config
    assert b"\x80\x04" not in path.read_bytes()[:2]  # not a pickle stream


@pytest.fixture
def saved(tmp_path):
    pot, params = _model()
    path = tmp_path / "model.jaxpot"
    jaxpot.save_model(path, pot, params)
    return path


def test_corrupt_file(saved):
    data = bytearray(saved.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the array data
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt") as err:
        jaxpot.load_model(saved)
    assert str(saved) in str(err.value)


@pytest.mark.parametrize("keep", [0.0, 0.05, 0.5, 0.99])
def test_truncated_file(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError) as err:
        jaxpot.load_model(saved)
    assert str(saved) in str(err.value)


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model\n")
    other = tmp_path / "other.msgpack"
    other.write_bytes(msgpack.packb({"weights": [1, 2, 3], "format": "flax"}))
    scalar = tmp_path / "scalar.msgpack"
    scalar.write_bytes(msgpack.packb(42))
    random = tmp_path / "random.bin"
    random.write_bytes(np.random.default_rng(0).bytes(1000))
    npz = tmp_path / "w.npz"
    np.savez(npz, a=np.ones(3))
    for path in (text, other, scalar, random, npz):
        with pytest.raises(ValueError, match="not a jaxpot model file") as err:
            jaxpot.load_model(path)
        assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        jaxpot.load_model(tmp_path / "nope.jaxpot")


def test_newer_version_and_unknown_potential(tmp_path, saved):
    outer = msgpack.unpackb(saved.read_bytes(), raw=False)
    outer["format_version"] = serialization.VERSION + 1
    newer = tmp_path / "newer.jaxpot"
    newer.write_bytes(msgpack.packb(outer, use_bin_type=True))
    with pytest.raises(ValueError, match="newer"):
        jaxpot.load_model(newer)

    class Fake:
        config = {"name": "no_such_potential_family", "kwargs": {}}

    path = tmp_path / "unknown.jaxpot"
    jaxpot.save_model(path, Fake(), {"w": np.ones(2)})
    with pytest.raises(ValueError, match="no_such_potential_family") as err:
        jaxpot.load_model(path)
    assert str(path) in str(err.value)


def test_registered_family_loads_through_from_config(tmp_path):
    from jaxpot.potential import Potential, register

    @register("test_serialization_harmonic")
    def harmonic(k: float):
        def init(key, system):
            return {"k": jnp.asarray(k)}

        def energy(params, system):
            return params["k"] * jnp.sum(system.positions**2)

        return Potential(init, energy, 1.0,
                         {"name": "test_serialization_harmonic", "kwargs": {"k": k}})

    pot = harmonic(2.0)
    path = tmp_path / "h.jaxpot"
    jaxpot.save_model(path, pot, {"k": jnp.asarray(3.0)})
    pot2, params2 = jaxpot.load_model(path)
    system = _system()
    assert float(pot2.energy(params2, system)) == float(pot.energy({"k": 3.0}, system))


def test_write_is_atomic(saved, monkeypatch):
    before = saved.read_bytes()
    pot = lennard_jones(1.0, 2.0, 3.0)
    params = pot.init(None, None)

    # Fail after part of the new file was written.
    real_fdopen = os.fdopen

    class Flaky:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(data[: len(data) // 2])
            raise OSError("disk full (simulated)")

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    monkeypatch.setattr(serialization.os, "fdopen", lambda *a, **k: Flaky(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="disk full"):
        jaxpot.save_model(saved, pot, params)
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]  # no temporary file left behind

    # Fail at the rename.
    def boom(*a, **k):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(serialization.os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        jaxpot.save_model(saved, pot, params)
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]
    jaxpot.load_model(saved)

    # And a successful overwrite really replaces the content.
    jaxpot.save_model(saved, pot, params)
    assert jaxpot.load_model(saved)[0].config == pot.config
