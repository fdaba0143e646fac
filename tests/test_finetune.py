"""Fine-tuning: ``--init-from`` a saved model, ``--freeze`` parameter groups, new elements."""

from __future__ import annotations

import json

import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from jaxpot import cli
from jaxpot.serialization import load_model, read_model_info
from jaxpot.train.finetune import frozen_paths

KW = json.dumps({"features": "4x0e+4x1o", "radial_hidden": [8], "num_layers": 1})


def _frames(n, ag_fraction, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Cu", cubic=True, a=3.7).repeat(2)
        sym = np.array(a.get_chemical_symbols())
        sym[rng.random(len(a)) < ag_fraction] = "Ag"
        a.set_chemical_symbols(sym)
        a.rattle(0.06, seed=seed + i)
        a.calc = EMT()
        a.get_potential_energy()
        a.get_stress()
        out.append(a)
    return out


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    d = tmp_path_factory.mktemp("parent")
    ase.io.write(d / "cu.xyz", _frames(8, 0.0, 0))
    assert cli.main(["train", "--train", str(d / "cu.xyz"), "--model", "nequip",
                     "--model-kwargs", KW, "--cutoff", "3.0", "--epochs", "2",
                     "--out", str(d / "run")]) == 0
    return d / "run" / "model"


def test_new_element_extends_the_parent_and_freezing_holds(parent, tmp_path):
    ase.io.write(tmp_path / "cuag.xyz", _frames(8, 0.3, 100))
    out = tmp_path / "child"
    assert cli.main(["train", "--train", str(tmp_path / "cuag.xyz"), "--init-from", str(parent),
                     "--freeze", "net/layer_0/.*", "--cutoff", "3.0", "--epochs", "2",
                     "--out", str(out)]) == 0
    p_pot, p = load_model(parent)
    c_pot, c = load_model(out / "model")
    assert c_pot.config["kwargs"]["species"] == ["Cu", "Ag"]
    meta = read_model_info(out / "model")["metadata"]
    assert meta["parent_model"]["path"] == str(parent) and len(meta["parent_model"]["sha256"]) == 64
    emb_p, emb_c = p["net"]["embedding"]["embedding"], c["net"]["embedding"]["embedding"]
    assert emb_c.shape[0] == emb_p.shape[0] + 1
    # frozen: the first layer keeps the parent's values (old species rows where they grew)
    for a, b in zip(jax.tree.leaves(p["net"]["layer_0"]), jax.tree.leaves(c["net"]["layer_0"]),
                    strict=True):
        np.testing.assert_allclose(np.asarray(b)[tuple(slice(0, s) for s in a.shape)], a,
                                   rtol=1e-6, atol=1e-7)  # EMA of a constant: rounding only
    # not frozen: the readout trained
    moved = [float(np.max(np.abs(np.asarray(b) - np.asarray(a))))
             for a, b in zip(jax.tree.leaves(p["net"]["readout_out"]),
                             jax.tree.leaves(c["net"]["readout_out"]), strict=True)]
    assert max(moved) > 1e-4
    assert np.isfinite(np.asarray(c["atomic_shift"])).all()
    assert float(c["atomic_shift"][1]) != float(c["atomic_shift"][0])  # Ag got its own ref


def test_init_from_refuses_to_overwrite_its_parent_and_bad_patterns(parent, tmp_path, capsys):
    ase.io.write(tmp_path / "cu.xyz", _frames(4, 0.0, 7))
    assert cli.main(["train", "--train", str(tmp_path / "cu.xyz"), "--init-from", str(parent),
                     "--out", str(parent.parent), "--epochs", "1"]) == 2
    assert "outputs never overwrite inputs" in capsys.readouterr().err
    assert cli.main(["train", "--train", str(tmp_path / "cu.xyz"), "--init-from",
                     str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "no such model file" in capsys.readouterr().err
    _, params = load_model(parent)
    with pytest.raises(ValueError, match="matches no parameter"):
        frozen_paths(params, ["net/nothing_.*"])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        frozen_paths(params, ["net/("])
    assert ("atomic_scale",) in frozen_paths(params, ["atomic_.*"])
