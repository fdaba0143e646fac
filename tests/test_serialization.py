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
    # These params are not Lennard-Jones ones: loading checks them against the model ...
    with pytest.raises(ValueError, match="do not fit"):
        jaxpot.load_model(path)
    # ... and without the check every container and dtype comes back exactly.
    _, back = jaxpot.load_model(path, check_params=False)
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


# ---------------------------------------------------------------------------------------------
# Parameter arrays that do not fit the model the config describes
# ---------------------------------------------------------------------------------------------


def _rewrite_params(path, edit):
    """Re-pack a model file with ``edit(params_record)`` applied to its raw params tree."""
    import hashlib

    outer = msgpack.unpackb(path.read_bytes(), raw=False)
    inner = msgpack.unpackb(outer["payload"], raw=False)
    edit(inner["params"])
    outer["payload"] = msgpack.packb(inner, use_bin_type=True)
    outer["sha256"] = hashlib.sha256(outer["payload"]).hexdigest()
    path.write_bytes(msgpack.packb(outer, use_bin_type=True))


def _reshape(record, shape):
    record["shape"] = list(shape)


@pytest.fixture(scope="module")
def nequip_file(tmp_path_factory):
    from jaxpot.models import nequip

    pot = nequip(species=["Cu", "O"], features="4x0e+4x1o", cutoff=3.0, radial_hidden=[8],
                 num_layers=1)
    system = System.from_arrays(np.array([[0.0, 0, 0], [1.8, 0, 0]]), [29, 8], cutoff=3.0)
    params = pot.init(jax.random.key(1), system)
    path = tmp_path_factory.mktemp("nequip") / "nequip.jaxpot"
    jaxpot.save_model(path, pot, params)
    return path, params


def _lj_file(tmp_path):
    pot = lennard_jones(3.4, 0.0104, 8.5)
    path = tmp_path / "lj.jaxpot"
    jaxpot.save_model(path, pot, pot.init(None, None))
    return path


def test_lj_missing_parameter(tmp_path):
    path = _lj_file(tmp_path)
    _rewrite_params(path, lambda p: p.pop("sigma"))
    with pytest.raises(ValueError) as err:
        jaxpot.load_model(path)
    msg = str(err.value)
    assert str(path) in msg and "params['sigma'] is missing" in msg and "shape ()" in msg


def test_lj_misshaped_and_wrong_dtype_and_extra(tmp_path):
    path = _lj_file(tmp_path)
    pot, params = jaxpot.load_model(path)  # the intact file loads
    # A [3] array where a scalar belongs (data and shape consistent, checksum valid).
    jaxpot.save_model(path, pot, {**params, "epsilon": np.full(3, 0.0104)})
    with pytest.raises(ValueError, match=r"params\['epsilon'\] has shape \(3,\), expected \(\)"):
        jaxpot.load_model(path)
    jaxpot.save_model(path, pot, {**params, "sigma": np.array(3, np.int32)})
    with pytest.raises(ValueError, match=r"params\['sigma'\] has dtype int32, expected a float"):
        jaxpot.load_model(path)
    jaxpot.save_model(path, pot, {**params, "rc": np.array(2.0)})
    with pytest.raises(ValueError, match=r"params\['rc'\] is not a parameter of this model"):
        jaxpot.load_model(path)
    # float32 against the float64 a model was saved in is not a mismatch
    jaxpot.save_model(path, pot, jax.tree.map(lambda x: np.asarray(x, np.float32), params))
    assert jaxpot.load_model(path)[0].config == pot.config


def _first_kernel(tree, prefix=()):
    """Key path of the first 2-d array leaf of a nested dict of arrays."""
    for k, v in tree.items():
        if isinstance(v, dict) and "__ndarray__" not in v:
            found = _first_kernel(v, (*prefix, k))
            if found:
                return found
        elif isinstance(v, dict) and len(v["shape"]) == 2:
            return (*prefix, k)
    return None


def _at(tree, keys):
    for k in keys[:-1]:
        tree = tree[k]
    return tree


def test_nequip_intact_loads_and_gives_same_energy(nequip_file):
    path, params = nequip_file
    pot, back = jaxpot.load_model(path)
    system = System.from_arrays(np.array([[0.0, 0, 0], [1.8, 0.2, 0]]), [29, 8], cutoff=3.0)
    e = float(pot.energy(params, system))
    assert e != 0.0 and float(pot.energy(back, system)) == e


