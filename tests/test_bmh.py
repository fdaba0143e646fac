"""Born–Mayer–Huggins pair potential (jaxpot.potentials.bmh) against the formula of LAMMPS'
``pair_style born``, finite differences, the physics suite and its per-atom energies."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from jaxpot import System, testing
from jaxpot.potential import from_config
from jaxpot.potentials.bmh import born_mayer_huggins

PAIRS = {"Na-Na": [0.2637037584, 0.317, 2.3400, 1.0485735245, -0.4993207260],
         "Na-Cl": [0.2109630067, 0.317, 2.7550, 6.9904901634, -8.6756976135],
         "Cl-Cl": [0.1582222550, 0.317, 3.1700, 72.4015052637, -145.4271614349]}


def _phi(r, a, rho, sigma, c, d):
    """LAMMPS' born: A exp((σ−r)/ρ) − C/r⁶ + D/r⁸ (written out here independently)."""
    return a * np.exp((sigma - r) / rho) - c * r ** -6 + d * r ** -8


def _reference_energy(atoms, cutoff, shift):
    """Plain double loop over atoms and periodic images (NumPy)."""
    sym = atoms.get_chemical_symbols()
    cell = np.asarray(atoms.cell)
    images = [np.array(s) @ cell for s in itertools.product(range(-3, 4), repeat=3)]
    e = 0.0
    for i, j in itertools.product(range(len(atoms)), repeat=2):
        coeffs = PAIRS.get(f"{sym[i]}-{sym[j]}") or PAIRS[f"{sym[j]}-{sym[i]}"]
        for t in images:
            r = np.linalg.norm(atoms.positions[j] + t - atoms.positions[i])
            if 1e-8 < r < cutoff:
                e += 0.5 * (_phi(r, *coeffs) - (_phi(cutoff, *coeffs) if shift else 0.0))
    return e


@pytest.mark.parametrize("shift", [False, True])
def test_energy_matches_the_lammps_formula(shift):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.1, seed=0)
    pot = born_mayer_huggins(PAIRS, 7.0, shift=shift)
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(jax.random.key(0), system)
    ref = _reference_energy(atoms, 7.0, shift)
    assert abs(ref) > 0.1
    assert abs(float(pot.energy(params, system)) - ref) < 1e-10 * abs(ref)
    per_atom = np.asarray(pot.atomic(params, system)["energy"])
    assert abs(per_atom.sum() - ref) < 1e-10 * abs(ref)


def test_forces_stress_and_physics_suite():
    atoms = bulk("NaCl", "rocksalt", a=5.5, cubic=True)
    atoms.set_cell(atoms.cell @ (np.eye(3) + [[0.02, 0.03, 0], [0, -0.01, 0.04], [0, 0, 0]]),
                   scale_atoms=True)
    atoms.rattle(0.15, seed=1)
    pot = born_mayer_huggins(PAIRS, 5.0, shift=True)
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(jax.random.key(0), system)
    testing.assert_forces_match_finite_differences(pot, params, system)
    testing.assert_stress_matches_finite_differences(pot, params, system)
    testing.assert_rotation_reflection_invariance(pot, params, system)
    testing.assert_permutation_invariance(pot, params, system)
    testing.assert_padding_invariance(pot, params, system)


def test_dimer_and_config_round_trip():
    pot = born_mayer_huggins(PAIRS, 9.0)
    atoms = Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]])
    system = System.from_ase(atoms, cutoff=9.0)
    params = pot.init(jax.random.key(0), system)
    assert abs(float(pot.energy(params, system)) - _phi(2.8, *PAIRS["Na-Cl"])) < 1e-12
    again = from_config(pot.config)
    assert again.config == pot.config
    # the coefficients are parameters: the energy is differentiable with respect to them
    g = jax.grad(lambda p: pot.energy(p, system))(params)
    assert float(g["A"][0, 1]) != 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="no coefficients"):
        born_mayer_huggins({"Na-Cl": PAIRS["Na-Cl"]}, 9.0)
    with pytest.raises(ValueError, match="five finite numbers"):
        born_mayer_huggins({"Na-Na": [1.0, 0.3]}, 9.0)
    with pytest.raises(ValueError, match="rho"):
        born_mayer_huggins({"Na-Na": [1.0, 0.0, 1.0, 0.0, 0.0]}, 9.0)
    with pytest.raises(ValueError, match="El1-El2"):
        born_mayer_huggins({"Na-Xx": PAIRS["Na-Cl"]}, 9.0)
