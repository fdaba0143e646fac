"""The CLI refuses bad input with one clear line and the right exit code, and never writes over
an input. Every case runs in-process through ``jaxpot.cli.main`` and (except the two runs that
really integrate) stops before any compilation."""

import json
import os
import tempfile

import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk

import jaxpot
from jaxpot import cli, files

CUTOFF = 7.0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_cli")
    pot = jaxpot.potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=CUTOFF)
    params = pot.init(None, None)
    model = d / "argon.jaxpot"
    jaxpot.save_model(model, pot, params)
    nan_model = d / "nan.jaxpot"
    jaxpot.save_model(nan_model, pot, {**params, "epsilon": np.array(np.nan)})
    crystal = d / "argon.xyz"
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    ase.io.write(crystal, atoms, format="extxyz")
    masses = {}
    for tag, value in (("negative", -39.9), ("zero", 0.0), ("nan", np.nan)):
        bad = atoms.copy()
        m = bad.get_masses()
        m[5] = value
        bad.set_masses(m)
        masses[tag] = d / f"mass_{tag}.xyz"
        ase.io.write(masses[tag], bad, format="extxyz")
    return {"dir": d, "model": model, "nan_model": nan_model, "crystal": crystal,
            "masses": masses, "n_atoms": len(atoms)}


@pytest.fixture(scope="module")
def copper_model(tmp_path_factory):
    from jaxpot.models import nequip

    pot = nequip(species=["Cu"], features="4x0e+4x1o", cutoff=3.0, radial_hidden=[8],
                 num_layers=1)
    system = jaxpot.System.from_ase(bulk("Cu", cubic=True), cutoff=3.0)
    path = tmp_path_factory.mktemp("cu") / "cu.jaxpot"
    jaxpot.save_model(path, pot, pot.init(jax.random.key(0), system))
    return path


def _run(argv, capsys, code=2):
    """Run the CLI; check the exit code and that stderr is one ``jaxpot CMD: error:`` line."""
    assert cli.main([str(a) for a in argv]) == code, capsys.readouterr()
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"jaxpot {argv[0]}: error: "), err
    return lines[0]


def _md(inputs, *extra, structure=None, model=None):
    return ["md", model or inputs["model"], structure or inputs["crystal"], "--steps", "20",
            "--log-every", "10", "--temperature", "40", "--dt", "5", *extra]


def _snapshot(*paths):
    return {str(p): open(p, "rb").read() for p in paths}


# ---------------------------------------------------------------------------------------------
# Outputs over inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option,target", [
    ("--log", "crystal"), ("--traj", "crystal"), ("--summary", "crystal"),
    ("--log", "model"), ("--traj", "model"), ("--summary", "model"),
])
def test_md_output_over_input_refused(inputs, capsys, option, target):
    before = _snapshot(inputs["model"], inputs["crystal"])
    line = _run(_md(inputs, option, inputs[target]), capsys)
    assert f"output {option} {str(inputs[target])!r}" in line
    assert ("STRUCTURE" if target == "crystal" else "MODEL") in line and "refusing" in line
    assert _snapshot(inputs["model"], inputs["crystal"]) == before


def test_md_output_over_input_through_links_and_relative_paths(inputs, capsys, monkeypatch):
    d = inputs["dir"]
    before = _snapshot(inputs["model"], inputs["crystal"])
    link = d / "link_to_crystal.xyz"
    hard = d / "hard_to_model.jaxpot"
    if not link.exists():
        os.symlink(inputs["crystal"], link)
        os.link(inputs["model"], hard)
    line = _run(_md(inputs, "--traj", link), capsys)
    assert str(link) in line and str(inputs["crystal"]) in line
    line = _run(_md(inputs, "--log", hard), capsys)
    assert str(hard) in line and str(inputs["model"]) in line
    monkeypatch.chdir(d)  # the same file spelt relative to the working directory
    line = _run(_md(inputs, "--summary", "./argon.xyz"), capsys)
    assert "./argon.xyz" in line and "STRUCTURE" in line
    assert _snapshot(inputs["model"], inputs["crystal"]) == before


