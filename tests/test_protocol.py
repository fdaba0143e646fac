"""The model protocol (per-atom outputs, species, locality) and the family registry."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from ase.build import bulk, molecule

import jaxpot
from jaxpot import models, potentials, registry
from jaxpot.potential import Potential, atomic_outputs, check_species


def _cu(cutoff):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    return jaxpot.System.from_ase(atoms, cutoff=cutoff)


def _small_nequip(**kw):
    return models.nequip(species=["Cu"], features="4x0e+4x1o", cutoff=3.0, radial_hidden=[8],
                         **kw)


@pytest.mark.parametrize("make", [
    lambda: potentials.lennard_jones(2.3, 0.4, 3.0),
    lambda: potentials.morse(0.3, 1.4, 2.5, 3.0),
    _small_nequip,
    lambda: models.mace(species=["Cu"], features="4x0e+4x1o", cutoff=3.0, radial_hidden=[8]),
    lambda: jaxpot.sum_potentials(potentials.lennard_jones(2.3, 0.4, 3.0), _small_nequip()),
    lambda: potentials.with_element_refs(_small_nequip(), {29: -3.5}, scale=2.0),
], ids=["lj", "morse", "nequip", "mace", "sum", "offsets"])
def test_atomic_energies_sum_to_the_energy_and_vanish_on_padding(make):
    pot = make()
    assert "energy" in pot.outputs and pot.local
    system = _cu(pot.cutoff)
    params = pot.init(jax.random.key(0), system)
    e_atoms = np.asarray(atomic_outputs(pot)(params, system)["energy"])
    total = float(pot.energy(params, system))
    assert abs(total) > 1e-3 and np.ptp(e_atoms) > 1e-6  # non-trivial: rattled atoms differ
    np.testing.assert_allclose(e_atoms.sum(), total, rtol=1e-5, atol=1e-5)
    padded = system.pad(system.n_atoms + 3, system.n_edges + 17)
    e_pad = np.asarray(models.atomic_energies(pot)(params, padded))
    np.testing.assert_allclose(e_pad[:system.n_atoms], e_atoms, rtol=1e-5, atol=1e-6)
    assert np.all(e_pad[system.n_atoms:] == 0.0)


def test_protocol_survives_a_model_file(tmp_path):
    pot = potentials.with_element_refs(_small_nequip(), {29: -3.5})
    system = _cu(pot.cutoff)
    params = pot.init(jax.random.key(0), system)
    jaxpot.save_model(tmp_path / "m", pot, params)
    pot2, params2 = jaxpot.load_model(tmp_path / "m")
    assert pot2.species == (29,) and pot2.outputs == ("energy", "features")
    np.testing.assert_allclose(models.atomic_energies(pot2)(params2, system),
                               models.atomic_energies(pot)(params, system), rtol=1e-6)


def test_check_species_names_the_element_atom_and_structure():
    pot = _small_nequip()
    assert pot.species == (29,)
    check_species(pot, [29, 29])  # known: passes
    with pytest.raises(ValueError, match=r"water.xyz frame 2: element\(s\) H \(first at atom 1\), "
                                         r"O \(first at atom 0\) unknown.*knows only Cu"):
        check_species(pot, molecule("H2O").numbers, where="water.xyz frame 2")
    check_species(potentials.lennard_jones(3.4, 0.01, 8.0), [1, 92])  # any element: no check


def test_sum_declares_what_all_terms_offer():
    lj = potentials.lennard_jones(2.3, 0.4, 3.0)
    nonlocal_term = lj._replace(local=False, atomic=None, outputs=())
    s = jaxpot.sum_potentials(lj, _small_nequip())
    assert s.local and s.species == (29,) and s.outputs == ("energy", "features")
    s2 = jaxpot.sum_potentials(lj, nonlocal_term)
    assert not s2.local and s2.atomic is None and s2.outputs == ()
    with pytest.raises(ValueError, match="no per-atom outputs"):
        atomic_outputs(s2)
    with pytest.raises(ValueError, match="declares no per-atom energies"):
        models.atomic_energies(s2)


def test_potential_keeps_positional_construction():
    pot = Potential(lambda k, s: {}, lambda p, s: 0.0, 2.0, {"name": "x", "kwargs": {}})
    assert pot.atomic is None and pot.local and pot.species is None and pot.fit is None


def test_registry_finds_plugins_by_entry_point(monkeypatch, tmp_path):
    (tmp_path / "jaxpot_test_plugin.py").write_text(
        "from jaxpot.registry import register\n"
        "from jaxpot.potentials import lennard_jones\n"
        "@register('plugin_lj')\n"
        "def plugin_lj(cutoff=3.0):\n"
        "    return lennard_jones(2.0, 0.1, cutoff)._replace(\n"
        "        config={'name': 'plugin_lj', 'kwargs': {'cutoff': cutoff}})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points", lambda: {"plugin_lj": "jaxpot_test_plugin"})
    assert "plugin_lj" in registry.registered()
    pot = jaxpot.from_config({"name": "plugin_lj", "kwargs": {"cutoff": 2.5}})
    assert pot.cutoff == 2.5


@pytest.mark.parametrize("config, message", [
    ({"name": "no_such_model"}, "unknown potential 'no_such_model'; known: .*nequip"),
    ({"kwargs": {}}, "must be a dict with a 'name'"),
    ("nequip", "must be a dict with a 'name'"),
    ({"name": "nequip", "kwargs": [1, 2]}, "'kwargs' must be a dict"),
    ({"name": "lennard_jones", "kwargs": {"sigma": 1.0}}, "lennard_jones.*bad kwargs.*missing"),
])
def test_from_config_rejects_bad_configs(config, message):
    with pytest.raises((ValueError, TypeError), match=message):
        jaxpot.from_config(config)


def test_families_declare_the_options_training_fills_from_data():
    assert registry.data_options("nequip") == ("cutoff", "avg_num_neighbors", "species")
    assert registry.data_options("gap") == ("cutoff", "avg_num_neighbors", "species")
    assert registry.data_options("morse") == ("cutoff",)
    assert registry.data_options("sum") == ()
    with pytest.raises(ValueError, match="unknown data options \\['temperature'\\]"):
        registry.register("bad_family", data_options=("temperature",))
    from jaxpot.train.model_setup import build_model

    pot = build_model("morse", {"D": 0.3, "alpha": 1.4, "r0": 2.5}, cutoff=3.7)
    assert pot.cutoff == 3.7  # filled from the run's --cutoff
    pot = build_model("morse", {"D": 0.3, "alpha": 1.4, "r0": 2.5, "cutoff": 3.0}, cutoff=3.7)
    assert pot.cutoff == 3.0  # the user's own value wins
