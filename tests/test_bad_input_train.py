"""Bad input to training and evaluation: every case a clear message naming the option, file,
frame or element, never a silent NaN, an overwritten input or a raw traceback from the CLI.

Tiny data (EMT copper, 16 atoms) and tiny models (Morse pair, a 4-wide BPNN) keep it fast.
"""

import json
import os

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from jaxpot import cli, data, potentials, train
from jaxpot.models.bpnn import bpnn
from jaxpot.serialization import load_model, save_model
from jaxpot.train.commands import load_config

CUTOFF = 3.0
MORSE = '{"D": 0.3, "alpha": 1.4, "r0": 2.7}'


def _images(n, seed=0, symbol="Cu"):
    out = []
    for i in range(n):
        a = bulk(symbol, "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
        a.rattle(0.05, seed=seed + i)
        a.calc = EMT()
        a.get_potential_energy()
        out.append(a)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    ase.io.write(d / "train.xyz", _images(6), format="extxyz")
    ase.io.write(d / "valid.xyz", _images(2, seed=50), format="extxyz")
    return d


def _train_argv(files, out, *extra):
    return ["train", "--train", str(files / "train.xyz"), "--valid", str(files / "valid.xyz"),
            "--model", "morse", "--model-kwargs", MORSE, "--cutoff", str(CUTOFF),
            "--epochs", "1", "--batch-size", "3", "--out", str(out), *extra]


def _run(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- options, refused before any work ----------------------------------------------------------

BAD_OPTIONS = [
    ({"lr": 0}, "'lr' (--lr) must be > 0"),
    ({"lr": -0.01}, "'lr' (--lr) must be > 0"),
    ({"patience": -1}, "'patience' (--patience) must be >= 1"),
    ({"final_lr_fraction": -0.5}, "'final_lr_fraction' must be in [0.0, 1.0]"),
    ({"energy_weight": -1}, "'energy_weight' must be >= 0"),
    ({"ema_decay": 1.5}, "'ema_decay' must be in [0, 1)"),
    ({"batch_size": 2.7}, "'batch_size' (--batch-size) must be an integer"),
    ({"batch_size": 0}, "'batch_size' (--batch-size) must be >= 1"),
    ({"epochs": 0}, "'epochs' (--epochs) must be >= 1"),
    ({"time_budget_min": 0}, "'time_budget_min' (--time-budget-min) must be > 0"),
    ({"time_budget_min": float("nan")}, "'time_budget_min' (--time-budget-min) must be > 0"),
    ({"cutoff": -2.0}, "'cutoff' (--cutoff) must be > 0"),
    ({"valid_fraction": 0.0}, "'valid_fraction' must be in (0, 1)"),
    ({"valid_fraction": 1.0}, "'valid_fraction' must be in (0, 1)"),
    ({"decay": "linear"}, "'decay' must be one of"),
    ({"optimizer": "sgd"}, "'optimizer' must be one of"),
    ({"dtype": "float16"}, "'dtype' (--dtype) must be one of"),
    ({"lr": "fast"}, "'lr' (--lr) must be a number"),
    ({"epochs": True}, "'epochs' (--epochs) must be a number"),
    ({"energy_weight": 0, "forces_weight": 0, "stress_weight": 0}, "nothing to train on"),
    ({"learning_rate": 0.1}, "unknown training option(s) ['learning_rate']"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_options_are_refused_naming_the_option(tmp_path, options, message):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": "morse", **options}).replace("NaN", ".nan"))
    with pytest.raises(ValueError) as err:
        load_config(str(path), {})
    assert message in str(err.value)


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0"], "--lr"), (["--lr", "-0.01"], "--lr"), (["--patience", "-1"], "--patience"),
    (["--epochs", "0"], "--epochs"), (["--time-budget-min", "0"], "--time-budget-min"),
])
def test_bad_flags_exit_2_before_reading_anything(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code, _, err = _run(capsys, ["train", "--train", str(tmp_path / "absent.xyz"), "--out",
                                 str(out), *flags])
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists()  # nothing written for a refused command


# -- the output directory and the inputs -------------------------------------------------------

def test_user_files_in_out_dir_are_never_overwritten(files, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "own config"}')
    (out / "metrics.csv").write_text("a,b\n1,2\n")
    (out / "run.json").write_text("[1, 2]")
    code, _, err = _run(capsys, _train_argv(files, out))
    assert code == 2
    assert "config.json" in err and "metrics.csv" in err and "not from a jaxpot" in err
    assert "run.json" in err and (out / "run.json").read_text() == "[1, 2]"
    assert (out / "config.json").read_text() == '{"my": "own config"}'
    assert sorted(os.listdir(out)) == ["config.json", "metrics.csv", "run.json"]
    # --restart does not make a user's own files fair game either
    assert _run(capsys, _train_argv(files, out, "--restart"))[0] == 2
    assert (out / "metrics.csv").read_text() == "a,b\n1,2\n"


def test_run_of_an_older_jaxpot_needs_restart(files, tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    old_config = train.TrainConfig(train="x.xyz", model="morse", out=str(out)).to_dict()
    (out / "config.json").write_text(json.dumps(old_config))
    code, _, err = _run(capsys, _train_argv(files, out))
    assert code == 2 and "older jaxpot" in err and "--restart" in err
    assert json.loads((out / "config.json").read_text()) == old_config
    assert _run(capsys, _train_argv(files, out, "--restart"))[0] == 0
    assert json.loads((out / "config.json").read_text())["model_kwargs"]["D"] == 0.3


def test_input_named_like_an_output_is_refused(files, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    data_as_model = out / "model"
    data_as_model.write_bytes((files / "train.xyz").read_bytes())
    argv = _train_argv(files, out)
    argv[argv.index("--train") + 1] = str(data_as_model)
    code, _, err = _run(capsys, argv)
    assert code == 2 and "--train" in err and "would be overwritten" in err
    assert data_as_model.read_bytes() == (files / "train.xyz").read_bytes()


def test_valid_repeating_train_frames_warns(files, tmp_path, capsys):
    frames = ase.io.read(files / "train.xyz", ":")[:2] + _images(1, seed=80)
    ase.io.write(tmp_path / "valid.xyz", frames, format="extxyz")
    argv = _train_argv(files, tmp_path / "run")
    argv[argv.index("--valid") + 1] = str(tmp_path / "valid.xyz")
    code, _, err = _run(capsys, argv)
    assert code == 0
    assert "2 of 3 validation structures repeat training structures" in err


def test_valid_equal_to_train_warns(files, tmp_path, capsys):
    argv = _train_argv(files, tmp_path / "run")
    argv[argv.index("--valid") + 1] = str(files / "train.xyz")
    code, _, err = _run(capsys, argv)
    assert code == 0
    assert "holds the same data as --train" in err


@pytest.fixture(scope="module")
def finished_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "a"
    assert cli.main(_train_argv(files, out)) == 0
    return out


def test_restart_checks_inputs_before_deleting_the_checkpoint(finished_run, files, capsys):
    before = (finished_run / "checkpoint").read_bytes()
    argv = _train_argv(files, finished_run, "--restart")
    argv[argv.index("--train") + 1] = str(files / "gone.xyz")
    code, _, err = _run(capsys, argv)
    assert code == 2 and "gone.xyz: no such file" in err
    assert (finished_run / "checkpoint").read_bytes() == before


def test_resuming_a_different_run_is_refused(finished_run, files, tmp_path, capsys):
    before = (finished_run / "checkpoint").read_bytes()
    argv = _train_argv(files, finished_run)
    argv[argv.index("--model-kwargs") + 1] = '{"D": 0.5, "alpha": 1.4, "r0": 2.7}'
    code, _, err = _run(capsys, argv)
    assert code == 2 and "different jaxpot train run" in err and "model_kwargs" in err
    other = tmp_path / "other.xyz"
    ase.io.write(other, _images(6, seed=7), format="extxyz")
    argv = _train_argv(files, finished_run)
    argv[argv.index("--train") + 1] = str(other)
    code, _, err = _run(capsys, argv)
    assert code == 2 and "train data" in err
    assert (finished_run / "checkpoint").read_bytes() == before
    # The same command resumes (a finished run trains no further).
    assert _run(capsys, _train_argv(files, finished_run))[0] == 0


def test_checkpointer_refuses_another_fingerprint(tmp_path):
    from jaxpot.train import Checkpointer

    state = {"x": jnp.zeros(3)}
    a = Checkpointer(tmp_path / "c", fingerprint={"model": "morse", "seed": 0})
    a.save(state, None, {"epoch": 1})
    assert a.seconds > 0
    b = Checkpointer(tmp_path / "c", fingerprint={"model": "nequip", "seed": 0})
    with pytest.raises(ValueError, match="model: 'morse' in the checkpoint, 'nequip' now"):
        b.load(state, state)
    assert a.load(state, state)[2]["epoch"] == 1


# -- budgets and divergence --------------------------------------------------------------------

def test_spent_budget_exits_nonzero_without_a_model(files, tmp_path, capsys):
    out = tmp_path / "run"
    # The CLI's budget counts from start-up (long ago in this test process): already spent.
    code, stdout, err = _run(capsys, _train_argv(files, out, "--time-budget-min", "0.001"))
    assert code == 3
    assert "no validation completed within the time budget" in err and "no model written" in err
    assert not (out / "model").exists() and stdout == ""
    code, stdout, _ = _run(capsys, _train_argv(files, out, "--time-budget-min", "0.001",
                                               "--keep-incomplete"))
    assert code == 0 and (out / "model").exists()
    assert json.loads(stdout)["best"] == {}
    pot, params = load_model(out / "model")
    assert pot.config["name"] == "with_element_refs"


@pytest.fixture(scope="module")
def toy(files):
    tr = data.read_extxyz(files / "train.xyz", cutoff=CUTOFF)
    va = data.read_extxyz(files / "valid.xyz", cutoff=CUTOFF)
    st = data.statistics(tr)
    pot = potentials.morse(D=0.3, alpha=1.4, r0=2.7, cutoff=CUTOFF)
    pot, params = train.attach_element_refs(pot, pot.init(None, None), st)
    return pot, params, tr, va, st


def test_diverging_lr_is_a_clear_error_with_the_last_good_checkpoint(toy, tmp_path):
    pot, params, tr, va, st = toy
    base = dict(batch_size=3, warmup_epochs=0, progress=False, dtype="float64",
                stress_weight=0.0, clip_norm=None, decay="constant")
    ckpt = tmp_path / "ckpt"
    good = train.fit(pot, params, tr, va, train.TrainConfig(epochs=1, lr=1e-3, **base),
                     stats=st, checkpoint_path=ckpt)
    saved = ckpt.read_bytes()
    with pytest.raises(train.TrainingDiverged) as err:
        train.fit(pot, params, tr, va, train.TrainConfig(epochs=3, lr=1e4, **base), stats=st,
                  checkpoint_path=ckpt)
    msg = str(err.value)
    assert "diverged" in msg and "at step" in msg and "lower the learning rate" in msg
    assert f"{ckpt} keeps the last good checkpoint (epoch 1" in msg
    assert err.value.step >= int(good.state.step)
    assert err.value.best["epoch"] == 1 and err.value.best_params is not None
    assert ckpt.read_bytes() == saved  # never overwritten by a diverged state
    # Resuming from that checkpoint with a sane rate trains on to finite parameters.
    res = train.fit(pot, params, tr, va, train.TrainConfig(epochs=3, lr=1e-3, **base),
                    stats=st, checkpoint_path=ckpt)
    assert len(res.history) == 3 and int(res.state.step) > int(good.state.step)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(res.params))


def test_fit_without_validation_structures_is_refused(toy):
    pot, params, tr, _, st = toy
    cfg = train.TrainConfig(epochs=1, batch_size=3, progress=False, dtype="float64")
    with pytest.raises(ValueError, match="no validation structures"):
        train.fit(pot, params, tr, data.Dataset([], CUTOFF), cfg, stats=st)


def test_diverging_cli_run_exits_3_without_traceback(files, tmp_path, capsys):
    code, _, err = _run(capsys, _train_argv(files, tmp_path / "run", "--lr", "10000",
                                            "--epochs", "3"))
    if code == 0:  # clipping may keep a Morse pair finite: then nothing diverged
        pytest.skip("this lr did not diverge with the default clip")
    assert code == 3 and "training diverged" in err and "Traceback" not in err


# -- jaxpot eval -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bpnn_model(tmp_path_factory):
    """A tiny untrained BPNN for Cu only, saved as a model file."""
    d = tmp_path_factory.mktemp("model")
    pot = bpnn(species=["Cu"], cutoff=CUTOFF, hidden=[4], n_radial=2, n_angular=1,
               max_neighbors=24)
    system = data.from_atoms(_images(1), cutoff=CUTOFF)[0].system()
    params = pot.init(jax.random.key(0), system)
    save_model(d / "model", pot, params)
    return d / "model", pot, params


def test_eval_unknown_element_is_refused_before_jit(bpnn_model, tmp_path, capsys):
    path, _, _ = bpnn_model
    frames = _images(1, symbol="Cu")
    frames[0].symbols[3] = "Ni"
    frames[0].calc = EMT()
    frames[0].get_potential_energy()
    ase.io.write(tmp_path / "ni.xyz", frames, format="extxyz")
    code, out, err = _run(capsys, ["eval", str(path), str(tmp_path / "ni.xyz")])
    assert code == 2 and out == ""
    assert "Ni" in err and "atom 3" in err and "unknown to the model" in err
    assert "NaN" not in err


def test_eval_without_forces_reports_no_force_metric(bpnn_model, tmp_path, capsys):
    path, _, _ = bpnn_model
    frames = []
    for a in _images(2):
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy())
        frames.append(b)
    ase.io.write(tmp_path / "e_only.xyz", frames, format="extxyz")
    code, out, err = _run(capsys, ["eval", str(path), str(tmp_path / "e_only.xyz")])
    assert code == 0, err
    metrics = json.loads(out)
    assert "force_mae_mev_per_a" not in metrics and "force_rmse_mev_per_a" not in metrics
    assert "no force labels" in metrics["forces"]
    assert metrics["energy_mae_mev_per_atom"] > 0


def test_eval_wrong_forces_key_never_reports_zero(bpnn_model, files, capsys):
    path, _, _ = bpnn_model
    code, out, err = _run(capsys, ["eval", str(path), str(files / "valid.xyz"),
                                   "--forces-key", "REF_forces"])
    if code == 0:
        metrics = json.loads(out)
        assert "force_mae_mev_per_a" not in metrics and "REF_forces" in metrics["forces"]
    else:
        assert code == 2 and "REF_forces" in err


def test_eval_nan_prediction_names_the_frame(tmp_path, files, capsys):
    # max_neighbors=4 is far below the 12+ neighbours of fcc Cu: the descriptor overflows and
    # the model's energy is NaN under jit; eval must say so, naming the frame, not print NaN.
    pot = bpnn(species=["Cu"], cutoff=CUTOFF, hidden=[4], n_radial=2, n_angular=1,
               max_neighbors=4)
    system = data.from_atoms(_images(1), cutoff=CUTOFF)[0].system()
    save_model(tmp_path / "model", pot, pot.init(jax.random.key(0), system))
    code, out, err = _run(capsys, ["eval", str(tmp_path / "model"), str(files / "valid.xyz")])
    assert code == 2 and out == ""
    assert "valid.xyz" in err and "frame 0" in err and "non-finite" in err


def test_eval_misshaped_parameter_is_a_clear_error(bpnn_model, tmp_path, files, capsys):
    _, pot, params = bpnn_model
    bad = {**params, "atomic_shift": jnp.zeros(3)}
    save_model(tmp_path / "model", pot, bad)
    code, _, err = _run(capsys, ["eval", str(tmp_path / "model"), str(files / "valid.xyz")])
    assert code == 2 and "atomic_shift" in err and "Traceback" not in err
    missing = {k: v for k, v in params.items() if k != "descriptor_std"}
    save_model(tmp_path / "model2", pot, missing)
    code, _, err = _run(capsys, ["eval", str(tmp_path / "model2"), str(files / "valid.xyz")])
    assert code == 2 and "descriptor_std" in err


def test_eval_bad_batch_size(bpnn_model, files, capsys):
    path, _, _ = bpnn_model
    code, _, err = _run(capsys, ["eval", str(path), str(files / "valid.xyz"),
                                 "--batch-size", "0"])
    assert code == 2 and "--batch-size" in err


def test_time_budget_object():
    b = train.TimeBudget(10.0, start=0.0)
    assert b.limited and b.deadline == 10.0 and b.expired()
    assert train.TimeBudget.unlimited().left() == float("inf")
    assert not train.TimeBudget.unlimited().expired()
    live = train.TimeBudget.minutes(1.0)
    assert 59.0 < live.left() <= 60.0 and 0.0 <= live.fraction_used() < 0.02
    assert live.sub(0.5).left() <= 30.0
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            train.TimeBudget(bad)
