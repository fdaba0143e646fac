"""Cell relaxation against ASE's FIRE + FrechetCellFilter (same potential physics both sides)."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from jaxpot import System, potentials, units
from jaxpot.md import relax as rx  # the module
from jaxpot.md.replicas import relax_replicas

SIG, EPS, RC = 2.3, 0.4, 5.0
POT = potentials.lennard_jones(sigma=SIG, epsilon=EPS, cutoff=RC)


def _ase_relax(atoms, fmax, pressure_gpa=0.0, mask=None):
    from threadpoolctl import threadpool_limits  # 3x3 LAPACK calls: threads only slow them

    atoms = atoms.copy()
    atoms.calc = LennardJones(sigma=SIG, epsilon=EPS, rc=RC)
    opt = FIRE(FrechetCellFilter(atoms, mask=mask, scalar_pressure=pressure_gpa * units.GPa),
               logfile=None)
    with threadpool_limits(1):
        opt.run(fmax=fmax, steps=2000)
    return atoms, opt.nsteps


def _structures():
    tri = bulk("Cu", "fcc", a=3.7).repeat((2, 1, 1))
    shear = np.array([[1.0, 0.05, -0.03], [0.02, 0.97, 0.04], [0.0, 0.03, 1.04]])
    tri.set_cell(tri.cell @ shear, scale_atoms=True)
    out = {"fcc": bulk("Cu", "fcc", a=3.7), "bcc": bulk("Cu", "bcc", a=2.9),
           "hcp": bulk("Cu", "hcp", a=2.6, c=4.3), "triclinic": tri}
    for a in out.values():
        a.rattle(0.02, seed=1)
    return out


def test_cell_relaxation_matches_ase_fire_frechet():
    structs = _structures()
    names = list(structs) + ["fcc"]
    pressures = [0.0, 0.0, 0.0, 0.0, 2.0]  # the last: fcc at 2 GPa
    fmax = 1e-4
    got = relax_replicas(POT, POT.init(None, None), [System.from_ase(structs[k]) for k in names],
                         fmax=fmax, max_steps=2000, pressures_gpa=pressures)
    for name, p, (relaxed, info) in zip(names, pressures, got, strict=True):
        ref, n_steps = _ase_relax(structs[name], fmax, p)
        mine = relaxed.to_ase()
        n = len(ref)
        assert info["converged"] and info["steps"] == n_steps, (name, info["steps"], n_steps)
        lengths = mine.cell.cellpar()[:3]
        assert np.abs(lengths - ref.cell.cellpar()[:3]).max() < 1e-4, name
        assert np.abs(mine.cell.cellpar()[3:] - ref.cell.cellpar()[3:]).max() < 1e-4, name
        assert abs(info["energy"] / n - ref.get_potential_energy() / n) < 1e-6, name
        # non-trivial: the cell really changed during the relaxation
        assert np.abs(lengths - structs[name].cell.cellpar()[:3]).max() > 0.01, name
        # the relaxed stress is the target (fmax bounds the cell force per atom)
        sigma = info["stress"]
        assert np.abs(sigma + p * units.GPa * np.eye(3)).max() * mine.get_volume() / n < 2 * fmax


@pytest.mark.slow
def test_single_relax_with_mask_matches_ase():
    atoms = _structures()["hcp"]
    mask = [True, True, False, False, False, True]  # c fixed, in-plane free
    relaxed, info = rx.relax(POT, POT.init(None, None), System.from_ase(atoms), fmax=1e-4,
                             mask=mask, max_steps=2000)
    ref, n_steps = _ase_relax(atoms, 1e-4, mask=mask)
    mine = relaxed.to_ase()
    assert info["steps"] == n_steps
    assert np.abs(mine.cell.cellpar() - ref.cell.cellpar()).max() < 1e-4
    assert abs(mine.cell[2, 2] - atoms.cell[2, 2]) < 1e-12  # the masked direction kept
    assert abs(info["energy"] - ref.get_potential_energy()) / len(ref) < 1e-6


def test_relax_bad_input():
    system = System.from_ase(bulk("Cu", "fcc", a=3.7))
    with pytest.raises(ValueError, match="fmax"):
        rx.relax(POT, None, system, fmax=0.0)
    with pytest.raises(ValueError, match="pressure or a target stress"):
        rx.relax(POT, None, system, pressure_gpa=1.0, stress_gpa=np.eye(3))
    with pytest.raises(ValueError, match="mask"):
        rx.relax(POT, None, system, mask=[True, False])
    with pytest.raises(ValueError, match="symmetric"):
        rx.target_stress(0.0, [[1, 2, 0], [0, 1, 0], [0, 0, 1]])


@pytest.mark.slow
def test_cli_relax_writes_structure_and_summary(tmp_path, capsys):
    import json

    from ase.io import read, write

    from jaxpot.cli import main
    from jaxpot.serialization import save_model

    model = tmp_path / "lj.model"
    save_model(model, POT, POT.init(None, None))
    start = _structures()["fcc"]
    write(tmp_path / "in.xyz", start)
    out = tmp_path / "out.xyz"
    code = main(["relax", str(model), str(tmp_path / "in.xyz"), "--cell", "--fmax", "1e-4",
                 "--steps", "2000", "-o", str(out)])
    summary = json.loads(capsys.readouterr().out)
    ref, n_steps = _ase_relax(start, 1e-4)
    assert code == 0 and summary["converged"] and summary["steps"] == n_steps
    assert np.abs(np.array(summary["lattice_parameters"]) - ref.cell.cellpar()).max() < 1e-4
    got = read(out)
    assert np.abs(got.cell.cellpar() - ref.cell.cellpar()).max() < 1e-4
    assert abs(summary["energy_per_atom_ev"] - ref.get_potential_energy() / len(ref)) < 1e-6


def test_cli_relax_bad_input_exit_2(tmp_path):
    from ase.io import write

    from jaxpot.cli import main
    from jaxpot.serialization import save_model

    model = tmp_path / "lj.model"
    save_model(model, POT, POT.init(None, None))
    write(tmp_path / "in.xyz", bulk("Cu", "fcc", a=3.7))
    for extra in (["--fmax", "0"], ["--pressure-gpa", "1"], ["--steps", "-1"]):
        assert main(["relax", str(model), str(tmp_path / "in.xyz"), *extra,
                     "-o", str(tmp_path / "bad.xyz")]) == 2
    assert main(["relax", str(model), str(tmp_path / "in.xyz"), "-o",
                 str(tmp_path / "in.xyz")]) == 2  # would overwrite its input
    assert not (tmp_path / "bad.xyz").exists()
