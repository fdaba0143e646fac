"""The jaxpot command line: md end to end, info, clean errors on bad input, plugins."""

import csv
import json
import os
import subprocess
import sys

import ase.io
import numpy as np
import pytest
from ase.build import bulk

import jaxpot
from jaxpot import cli

SUMMARY_KEYS = {"n_atoms", "steps", "compile_s", "wall_s", "atom_steps_per_s", "ns_per_day",
                "mean_temperature_k", "energy_drift_ev_per_atom_per_ps"}
COLUMNS = ["step", "time_fs", "potential_energy_ev", "kinetic_energy_ev", "total_energy_ev",
           "temperature_k"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    pot = jaxpot.potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=7.0)
    model = d / "argon.jaxpot"
    jaxpot.save_model(model, pot, pot.init(None, None))
    crystal = d / "argon.xyz"
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    ase.io.write(crystal, [atoms.copy(), atoms], format="extxyz")
    nan = d / "nan.xyz"
    nan.write_text("2\nProperties=species:S:1:pos:R:3\nAr 0 0 0\nAr nan 0 0\n")
    unknown = d / "unknown.xyz"
    unknown.write_text("2\n\nQq 0 0 0\nAr 3.5 0 0\n")
    dummy = d / "dummy.xyz"
    dummy.write_text("2\n\nX 0 0 0\nAr 3.5 0 0\n")
    corrupt = d / "corrupt.jaxpot"
    corrupt.write_bytes(model.read_bytes()[:-7])
    return {"dir": d, "model": model, "crystal": crystal, "nan": nan, "unknown": unknown,
            "dummy": dummy, "corrupt": corrupt, "n_atoms": len(atoms)}


def _md_args(files, tag, *extra):
    d = files["dir"]
    return ["md", str(files["model"]), str(files["crystal"]), "--temperature", "40", "--dt", "5",
            "--steps", "40", "--log-every", "10", "--log", str(d / f"{tag}.csv"),
            "--traj", str(d / f"{tag}.xyz"), "--summary", str(d / f"{tag}.json"), *extra]