def test_md_two_outputs_the_same_file(inputs, capsys):
    out = inputs["dir"] / "same.out"
    line = _run(_md(inputs, "--log", out, "--summary", out), capsys)
    assert "--log" in line and "--summary" in line and "same file" in line
    assert not out.exists()


def test_md_output_path_problems(inputs, capsys):
    d = inputs["dir"]
    line = _run(_md(inputs, "--log", d), capsys)
    assert "is a directory" in line and "--log" in line
    line = _run(_md(inputs, "--traj", d / "no" / "such" / "dir" / "t.xyz"), capsys)
    assert "does not exist" in line and "--traj" in line
    try:  # a directory nobody may write in, not even root (sysfs)
        with tempfile.TemporaryFile(dir="/sys"):
            pytest.skip("/sys is writable here")
    except OSError:
        pass
    line = _run(_md(inputs, "--summary", "/sys/jaxpot_summary.json"), capsys)
    assert "cannot write in directory '/sys'" in line and "--summary" in line


# ---------------------------------------------------------------------------------------------
# jaxpot md options, validated before any work
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option,value,expected", [
    ("--tau", "-100", "--tau must be a positive number, got -100.0"),
    ("--tau", "0", "--tau must be a positive number"),
    ("--traj-every", "0", "--traj-every must be a positive number, got 0"),
    ("--traj-every", "-10", "--traj-every must be a positive number"),
    ("--traj-every", "15", "--traj-every (15) must be a multiple of --log-every (10)"),
    ("--dt", "0", "--dt must be a positive number, got 0.0"),
    ("--dt", "-1", "--dt must be a positive number"),
    ("--dt", "nan", "--dt must be a positive number, got nan"),
    ("--dt", "inf", "--dt must be a positive number, got inf"),
    ("--temperature", "-5", "--temperature must be a non-negative number of kelvin, got -5.0"),
    ("--temperature", "nan", "--temperature must be a non-negative number of kelvin"),
    ("--steps", "-1", "--steps must be a positive number, got -1"),
    ("--steps", "0", "--steps must be a positive number, got 0"),
    ("--log-every", "0", "--log-every must be a positive number, got 0"),
    ("--friction", "-0.01", "--friction must be a non-negative number of 1/fs"),
    ("--friction", "nan", "--friction must be a non-negative number of 1/fs"),
    ("--seed", "-1", "--seed must be an integer from 0 to 4294967295, got -1"),
    ("--seed", str(2**70), "--seed must be an integer from 0 to 4294967295"),
    ("--log-every", "-5", "--log-every must be a positive number, got -5"),
])
def test_md_bad_options(inputs, capsys, option, value, expected):
    log = inputs["dir"] / "never.csv"
    line = _run(_md(inputs, option, value, "--log", log), capsys)
    assert expected in line
    assert not log.exists()


def test_md_nan_parameters(inputs, capsys):
    line = _run(_md(inputs, model=inputs["nan_model"]), capsys)
    assert str(inputs["nan_model"]) in line and "params['epsilon']" in line and "NaN" in line
    assert "--dt" not in line


@pytest.mark.parametrize("tag,shown", [("negative", "-39.9"), ("zero", "0.0"), ("nan", "nan")])
def test_md_bad_masses(inputs, capsys, tag, shown):
    line = _run(_md(inputs, structure=inputs["masses"][tag]), capsys)
    assert str(inputs["masses"][tag]) in line and f"atom 5 (Ar) has mass {shown} amu" in line
    assert "--dt" not in line


def test_md_element_the_model_does_not_know(inputs, copper_model, capsys):
    mixed = inputs["dir"] / "cu_ar.xyz"
    atoms = bulk("Cu", cubic=True)
    atoms[2].symbol = "Ar"
    ase.io.write(mixed, atoms, format="extxyz")
    line = _run(["md", copper_model, mixed, "--steps", "2"], capsys)
    assert str(mixed) in line and "Ar (first at atom 2)" in line and "knows only Cu" in line
    assert "--dt" not in line


def test_md_missing_and_foreign_model(inputs, capsys):
    line = _run(_md(inputs, model=inputs["dir"] / "nope.jaxpot"), capsys)
    assert "nope.jaxpot" in line and "No such file" in line
    line = _run(_md(inputs, model=inputs["crystal"]), capsys)
    assert "not a jaxpot model file" in line
    line = _run(_md(inputs, model=inputs["dir"]), capsys)
    assert str(inputs["dir"]) in line


