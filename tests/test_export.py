"""``jaxpot export``: one bundle reproduces the model at two system sizes, in a fresh process
where jaxpot, flax and e3nn-jax cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from ase.build import bulk

from jaxpot import System, cli
from jaxpot.models import nequip
from jaxpot.potential import energy_forces_stress
from jaxpot.serialization import save_model

BUNDLE_MODULE = Path(cli.__file__).resolve().parent / "parallel" / "bundle.py"

# Runs in a fresh interpreter: blocks jaxpot, flax and e3nn_jax, loads the bundle module by
# path, evaluates every saved case and writes the results.
FRESH = r'''
import importlib.abc, importlib.util, json, sys
import numpy as np

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jaxpot", "flax", "e3nn_jax"):
            raise ImportError(f"{name} is blocked in this process")
        return None

sys.meta_path.insert(0, Block())
import jax
jax.config.update("jax_enable_x64", True)
spec = importlib.util.spec_from_file_location("bundle", sys.argv[1])
bundle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bundle)
fn, header = bundle.load_bundle(sys.argv[2])
out = {"header_species": header["species"], "modules": sorted(
    m for m in sys.modules if m.split(".")[0] in ("jaxpot", "flax", "e3nn_jax"))}
with np.load(sys.argv[3]) as cases:
    for k in range(int(cases["n"])):
        args = [cases[f"{k}_{name}"] for name in
                ("positions", "species", "cell", "pbc", "senders", "receivers", "shifts")]
        e, f, v = fn(*args)
        out[str(k)] = {"energy": float(e), "forces": np.asarray(f).tolist(),
                       "virial": np.asarray(v).tolist()}
json.dump(out, open(sys.argv[4], "w"))
'''


def _system(repeat, cutoff, seed):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.08, seed=seed)
    return System.from_ase(atoms, cutoff=cutoff)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    pot = nequip(species=["Cu"], features="4x0e+4x1o", cutoff=3.5, radial_hidden=[8],
                 num_layers=2)
    params = pot.init(jax.random.key(3), _system((1, 1, 1), pot.cutoff, 0))
    save_model(tmp / "model.jaxpot", pot, params)
    assert cli.main(["export", str(tmp / "model.jaxpot"), str(tmp / "bundle"),
                     "--dtype", "float64"]) == 0
    return tmp, pot, params


def test_bundle_reproduces_model_in_fresh_process_at_two_sizes(exported):
    tmp, pot, params = exported
    cases, expected = {}, []
    # the same file at 32 and 108 atoms (and different edge counts)
    for k, (rep, seed) in enumerate((((2, 2, 2), 1), ((3, 3, 3), 2))):
        s = _system(rep, pot.cutoff, seed)
        m = np.asarray(s.edge_mask)
        arrays = {"positions": s.positions, "species": s.species, "cell": s.cell, "pbc": s.pbc,
                  "senders": s.senders[m], "receivers": s.receivers[m], "shifts": s.shifts[m]}
        cases.update({f"{k}_{name}": np.asarray(x) for name, x in arrays.items()})
        e, f, stress = energy_forces_stress(pot)(params, s)
        expected.append((float(e), np.asarray(f), -np.asarray(stress) * float(s.volume)))
    np.savez(tmp / "cases.npz", n=len(expected), **cases)
    out_path = tmp / "fresh.json"
    proc = subprocess.run([sys.executable, "-c", FRESH, str(BUNDLE_MODULE), str(tmp / "bundle"),
                           str(tmp / "cases.npz"), str(out_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(out_path.read_text())
    assert out["modules"] == []  # nothing of jaxpot, flax or e3nn-jax was loaded
    assert out["header_species"] == [29]
    for k, (e, f, virial) in enumerate(expected):
        assert np.abs(f).max() > 1e-3  # rattled: forces are not trivially zero
        assert out[str(k)]["energy"] == pytest.approx(e, abs=1e-12 * max(1.0, abs(e)))
        np.testing.assert_allclose(out[str(k)]["forces"], f, rtol=0, atol=1e-12)
        np.testing.assert_allclose(out[str(k)]["virial"], virial, rtol=0, atol=1e-11)


def test_bundle_header_and_refusals(exported, tmp_path):
    tmp, pot, _ = exported
    header = json.loads((tmp / "bundle" / "header.json").read_text())
    assert header["cutoff_angstrom"] == pytest.approx(3.5)
    assert header["message_passing_layers"] == 2
    assert header["ghost_shell_angstrom"] == pytest.approx(7.0)
    assert header["dtype"] == "float64" and header["model_config"]["name"] == "nequip"
    # never overwrites; a missing model is bad input (exit 2)
    assert cli.main(["export", str(tmp / "model.jaxpot"), str(tmp / "bundle")]) == 2
    assert cli.main(["export", str(tmp_path / "missing.jaxpot"), str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()
