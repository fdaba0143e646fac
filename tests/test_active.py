"""Active learning: oracles, stopping criteria, the loop on EMT copper, resume, CLI."""

import csv
import os

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write

from jaxpot import active
from jaxpot.active.criteria import check
from jaxpot.active.walkers import select_frames

TINY_GAP = dict(n_sparse=40, n_max=3, l_max=2, cutoff=3.8)


def _frames(n, *, seed=0, rattle=0.04, strain=0.0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", cubic=True).repeat(2)  # 32 atoms
        if strain:
            a.set_cell(a.cell * (1 + strain), scale_atoms=True)
        a.rattle(rattle, seed=int(rng.integers(1 << 30)))
        out.append(a)
    return out


def _labelled(frames):
    for a in frames:
        a.calc = EMT()
        a.get_potential_energy()
    return frames


# ------------------------------------------------------------------------------ fast pieces


def test_oracle_specs():
    atoms = _frames(1)[0]
    for spec in ("ase.calculators.emt:EMT", "ase.calculators.emt.EMT", EMT, EMT()):
        out = active.make_oracle(spec)(atoms)
        ref = atoms.copy()
        ref.calc = EMT()
        np.testing.assert_allclose(out.get_forces(), ref.get_forces(), atol=1e-10)
        assert out.get_stress().shape == (6,)  # periodic: stress labelled too
    oracle = active.make_oracle(lambda a: {"energy": 1.0, "forces": np.zeros((len(a), 3))})
    assert oracle(atoms).get_potential_energy() == 1.0 and oracle.calls == 1


@pytest.mark.parametrize("spec, match", [
    ("nosuchmodule:EMT", "cannot import module 'nosuchmodule'"),
    ("ase.calculators.emt:NoSuch", "has no 'NoSuch'"),
    ("EMT", "expected 'module:Name'"),
    ("numpy:ndarray", "creating the calculator failed"),
])
def test_oracle_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        active.make_oracle(spec)


def test_criteria_and_selection():
    assert np.isnan(active.block_standard_error([1.0, 2.0]))
    x = np.random.default_rng(0).normal(size=1000)
    assert 0.01 < active.block_standard_error(x, 10) < 0.06
    row = dict(full=True, triggered=False, coverage_frames=10, trusted_frames=10,
               mean_spread=0.01, sem_ev=1e-4)
    crit = active.StoppingCriteria(max_oracle_calls=5)
    values, reasons = check([row, row], 2, 0, crit)
    assert values["quiet"] and values["coverage"] == 1.0 and reasons[0].startswith("converged")
    values, reasons = check([row, dict(row, triggered=True, full=False)], 2, 5, crit)
    assert not values["quiet"] and reasons == ["reached max_oracle_calls = 5"]
    with pytest.raises(ValueError, match="unknown"):
        active.StoppingCriteria(require=("bogus",)).validated()
    frames = _frames(6, rattle=0.05)
    picks = select_frames(frames, 5, 3, 4)
    assert picks[0] == 5 and len(set(picks)) == 3 and all(1 <= p <= 5 for p in picks)


def test_cli_bad_input(tmp_path, capsys):
    from jaxpot.cli import main

    assert main(["active", "--init", str(tmp_path / "missing.xyz"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    start = tmp_path / "start.xyz"
    write(start, _frames(1))
    assert main(["active", "--init", str(start), "--oracle", "nosuch.module:Calc",
                 "--out", str(tmp_path / "o")]) == 2
    assert "cannot import module" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ the loop


CONFIG = active.ActiveConfig(
    temperatures=(300.0, 1200.0), steps_per_walker=200, log_every=10, block_steps=50,
    threshold_factor=2.0, criteria=active.StoppingCriteria(max_oracle_calls=3,
                                                           max_iterations=8))


@pytest.fixture(scope="module")
def held_back():
    return _labelled(_frames(4, seed=9, rattle=0.12) + _frames(2, seed=8, rattle=0.1,
                                                                strain=0.02))


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory, held_back):
    out = str(tmp_path_factory.mktemp("al"))
    res = active.run_active(_frames(20), "ase.calculators.emt:EMT",
                            active.gap_fitter(**TINY_GAP), out, CONFIG, test_frames=held_back,
                            verbose=False)
    return out, res


@pytest.mark.slow  # ~2 min on one loaded core (MD and GAP-spread compilation)
def test_loop_triggers_labels_and_improves(loop_run, held_back):
    from jaxpot.active.walkers import force_errors

    out, res = loop_run
    rows = list(csv.DictReader(open(os.path.join(out, "iterations.csv"))))
    assert len(rows) == len(res.history) >= 2
    assert any(r["triggered"] for r in res.history)
    calls = res.history[-1]["oracle_calls"]
    assert calls >= 1 and res.stop_reason
    data = read(os.path.join(out, "data.xyz"), ":")
    assert len(data) == 20 + calls
    assert sum(a.info.get("al_source") == "active" for a in data) == calls
    initial = force_errors(*active.gap_fitter(**TINY_GAP)(data[:20]), held_back)["force_rmse"]
    assert res.history[-1]["test_force_rmse"] < initial
    assert os.path.getsize(os.path.join(out, "report.png")) > 1000


class _Kill(Exception):
    pass


@pytest.mark.slow
def test_resume_after_kill(tmp_path):
    """A 'kill' after the labelled frame is written but before the refit: the rerun refits on
    the data file (model older than data) and loses no oracle call."""
    out = str(tmp_path / "run")

    def killer(event, info):
        if event == "labelled":
            raise _Kill

    fit = active.gap_fitter(**TINY_GAP)
    with pytest.raises(_Kill):
        active.run_active(_frames(20), "ase.calculators.emt:EMT", fit, out, CONFIG,
                          callback=killer, verbose=False)
    data = read(os.path.join(out, "data.xyz"), ":")
    assert len(data) == 21  # the labelled frame reached the disk first
    events = []
    res = active.run_active([], "ase.calculators.emt:EMT", fit, out, CONFIG,
                            callback=lambda e, i: events.append((e, i)), verbose=False)
    # refitted on resume, on the 21 frames of the data file (the iteration count goes on)
    assert events[0][0] == "fitted" and events[0][1]["n_data"] == 21
    calls = res.history[-1]["oracle_calls"]
    assert calls >= 1 and len(read(os.path.join(out, "data.xyz"), ":")) == 20 + calls
    assert len(res.frames) == 20 + calls


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    from jaxpot.cli import main

    start = tmp_path / "start.xyz"
    write(start, _frames(1, rattle=0.0))
    out = tmp_path / "cli"
    args = ["active", "--init", str(start), "--oracle", "ase.calculators.emt:EMT",
            "--model", "gap", "--n-sparse", "40", "--cutoff", "3.8", "--temperatures",
            "300,1200", "--steps", "200", "--n-initial", "12", "--max-oracle-calls", "2",
            "--max-iterations", "6", "--threshold-factor", "2", "--out", str(out)]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "iterations.csv")))
    assert rows and rows[-1]["stop_reason"]
    assert len(read(out / "data.xyz", ":")) == 12 + int(rows[-1]["oracle_calls"])
    for name in ("model", "state.json", "report.png"):
        assert (out / name).exists()