# ---------------------------------------------------------------------------------------------
# Runs that blow up
# ---------------------------------------------------------------------------------------------


def test_nve_blowup_with_finite_energies_exits_3(inputs, capsys):
    """--dt 100 fs on argon at 40 K: for 40 steps the energies stay finite (the NaN comes ~300
    steps later) but the total energy creeps up by more than 0.2 kT per atom; before, this
    exited 0 with a summary that looked normal."""
    d = inputs["dir"]
    summary, log = d / "blowup.json", d / "blowup.csv"
    argv = ["md", inputs["model"], inputs["crystal"], "--temperature", "40", "--dt", "100",
            "--steps", "40", "--log-every", "10", "--summary", summary, "--log", log]
    line = _run(argv, capsys, code=3)
    assert "unstable" in line and "NVE" in line and "try a smaller --dt" in line
    assert "about 3.2 fs" in line  # 0.5 fs × sqrt(39.95)
    rows = log.read_text().strip().splitlines()[1:]  # the outputs show what happened
    e_tot = np.array([float(r.split(",")[4]) for r in rows])
    kt = 40.0 * jaxpot.units.kB
    assert np.all(np.isfinite(e_tot)) and np.ptp(e_tot) / inputs["n_atoms"] > 0.2 * kt
    assert json.loads(summary.read_text())["unstable"].startswith("the total energy")
    # The same run at 5 fs conserves energy to a small fraction of that and exits 0.
    argv[6] = "5"
    assert cli.main([str(a) for a in argv]) == 0
    assert json.loads(summary.read_text())["unstable"] is None
    rows = log.read_text().strip().splitlines()[1:]
    e_tot = np.array([float(r.split(",")[4]) for r in rows])
    assert np.ptp(e_tot) / inputs["n_atoms"] < 0.01 * kt


def test_failure_hint_only_when_the_time_step_is_plausible(inputs):
    atoms = ase.io.read(inputs["crystal"])
    log = {"step": np.array([0, 10, 20]), "total_energy_ev": np.array([-6.7, 50.0, 455.0]),
           "temperature_k": np.array([40.0, 1e4, 1.2e5])}  # the blow-up
    args = cli.build_parser().parse_args(["md", "m", "s", "--dt", "1", "--temperature", "40"])
    reason = cli._md_failure(log, args, atoms)
    assert "-6.7 eV to 50 eV by step 10" in reason
    with pytest.raises(cli.RunFailed) as err:
        cli._raise_md_failure(reason, args, atoms)
    assert "--dt" in str(err.value) and "smaller --dt" not in str(err.value)
    assert "unlikely cause" in str(err.value)
    ok = {**log, "total_energy_ev": np.array([-6.7, -6.7001, -6.6999]),
          "temperature_k": np.array([40.0, 41.0, 39.0])}
    assert cli._md_failure(ok, args, atoms) is None
    args = cli.build_parser().parse_args(["md", "m", "s", "--ensemble", "langevin"])
    hot = {**ok, "temperature_k": np.array([300.0, 400.0, 3500.0])}
    assert "ran away to 3.5e+03 K by step 20" in cli._md_failure(hot, args, atoms)
    assert cli._md_failure({**ok, "temperature_k": np.array([300.0, 2900.0, 300.0])}, args,
                           atoms) is None


# ---------------------------------------------------------------------------------------------
# jaxpot info
# ---------------------------------------------------------------------------------------------


def test_info_bad_files(inputs, capsys):
    d = inputs["dir"]
    empty = d / "empty.jaxpot"
    empty.write_bytes(b"")
    truncated = d / "truncated.jaxpot"
    truncated.write_bytes(inputs["model"].read_bytes()[:40])
    cases = {
        d / "missing.jaxpot": "No such file or directory",
        empty: "it is empty",
        truncated: "not a jaxpot model file",
        inputs["crystal"]: "not a jaxpot model file",
        d: "Is a directory",
    }
    for path, expected in cases.items():
        line = _run(["info", path], capsys)
        assert str(path) in line and expected in line, line


