"""Phonons from the exact supercell Hessian against phonopy's own finite displacements with
ASE's EMT calculator (fcc Cu and hcp Cu, a two-atom basis), and the DOS normalisation."""

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from jaxpot.analysis import phonons
from jaxpot.potentials.emt import emt


def _finite_displacements(unitcell, supercell_matrix):
    from phonopy import Phonopy

    ref = Phonopy(phonons.to_phonopy_atoms(unitcell), supercell_matrix=supercell_matrix)
    ref.generate_displacements(distance=0.01, is_plusminus=True)
    forces = []
    for sc in ref.supercells_with_displacements:
        a = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        a.calc = EMT()
        forces.append(a.get_forces())
    ref.forces = np.array(forces)
    ref.produce_force_constants()
    return ref


@pytest.mark.parametrize("structure,supercell", [
    (bulk("Cu", "fcc", a=3.59), [3, 3, 3]),
    (bulk("Cu", "hcp", a=2.55, c=4.16), [2, 2, 2]),
])
def test_band_structure_equals_phonopy_finite_displacements(structure, supercell):
    pot = emt(["Cu"])
    ph = phonons.phonopy_from_model(pot, pot.init(None, None), structure, supercell)
    bs = phonons.band_structure(ph, structure, npoints=30)
    ref = _finite_displacements(structure, supercell)
    np.testing.assert_allclose(ph.force_constants, ref.force_constants, atol=5e-3)
    ref.run_qpoints(bs["qpoints"])
    f_ref = np.asarray(ref.qpoints.frequencies)
    f = bs["frequencies"]
    assert f.shape == (30, 3 * len(structure))
    assert f.max() > 5.0  # THz; Cu's maximum is ~7-8 THz
    big = np.abs(f_ref) > 0.5  # away from the acoustic zero at Γ
    assert big.sum() > 0.9 * f.size
    np.testing.assert_allclose(f[big], f_ref[big], rtol=2e-3)  # acceptance: 0.5 %
    assert np.abs(f[0, :3]).max() < 1e-3  # acoustic sum rule at Γ, exactly from the Hessian
    np.testing.assert_allclose(bs["frequencies_cm"], f * phonons.THZ_TO_CM)
    if len(structure) == 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = phonons.total_dos(ph, mesh=(8, 8, 8), sigma=0.1)
        integral = np.trapezoid(d["dos"], d["frequencies"])
        assert integral == pytest.approx(3.0, rel=2e-2)  # 3 branches per atom
