"""NEB of an adatom hopping between hollow sites of a Morse fcc(100) slab, against ASE's NEB
(improved tangent, climbing image) with the same potential (jaxpot's ASE calculator), the same
images and the same spring constant."""

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc100
from ase.constraints import FixAtoms
from ase.mep import NEB
from ase.optimize import BFGS, FIRE

from jaxpot import System, potentials
from jaxpot.analysis import neb
from jaxpot.ase import Calculator

POT = potentials.morse(D=0.3429, alpha=1.3588, r0=2.866, cutoff=4.5)  # Girifalco–Weizer Cu


def _endpoints():
    slab = fcc100("Cu", size=(2, 2, 2), a=3.61, vacuum=6.0)
    add_adsorbate(slab, "Cu", 1.7, "hollow")
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 2]))
    initial = slab.copy()
    final = slab.copy()
    final.positions[-1] += [slab.cell[0, 0] / 2, 0.0, 0.0]  # the next hollow site
    for atoms in (initial, final):
        atoms.calc = Calculator(POT, POT.init(None, None))
        BFGS(atoms, logfile=None).run(fmax=1e-4)
    return initial, final


@pytest.fixture(scope="module")
def bands():
    initial, final = _endpoints()
    n_images = 5
    images = [initial] + [initial.copy() for _ in range(n_images - 2)] + [final]
    calc = Calculator(POT, POT.init(None, None))
    for im in images[1:-1]:
        im.set_constraint(FixAtoms(indices=[a.index for a in im if a.tag == 2]))
    band = NEB(images, k=0.1, climb=True, method="improvedtangent",
               allow_shared_calculator=True)
    band.interpolate()
    start = np.stack([im.positions.copy() for im in images])
    for im in images:
        im.calc = calc
    FIRE(band, logfile=None).run(fmax=1e-3, steps=3000)
    e_ase = np.array([im.get_potential_energy() for im in images])
    x_ase = np.stack([im.positions for im in images])
    template = System.from_ase(initial)
    fixed = np.array([a.tag == 2 for a in initial])
    ours = neb.neb(POT, POT.init(None, template), start, template, k_spring=0.1, climb=True,
                   fmax=1e-3, fixed=fixed, max_steps=4000)
    return ours, e_ase, x_ase, start


def test_neb_barrier_and_path_equal_ase(bands):
    ours, e_ase, x_ase, start = bands
    assert ours.converged
    assert ours.barrier > 0.02  # a real barrier, not a flat path
    assert ours.barrier == pytest.approx(e_ase.max() - e_ase[0], abs=1e-3)
    np.testing.assert_allclose(ours.energies, e_ase, atol=1e-3)
    np.testing.assert_allclose(ours.positions, x_ase, atol=0.02)
    assert np.abs(ours.positions - start).max() > 0.05  # the band did relax
    assert ours.climbing_image == int(np.argmax(e_ase))


def test_interpolate_and_bad_input():
    initial, final = (System.from_ase(a) for a in _endpoints())
    path = neb.interpolate(initial, final, 4)
    assert path.shape == (4, len(initial.positions), 3)
    np.testing.assert_allclose(path[0], initial.positions)
    np.testing.assert_allclose(path[-1], final.positions)
    with pytest.raises(ValueError, match="n_images ≥ 3"):
        neb.neb(POT, {}, path[:2], initial)