# ---------------------------------------------------------------------------------------------
# Errors in general: exit codes, one line, --debug
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def raising_plugin(monkeypatch, tmp_path):
    (tmp_path / "raising_plugin_mod.py").write_text(
        "import builtins\n"
        "def register(subparsers):\n"
        "    p = subparsers.add_parser('boom')\n"
        "    p.add_argument('kind')\n"
        "    def run(args):\n"
        "        kind = args.kind\n"
        "        if kind == 'key':\n"
        "            return {}['forces_key']\n"
        "        if kind == 'exit_code':\n"
        "            err = RuntimeError('declares its own code')\n"
        "            err.exit_code = 4\n"
        "            raise err\n"
        "        if kind == 'IncompleteTraining':\n"
        "            raise type('IncompleteTraining', (RuntimeError,), {})('no epoch')\n"
        "        raise getattr(builtins, kind)('something went wrong')\n"
        "    p.set_defaults(func=run)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "PLUGINS", (*cli.PLUGINS, "raising_plugin_mod"))
    monkeypatch.delenv("JAXPOT_DEBUG", raising=False)


@pytest.mark.parametrize("kind,code,expected", [
    ("ValueError", 2, "jaxpot boom: error: something went wrong"),
    ("FileNotFoundError", 2, "jaxpot boom: error: something went wrong"),
    ("PermissionError", 2, "jaxpot boom: error: something went wrong"),
    ("key", 2, "jaxpot boom: error: missing key 'forces_key'"),
    ("FloatingPointError", 3, "jaxpot boom: error: something went wrong"),
    ("TypeError", 1, "jaxpot boom: internal error: TypeError: something went wrong"),
    ("exit_code", 4, "jaxpot boom: error: declares its own code"),
    ("IncompleteTraining", 3, "jaxpot boom: error: no epoch"),
])
def test_exit_codes_and_one_line(raising_plugin, capsys, kind, code, expected):
    assert cli.main(["boom", kind]) == code
    err = capsys.readouterr().err
    assert err.strip() == err.strip().splitlines()[0] and "Traceback" not in err
    assert err.startswith(expected), err
    if code == 1:
        assert "--debug" in err


def test_debug_shows_the_traceback(raising_plugin, capsys, monkeypatch):
    with pytest.raises(TypeError, match="something went wrong"):
        cli.main(["boom", "TypeError", "--debug"])
    with pytest.raises(ValueError):
        cli.main(["--debug", "boom", "ValueError"])
    monkeypatch.setenv("JAXPOT_DEBUG", "1")
    with pytest.raises(TypeError):
        cli.main(["boom", "TypeError"])


def test_documented_exit_codes():
    assert cli.EXIT_CODES == {"ok": 0, "internal error": 1, "bad input": 2, "run failed": 3,
                              "interrupted": 130}
    epilog = cli.build_parser().epilog
    for code in ("0 success", "1 unexpected error", "2 bad input", "3 a run that failed"):
        assert code in epilog


# ---------------------------------------------------------------------------------------------
# The persistent compilation cache switch
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_cache_config():
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_compilation_cache_max_size")
    saved = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    for n, v in saved.items():
        jax.config.update(n, v)


def test_compile_cache_on_by_default_and_off_switches(fresh_cache_config, monkeypatch, tmp_path):
    monkeypatch.delenv("JAXPOT_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("JAXPOT_COMPILE_CACHE_DIR", raising=False)
    assert cli.compile_cache_dir() == str(tmp_path / "xdg" / "jaxpot" / "jax")
    monkeypatch.setenv("JAXPOT_COMPILE_CACHE", "0")
    assert cli.enable_compile_cache() is None
    assert jax.config.jax_compilation_cache_dir is None
    assert cli.enable_compile_cache(False) is None
    monkeypatch.setenv("JAXPOT_COMPILE_CACHE", "1")
    directory = cli.enable_compile_cache()
    assert directory == str(tmp_path / "xdg" / "jaxpot" / "jax") and os.path.isdir(directory)
    assert jax.config.jax_compilation_cache_dir == directory
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    # a directory the user configured for JAX itself is kept
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    assert cli.enable_compile_cache() == str(tmp_path / "mine")
    args = cli.build_parser().parse_args(["md", "m", "s", "--no-compile-cache"])
    assert args.no_compile_cache
    assert not cli.build_parser().parse_args(["info", "m"]).no_compile_cache


# ---------------------------------------------------------------------------------------------
# jaxpot demo --out
# ---------------------------------------------------------------------------------------------


def test_demo_refuses_a_folder_of_user_files(tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    (out / "train.xyz").write_text("my data")
    (out / "notes.txt").write_text("keep")
    before = _snapshot(*(out / n for n in ("config.json", "train.xyz", "notes.txt")))
    line = _run(["demo", "--out", out, "--frames", "12"], capsys)
    assert str(out) in line and "config.json" in line and "train.xyz" in line
    assert "notes.txt" not in line  # not a file the demo writes
    assert _snapshot(*(out / n for n in ("config.json", "train.xyz", "notes.txt"))) == before
    assert sorted(os.listdir(out)) == ["config.json", "notes.txt", "train.xyz"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    line = _run(["demo", "--out", other], capsys)
    assert "not empty" in line and "thesis.tex" in line


@pytest.mark.parametrize("option,value,expected", [
    ("--frames", "1", "--frames (n_frames) must be at least 2"),
    ("--time-budget-min", "0", "--time-budget-min must be a positive number"),
    ("--md-steps", "0", "--md-steps must be a positive"),
])
def test_demo_bad_options(tmp_path, capsys, option, value, expected):
    line = _run(["demo", "--out", tmp_path / "new", option, value], capsys)
    assert expected in line
    assert not (tmp_path / "new").exists()


def test_check_outputs_unit(tmp_path):
    a = tmp_path / "a.xyz"
    a.write_text("x")
    files.check_outputs({"--log": tmp_path / "b.csv"}, {"STRUCTURE": a})
    with pytest.raises(ValueError, match="refusing to overwrite"):
        files.check_outputs([str(a)], [a])
    with pytest.raises(ValueError, match="same file"):
        files.check_outputs({"x": tmp_path / "n", "y": tmp_path / "." / "n"})
    files.check_outputs({"x": None}, {"y": None})
    assert json.dumps(sorted(os.listdir(tmp_path))) == '["a.xyz"]'


def test_demo_reuses_its_own_folder(tmp_path):
    from jaxpot import demo

    out = tmp_path / "previous"
    demo._claim_output_folder(out)  # new: created and marked
    assert os.listdir(out) == [demo.MARKER]
    (out / "config.json").write_text("{}")  # as a previous demo run leaves it
    demo._claim_output_folder(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    demo._claim_output_folder(empty)
    assert (empty / demo.MARKER).exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        demo._claim_output_folder(a_file)


# ---------------------------------------------------------------------------------------------
# Structure and model files that cannot run, each refused before any compilation
# ---------------------------------------------------------------------------------------------

_STRUCTURES = {
    "overlap": ("2\nLattice=\"10 0 0 0 10 0 0 0 10\" pbc=\"T T T\"\nAr 0 0 0\nAr 0.05 0 0\n",
                "atoms 0 and 1 overlap (distance 0.0500 Å"),
    "flat_cell": ("2\nLattice=\"10 0 0 0 10 0 0 0 1e-6\" pbc=\"T T T\"\nAr 0 0 0\nAr 3.5 0 0\n",
                  "1e-06 Å thick along lattice vector 2"),
    "inf_position": ("2\nProperties=species:S:1:pos:R:3\nAr 0 0 0\nAr inf 0 0\n",
                     "non-finite position for atom 1"),
    "no_atoms": ("0\n\n", "empty structure"),
    "empty_file": ("", "cannot read"),
    "garbage": (b"\x00\x82\xff binary junk \x01" * 20, "cannot read"),
}


@pytest.mark.parametrize("name", sorted(_STRUCTURES))
def test_md_structures_that_cannot_run(inputs, capsys, name):
    content, expected = _STRUCTURES[name]
    path = inputs["dir"] / f"{name}.xyz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    log = inputs["dir"] / f"{name}.csv"
    line = _run(_md(inputs, "--log", log, structure=path), capsys)
    assert str(path) in line and expected in line, line
    assert not log.exists()


def _tampered_model(inputs, name, edit):
    """A copy of the argon model whose config or params ``edit`` changes (checksum redone)."""
    import hashlib

    import msgpack

    outer = msgpack.unpackb(inputs["model"].read_bytes(), raw=False)
    inner = msgpack.unpackb(outer["payload"], raw=False)
    config = json.loads(inner["config"])
    edit(config, inner["params"])
    inner["config"] = json.dumps(config)
    outer["payload"] = msgpack.packb(inner, use_bin_type=True)
    outer["sha256"] = hashlib.sha256(outer["payload"]).hexdigest()
    path = inputs["dir"] / f"{name}.jaxpot"
    path.write_bytes(msgpack.packb(outer, use_bin_type=True))
    return path


def _set(mapping, key, value):
    mapping[key] = value


_MODELS = {
    "unknown_family": (lambda c, p: _set(c, "name", "no_such_family"),
                       "unknown potential 'no_such_family'"),
    "bad_kwarg": (lambda c, p: _set(c["kwargs"], "colour", "blue"), "cannot rebuild"),
    "kwargs_not_dict": (lambda c, p: _set(c, "kwargs", [1, 2]), "'kwargs' must be a dict"),
    "missing_param": (lambda c, p: p.pop("sigma"), "params['sigma'] is missing"),
    "misshaped_param": (lambda c, p: _set(p, "epsilon", {**p["epsilon"], "shape": [1, 1]}),
                        "params['epsilon'] has shape (1, 1), expected ()"),
    "extra_param": (lambda c, p: _set(p, "gamma", p["sigma"]),
                    "params['gamma'] is not a parameter of this model"),
}


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_md_model_files_that_cannot_run(inputs, capsys, name):
    edit, expected = _MODELS[name]
    path = _tampered_model(inputs, name, edit)
    line = _run(_md(inputs, model=path), capsys)
    assert str(path) in line and expected in line, line


@pytest.mark.parametrize("extra", [
    ["--steps", "1.5"], ["--dt", "abc"], ["--ensemble", "nph"], ["--bogus"],
    ["--temperature"], ["--log-every", "ten"],
])
def test_md_usage_errors_exit_2(inputs, capsys, extra):
    with pytest.raises(SystemExit) as err:
        cli.main([str(a) for a in _md(inputs, *extra)])
    assert err.value.code == 2
    err = capsys.readouterr().err
    assert "usage: jaxpot" in err and "Traceback" not in err
    assert (extra[0] in err) or ("abc" in err) or ("ten" in err), err


def test_md_missing_positional_and_unknown_command(capsys):
    for argv in (["md"], ["md", "only_model.jaxpot"], ["nonsense"], []):
        with pytest.raises(SystemExit) as err:
            cli.main(argv)
        assert err.value.code == 2, argv
    assert "usage: jaxpot" in capsys.readouterr().err


def test_info_shows_a_file_whose_params_do_not_fit(inputs, capsys):
    path = _tampered_model(inputs, "info_misshaped",
                           lambda c, p: _set(p, "sigma", {**p["sigma"], "shape": [1]}))
    assert cli.main(["info", str(path)]) == 2
    captured = capsys.readouterr()
    shown = json.loads(captured.out)  # what the file holds is still shown
    assert shown["config"]["name"] == "lennard_jones"
    assert "params['sigma'] has shape (1,), expected ()" in shown["check"]
    assert captured.err.startswith("jaxpot info: error: ") and str(path) in captured.err
    assert cli.main(["info", str(inputs["model"])]) == 0
    assert json.loads(capsys.readouterr().out)["check"] == "ok"


def test_broken_subcommand_module_is_one_line(monkeypatch, tmp_path, capsys):
    (tmp_path / "broken_cmd_mod.py").write_text("import no_such_dependency_of_a_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "PLUGINS", (*cli.PLUGINS, "broken_cmd_mod"))
    monkeypatch.delenv("JAXPOT_DEBUG", raising=False)
    assert cli.main(["info", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxpot: internal error: a subcommand module does not import")
    assert "no_such_dependency_of_a_plugin" in err and "Traceback" not in err
    with pytest.raises(ModuleNotFoundError):
        cli.main(["--debug", "info", "x"])