def _check_outputs(files, tag, ensemble):
    d = files["dir"]
    with open(d / f"{tag}.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == COLUMNS + ["pressure_gpa"]  # periodic cell: pressure column
    body = np.array(rows[1:], float)
    np.testing.assert_array_equal(body[:, 0], [0, 10, 20, 30, 40])
    np.testing.assert_allclose(body[:, 1], body[:, 0] * 5.0)
    np.testing.assert_allclose(body[:, 4], body[:, 2] + body[:, 3], rtol=1e-5)
    assert np.all(np.isfinite(body))
    summary = json.loads((d / f"{tag}.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["n_atoms"] == files["n_atoms"] and summary["steps"] == 40
    assert summary["mean_temperature_k"] > 0
    if ensemble == "nve":
        assert isinstance(summary["energy_drift_ev_per_atom_per_ps"], float)
        assert abs(summary["energy_drift_ev_per_atom_per_ps"]) < 1e-2
    else:
        assert summary["energy_drift_ev_per_atom_per_ps"] is None
    frames = ase.io.read(d / f"{tag}.xyz", ":")
    assert len(frames) == 5 and len(frames[0]) == files["n_atoms"]


def test_md_in_process(files, capsys):
    assert cli.main(_md_args(files, "nve")) == 0
    out = capsys.readouterr().out
    assert "atom-steps/s" in out
    _check_outputs(files, "nve", "nve")


def test_md_subprocess_langevin(files):
    env = dict(os.environ, CI="1")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxpot", *_md_args(files, "lgv", "--ensemble", "langevin",
                                                    "--friction", "0.05")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    _check_outputs(files, "lgv", "langevin")


def test_info(files, capsys):
    assert cli.main(["info", str(files["model"]), "--params"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["name"] == "lennard_jones"
    assert info["config"]["kwargs"]["cutoff"] == 7.0
    assert info["params_shapes"]["sigma"].endswith("[]")


def _bad_cases(files, missing):
    m, s = str(files["model"]), str(files["crystal"])
    return {
        "nan positions": (["md", m, str(files["nan"]), "--steps", "2"], "non-finite"),
        "unknown element": (["md", m, str(files["unknown"]), "--steps", "2"], "unknown"),
        "dummy element": (["md", m, str(files["dummy"]), "--steps", "2"], "unknown element"),
        "missing structure": (["md", m, missing, "--steps", "2"], "nope.xyz"),
        "missing model": (["md", missing, s, "--steps", "2"], "nope.xyz"),
        "corrupt model": (["md", str(files["corrupt"]), s], "corrupt.jaxpot"),
        "structure as model": (["info", s], "not a jaxpot model file"),
        "bad dt": (["md", m, s, "--dt", "-1"], "--dt must be a positive number"),
        "missing output dir": (["md", m, s, "--log", missing + "/x/log.csv"], "does not exist"),
    }


def test_bad_input_one_line_exit_2(files, capsys):
    missing = str(files["dir"] / "nope.xyz")
    for name, (argv, expected) in _bad_cases(files, missing).items():
        assert cli.main(argv) == 2, name
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1, (name, err)
        assert lines[0].startswith(f"jaxpot {argv[0]}: error: "), (name, err)
        assert expected in lines[0], (name, err)
        assert "Traceback" not in err


def test_bad_input_subprocess(files):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxpot", "md", str(files["model"]), str(files["nan"])],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("jaxpot md: error: ") and "non-finite" in proc.stderr


def test_usage_errors_exit_2(files):
    with pytest.raises(SystemExit) as err:
        cli.main(["md", str(files["model"]), str(files["crystal"]), "--ensemble", "nph"])
    assert err.value.code == 2


def test_plugins_absent_vs_broken(tmp_path, monkeypatch):
    assert cli._load_plugin("jaxpot.no_such_plugin_module") is None
    assert cli._load_plugin("no_such_top_level_pkg.commands") is None
    (tmp_path / "broken_plugin_mod.py").write_text("import no_such_dependency_for_jaxpot_test\n")
    (tmp_path / "buggy_plugin_mod.py").write_text("raise ImportError('real bug inside')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_for_jaxpot_test"):
        cli._load_plugin("broken_plugin_mod")
    with pytest.raises(ImportError, match="real bug inside"):
        cli._load_plugin("buggy_plugin_mod")


def test_plugin_registration(monkeypatch, tmp_path, capsys):
    (tmp_path / "hello_plugin_mod.py").write_text(
        "def register(subparsers):\n"
        "    p = subparsers.add_parser('hello')\n"
        "    p.set_defaults(func=lambda args: print('hi') or 0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "PLUGINS", (*cli.PLUGINS, "hello_plugin_mod"))
    assert cli.main(["hello"]) == 0
    assert capsys.readouterr().out.strip() == "hi"


def test_md_summary_drift_is_a_linear_fit():
    t = np.arange(0, 1001, 100.0)  # fs
    log = {"time_fs": t, "total_energy_ev": 10 * (-1.0 + 0.002 * t / 1000.0),
           "temperature_k": np.full(t.size, 300.0), "potential_energy_ev": np.zeros(t.size)}
    s = cli.md_summary(log, n_atoms=10, ensemble="nve")
    assert s["energy_drift_ev_per_atom_per_ps"] == pytest.approx(0.002)
    assert s["mean_temperature_k"] == pytest.approx(300.0)
    assert cli.md_summary(log, n_atoms=10, ensemble="langevin")[
        "energy_drift_ev_per_atom_per_ps"] is None


def test_persistent_compile_cache_subprocess(files, tmp_path):
    """``jaxpot md`` fills its compilation cache; the same run again finds everything there
    (no new entries) instead of compiling."""
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(CI="1", JAXPOT_COMPILE_CACHE_DIR=str(cache))
    env.pop("JAXPOT_COMPILE_CACHE", None)
    argv = [sys.executable, "-m", "jaxpot", "md", str(files["model"]), str(files["crystal"]),
            "--steps", "20", "--log-every", "10", "--temperature", "40", "--dt", "5"]
    counts = []
    for _ in range(2):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        counts.append(len(os.listdir(cache)))
    assert counts[0] > 0 and counts[1] == counts[0], counts
