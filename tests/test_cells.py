"""Lattice sums sized for the cells a model meets (jaxpot.models.cells): a hybrid made for small
cells gives NaN on a supercell by itself, and a finite energy equal to a model built wide from
the start once fit_cells (or jaxpot eval, or the ASE calculator) widens it; parameters carry
over and a cell that fits leaves the potential untouched."""

import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk

import jaxpot
from jaxpot.models.cells import cell_capacity, fit_cells, longest_vectors
from jaxpot.potentials import lennard_jones
from jaxpot.registry import from_config

SMALL = {"features": "4x0e+2x1o", "radial_hidden": [8], "readout_hidden": 4, "num_layers": 1,
         "num_bessel": 4}


def _hybrid(max_lengths):
    return from_config({"name": "hybrid", "kwargs": {
        "short": {"name": "nequip", "kwargs": SMALL}, "charges": "fixed",
        "charge_values": {"Na": 1, "Cl": -1}, "species": ["Na", "Cl"], "cutoff": 3.5,
        "coulomb_options": {"max_lengths": max_lengths}}})


def _nacl(reps):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(reps)
    atoms.rattle(0.05, seed=1)
    return atoms


def test_widened_hybrid_matches_one_built_wide():
    small = _hybrid(7.0)
    big = _nacl(2)  # 11.3 Å vectors: longer than the 7 Å the lattice sum serves
    system = jaxpot.System.from_ase(big, cutoff=small.cutoff)
    params = small.init(jax.random.key(0), jaxpot.System.from_ase(_nacl(1), cutoff=3.5))
    assert np.isnan(float(small.energy(params, system)))  # never silently wrong

    wide = fit_cells(small, [big.cell.array])
    assert wide is not small
    np.testing.assert_allclose(cell_capacity(wide), [12.0, 12.0, 12.0])
    assert cell_capacity(small).tolist() == [7.0, 7.0, 7.0]  # the original config is untouched
    e, f = jaxpot.energy_and_forces(wide)(params, system)
    e_ref, f_ref = jaxpot.energy_and_forces(_hybrid(12.0))(params, system)
    assert np.isfinite(float(e)) and abs(float(e)) > 10.0  # the Madelung part is there
    np.testing.assert_allclose(e, e_ref, rtol=1e-6)
    np.testing.assert_allclose(f, f_ref, atol=1e-5)

    small_cell = jaxpot.System.from_ase(_nacl(1), cutoff=3.5)  # same parameters, same answer
    np.testing.assert_allclose(wide.energy(params, small_cell), small.energy(params, small_cell),
                               rtol=1e-6)


def test_fitting_cells_and_models_without_lattice_sums_are_left_alone():
    pot = _hybrid(12.0)
    assert fit_cells(pot, [_nacl(2).cell.array]) is pot
    assert fit_cells(pot, []) is pot
    lj = lennard_jones(sigma=2.0, epsilon=0.1, cutoff=5.0)
    assert cell_capacity(lj) is None and fit_cells(lj, [np.eye(3) * 100]) is lj
    np.testing.assert_allclose(longest_vectors([np.diag([3.0, 4.0, 5.0]), np.diag([6.0, 1, 1]),
                                                np.zeros((3, 3))]), [6.0, 4.0, 5.0])
    assert longest_vectors([np.zeros((3, 3))]) is None


def test_eval_and_calculator_widen_for_a_supercell(tmp_path):
    pot = _hybrid(7.0)
    params = pot.init(jax.random.key(0), jaxpot.System.from_ase(_nacl(1), cutoff=3.5))
    jaxpot.save_model(tmp_path / "model", pot, params)
    big = _nacl(2)
    big.calc = jaxpot.ase.Calculator.from_file(tmp_path / "model")
    e = big.get_potential_energy()
    assert np.isfinite(e) and np.all(np.isfinite(big.get_forces()))
    ref = jaxpot.energy_and_forces(_hybrid(12.0))(
        params, jaxpot.System.from_ase(big, cutoff=3.5))[0]
    np.testing.assert_allclose(e, float(ref), rtol=1e-6)

    from ase.calculators.singlepoint import SinglePointCalculator

    labelled = big.copy()
    labelled.calc = SinglePointCalculator(labelled, energy=e + 0.5, forces=big.get_forces())
    ase.io.write(tmp_path / "big.xyz", labelled, format="extxyz")
    from jaxpot.train.commands import evaluate_files

    m = evaluate_files(str(tmp_path / "model"), str(tmp_path / "big.xyz"), stress_key=None)
    assert m["energy_mae_mev_per_atom"] == pytest.approx(500.0 / len(big), rel=1e-3)
    assert m["force_mae_mev_per_a"] < 1e-2


def test_property_scan_sizes_the_lattice_sum_for_its_supercell():
    """The phonon supercell (2 × 2 × 2 of a 5.6 Å cell) is longer than the 7 Å lattice sum."""
    from jaxpot.analysis.commands import compute_properties

    pot = _hybrid(7.0)
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    params = pot.init(jax.random.key(0), jaxpot.System.from_ase(atoms, cutoff=3.5))
    big = jaxpot.System.from_ase(atoms.repeat(2), cutoff=3.5)
    assert np.isnan(float(pot.energy(params, big)))  # what the scan met before
    with jax.enable_x64(True):
        out = compute_properties(pot, params, atoms, ["phonons"], supercell=2)
    freqs = np.concatenate([np.ravel(v) for v in
                            out["phonons"]["frequencies_at_special_points_THz"].values()])
    assert freqs.size > 0 and np.all(np.isfinite(freqs))