@pytest.mark.parametrize("corruption", ["remove", "reshape", "dtype"])
def test_nequip_corrupted_params(nequip_file, tmp_path, corruption):
    src, _ = nequip_file
    path = tmp_path / "bad.jaxpot"
    path.write_bytes(src.read_bytes())
    keys = []

    def edit(params):
        keys[:] = _first_kernel(params["net"], ("net",))
        parent, leaf = _at(params, keys), keys[-1]
        record = parent[leaf]
        if corruption == "remove":
            del parent[leaf]
        elif corruption == "reshape":  # same bytes, transposed shape
            a, b = record["shape"]
            _reshape(record, (b, a) if a != b else (a * b, 1))
        else:
            width = np.dtype(record["__ndarray__"]).itemsize * 8
            record["__ndarray__"] = f"int{width}"  # same byte count as the float it replaces
    _rewrite_params(path, edit)
    with pytest.raises(ValueError) as err:
        jaxpot.load_model(path)
    msg = str(err.value)
    where = "params" + "".join(f"[{k!r}]" for k in keys)
    assert str(path) in msg and "'nequip'" in msg and where in msg, msg
    expected = {"remove": "is missing", "reshape": "has shape", "dtype": "expected a float dtype"}
    assert expected[corruption] in msg, msg


def test_nonfinite_params_named():
    params = {"a": np.ones(3), "b": {"c": np.array([1.0, np.nan]), "i": np.arange(3)},
              "d": [np.array(np.inf, np.float32)]}
    assert serialization.nonfinite_params(params) == ["params['b']['c']", "params['d'][0]"]
    assert serialization.nonfinite_params({"a": np.ones(2)}) == []


# ---------------------------------------------------------------------------------------------
# jaxpot.files: the one place for atomic writes, CSV tables and input/output checks
# ---------------------------------------------------------------------------------------------


def test_write_csv_exact_and_atomic(tmp_path):
    import csv

    from jaxpot import files

    path = tmp_path / "t.csv"
    x = 0.1 + 0.2  # needs all 17 digits to round-trip
    files.write_csv(path, ["step", "e", "note"], [[0, x, None], [10, np.float32(1.5), "a,b"]])
    rows = list(csv.reader(open(path, newline="")))
    assert rows == [["step", "e", "note"], ["0", repr(x), ""], ["10", "1.5", "a,b"]]
    assert float(rows[1][1]) == x
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"row 1 has 2 cells, the header"):
        files.write_csv(path, ["a", "b", "c"], [[1, 2, 3], [1, 2]])
    assert path.read_bytes() == before  # the failed write left the old table
    assert sorted(os.listdir(tmp_path)) == ["t.csv"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        files.write_csv(tmp_path / "new" / "t.csv", ["a"], [[1]])
    files.write_csv(tmp_path / "new" / "t.csv", ["a"], [[1]], make_dirs=True)
    assert (tmp_path / "new" / "t.csv").read_text() == "a\n1\n"


def test_append_csv_row_refuses_other_columns(tmp_path):
    from jaxpot import files

    path = tmp_path / "metrics.csv"
    files.append_csv_row(path, {"epoch": 1, "loss": 0.5, "ignored": 3}, ["epoch", "loss"])
    files.append_csv_row(path, {"epoch": 2}, ["epoch", "loss"])
    assert path.read_text() == "epoch,loss\n1,0.5\n2,\n"
    with pytest.raises(ValueError, match="differs from the columns") as err:
        files.append_csv_row(path, {"epoch": 3}, ["epoch", "lr", "loss"])
    assert str(path) in str(err.value)
    assert path.read_text() == "epoch,loss\n1,0.5\n2,\n"


def test_atomic_write_modes_and_same_file(tmp_path):
    from jaxpot import files

    with pytest.raises(ValueError, match="mode"):
        with files.atomic_write(tmp_path / "x", "a"):
            pass
    files.atomic_write_bytes(tmp_path / "b", b"\x00\x01")
    files.atomic_write_text(tmp_path / "t", "é\n")
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t").read_bytes() == "é\n".encode()
    os.symlink(tmp_path / "t", tmp_path / "link")
    os.link(tmp_path / "b", tmp_path / "hard")
    assert files.same_file(tmp_path / "link", tmp_path / "t")
    assert files.same_file(tmp_path / "hard", tmp_path / "b")
    assert not files.same_file(tmp_path / "t", tmp_path / "b")
    assert files.same_file(tmp_path / "sub" / ".." / "new", tmp_path / "new")  # neither exists
    assert not files.same_file(tmp_path / "new", tmp_path / "new2")


def test_stores_float64_tells_which_models_need_x64(tmp_path):
    import jax.numpy as jnp

    from jaxpot.serialization import stores_float64

    pot = jaxpot.potentials.lennard_jones(3.4, 0.0104, 8.5)
    p64 = {"sigma": np.float64(3.4), "epsilon": np.float64(0.0104)}
    jaxpot.save_model(tmp_path / "f64", pot, p64)
    jaxpot.save_model(tmp_path / "f32", pot, {k: jnp.float32(v) for k, v in p64.items()})
    (tmp_path / "junk").write_bytes(b"not a model")
    assert stores_float64(tmp_path / "f64")
    assert not stores_float64(tmp_path / "f32")
    assert not stores_float64(tmp_path / "junk") and not stores_float64(tmp_path / "missing")
