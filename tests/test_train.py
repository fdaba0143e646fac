"""Tests of jaxpot.train on a toy learnable pair potential (Morse) and tiny EMT Cu data."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from jaxpot import data, potentials, train
from jaxpot.train import loss as tloss

CUTOFF = 3.0


def _emt_images(n, seed=0):
    images = []
    for i in range(n):
        reps = (2, 2, 2) if i % 2 else (2, 2, 1)
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(reps)
        a.rattle(0.05, seed=seed + i)
        a.calc = EMT()
        a.get_potential_energy()
        a.get_stress()
        images.append(a)
    return images


@pytest.fixture(scope="module")
def datasets():
    ds = data.from_atoms(_emt_images(10), cutoff=CUTOFF)
    tr, va = data.split(ds, n_valid=3, seed=0)
    return tr, va


@pytest.fixture(scope="module")
def toy(datasets):
    """One toy potential object shared by the fit tests, so their compiled steps are reused."""
    st = data.statistics(datasets[0])
    pot, params = _toy(st)
    return pot, params, st


def _toy(stats, *, trainable=False):
    pot = potentials.morse(D=0.3, alpha=1.4, r0=2.7, cutoff=CUTOFF)
    return train.attach_element_refs(pot, pot.init(None, None), stats, trainable=trainable)


class _OneStepBudget(train.TimeBudget):
    """A long budget whose clock says "no more time" after the first step (deterministic)."""

    def fits(self, seconds):
        return False


def _config(**kw):
    base = dict(batch_size=3, epochs=3, lr=2e-2, warmup_epochs=0.5, dtype="float64",
                progress=False, patience=None, stress_weight=0.0)
    base.update(kw)
    return train.TrainConfig(**base)


def test_default_weights_rule(datasets):
    st = data.statistics(datasets[0])
    w = train.default_weights(st)
    assert w.energy == pytest.approx(1.5**2 / st.force_rms**2)
    assert w.forces == pytest.approx(1 / (3 * st.force_rms**2))
    # An energy error δ/atom weighs as a force-component error δ/ℓ: w_E δ² = w_F · 3 (δ/ℓ)².
    assert w.energy == pytest.approx(w.forces * 3 / 1.5**2 * 1.5**4)
    wv = train.default_weights(st, energy_length=None)
    assert wv.energy == pytest.approx(1 / max(st.energy_std_per_atom, 1e-3) ** 2)
    assert wv.forces == w.forces
    assert w.stress == pytest.approx(min(1, 3 / st.n_atoms_mean) / (9 * st.stress_rms**2))
    # The trivial model (refs, zero forces, zero stress) scores ~1 on each term.
    tr = datasets[0]
    b = data.collate(tr.structures, len(tr), max(tr.n_atoms), max(tr.n_edges))
    refs = jnp.asarray([sum(st.element_refs[int(z)] for z in s.numbers) for s in tr.structures])
    t = tloss.loss_terms(refs, jnp.zeros_like(b.forces), jnp.zeros_like(b.stress), b)
    assert w.forces * t["forces"] == pytest.approx(1.0, rel=1e-9)
    assert w.stress * t["stress"] == pytest.approx(min(1, 3 / st.n_atoms_mean), rel=1e-9)
    assert wv.energy * t["energy"] == pytest.approx(1.0, rel=0.5)
    with pytest.raises(ValueError, match="energy_length"):
        train.default_weights(st, energy_length=0.0)


def test_padding_does_not_change_loss(datasets):
    tr = datasets[0]
    st = data.statistics(tr)
    pot, params = _toy(st)
    w = train.default_weights(st)
    loss_fn = jax.jit(train.make_loss_fn(pot, w))
    structs = tr.structures[:3]
    n, e = max(s.n_atoms for s in structs), max(s.n_edges for s in structs)
    tight = data.collate(structs, 3, n, e)
    padded = data.collate(structs, 5, n + 7, e + 50)  # 2 dummies, padding atoms and edges
    l1, t1 = loss_fn(params, tight)
    l2, t2 = loss_fn(params, padded)
    assert float(l1) > 0
    assert float(l2) == pytest.approx(float(l1), rel=1e-12)
    for k in ("energy", "forces", "stress"):
        assert float(t2[k]) == pytest.approx(float(t1[k]), rel=1e-12)


def test_loss_gradient_matches_finite_differences(datasets):
    tr = datasets[0]
    st = data.statistics(tr)
    pot, params = _toy(st, trainable=True)
    w = train.default_weights(st)
    loss_fn = jax.jit(lambda p, b: train.make_loss_fn(pot, w)(p, b)[0])
    b = data.collate(tr.structures[:3], 3, max(tr.n_atoms), max(tr.n_edges))
    g = jax.grad(loss_fn)(params, b)
    h = 1e-6
    for name in ("D", "alpha", "r0"):
        plus = {**params, "model": {**params["model"], name: params["model"][name] + h}}
        minus = {**params, "model": {**params["model"], name: params["model"][name] - h}}
        fd = (float(loss_fn(plus, b)) - float(loss_fn(minus, b))) / (2 * h)
        assert float(g["model"][name]) == pytest.approx(fd, rel=1e-6, abs=1e-8)
    # Trainable element refs get a gradient too (entry 29 = Cu only).
    gr = np.asarray(g["element_refs"])
    assert gr[29] != 0 and np.count_nonzero(gr) == 1


def test_train_steps_reduce_loss_and_compile_once_per_shape(datasets):
    tr = datasets[0]
    st = data.statistics(tr)
    pot, params = _toy(st)
    w = train.default_weights(st)._replace(stress=0.0)
    opt, _ = train.make_optimizer(2e-2, total_steps=100, warmup_steps=2)
    step = train.make_train_step(pot, opt, w, ema_decay=0.9)
    state = train.TrainState.create(params, opt)
    loader = data.BatchLoader(tr, 2, seed=0)
    assert len(loader.used_shapes) == 2  # 16- and 32-atom cells
    losses = []
    for epoch in range(4):
        for b in loader.batches(epoch):
            state, m = step(state, b)
            losses.append(float(m["loss"]))
        if epoch == 0:
            assert step.n_traces == len(loader.used_shapes)
    assert step.n_traces == len(loader.used_shapes)  # no recompilation in later epochs
    assert int(state.step) == 4 * len(loader)
    assert np.mean(losses[-len(loader):]) < 0.5 * np.mean(losses[: len(loader)])
    # EMA lags behind the parameters but moved away from the initialisation.
    assert float(state.ema_params["model"]["D"]) != float(params["model"]["D"])


def test_fit_resume_after_kill_equals_uninterrupted(datasets, toy, tmp_path):
    tr, va = datasets
    pot, params, st = toy
    cfg = _config(epochs=4, ema_decay=0.9)
    ref = train.fit(pot, params, tr, va, cfg, stats=st, checkpoint_path=tmp_path / "a.ckpt")

    class Killed(Exception):
        pass

    def kill_at(epoch, batch):
        def cb(info):
            if info["event"] == "step" and info["epoch"] == epoch and info["batch"] == batch:
                raise Killed

        return cb

    ckpt = tmp_path / "b.ckpt"
    # A budget with room for one step: a clean stop mid-epoch that validates the EMA
    # parameters and checkpoints its position.
    first = train.fit(pot, params, tr, va, cfg, stats=st, checkpoint_path=ckpt,
                      budget=_OneStepBudget(3600.0))
    assert first.stop_reason == "time_budget" and int(first.state.step) == 1
    assert first.best["partial"] and first.n_steps == 1
    # Killed mid-epoch 2 (work since the epoch-1 checkpoint is lost), then mid-epoch 3.
    with pytest.raises(Killed):
        train.fit(pot, params, tr, va, cfg, stats=st, checkpoint_path=ckpt,
                  callback=kill_at(1, 1))
    with pytest.raises(Killed):
        train.fit(pot, params, tr, va, cfg, stats=st, checkpoint_path=ckpt,
                  callback=kill_at(2, 0))
    res = train.fit(pot, params, tr, va, cfg, stats=st, checkpoint_path=ckpt)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                        (ref.state, ref.params), (res.state, res.params))
    assert all(jax.tree.leaves(same)), same
    assert [h["valid_loss"] for h in res.history] == [h["valid_loss"] for h in ref.history]
    assert ref.best == res.best and len(res.history) == 4
    # A finished run resumes to itself without training.
    again = train.fit(pot, params, tr, va, cfg, stats=st, checkpoint_path=ckpt)
    assert int(again.state.step) == int(ref.state.step)


class _TickingClock:
    """A stand-in for the ``time`` module whose ``monotonic()`` advances a fixed tick per call.

    The budget logic then sees the same clock on every machine, however loaded: the test checks
    the loop's arithmetic (stop before the deadline, keep room for the final validation), not
    how fast this CPU happens to be.
    """

    def __init__(self, tick: float):
        self.now, self.tick = 1000.0, tick

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def test_time_budget_bounds_the_run(datasets, monkeypatch):
    from jaxpot.train import budget as budget_module
    from jaxpot.train import checkpoint as checkpoint_module
    from jaxpot.train import loop as loop_module
    from jaxpot.train import metrics as metrics_module

    tr, va = datasets
    st = data.statistics(tr)
    pot, params = _toy(st)
    clock = _TickingClock(tick=0.05)
    monkeypatch.setattr(budget_module, "time", clock)
    for module in (budget_module, checkpoint_module, loop_module, metrics_module):
        monkeypatch.setattr(module, "time", clock)
    budget_s = 8.0
    cfg = _config(epochs=100000, time_budget_min=budget_s / 60)
    t0 = clock.monotonic()
    res = train.fit(pot, params, tr, va, cfg, stats=st)
    elapsed = clock.monotonic() - t0
    assert res.stop_reason == "time_budget"
    # On this clock the run ends within the budget plus the final validation's few ticks;
    # without the budget it would run 100 000 epochs.
    assert budget_s * 0.5 < elapsed < budget_s + 1.0, elapsed
    assert int(res.state.step) > 0
    # The budget kept room for validating the last EMA parameters: the result is validated,
    # and training ran past the last whole epoch (up to the budget, not to an epoch boundary).
    assert res.best is not None and np.isfinite(res.best["loss"])
    steps_per_epoch = -(-len(tr) // cfg.batch_size)
    assert int(res.state.step) > steps_per_epoch * len(res.history)
    assert all(np.isfinite(np.asarray(x)) for x in jax.tree.leaves(res.params))


def test_early_stopping(datasets, toy):
    tr, va = datasets
    pot, params, st = toy
    # min_delta=1: no later epoch can improve by 100 %, so patience runs out.
    cfg = _config(epochs=4, ema_decay=0.9, patience=2, min_delta=1.0)
    res = train.fit(pot, params, tr, va, cfg, stats=st)
    assert res.stop_reason == "early_stopping"
    assert len(res.history) == 3  # the first epoch sets the best; two more without progress
    assert res.best["epoch"] == 1


def test_attach_refs_to_model_shift_params(datasets):
    st = data.statistics(datasets[0])
    base = potentials.morse(D=0.3, alpha=1.4, r0=2.7, cutoff=CUTOFF)

    def init(key, system):
        return {"pair": base.init(key, system), "atomic_shift": jnp.zeros(2),
                "atomic_scale": jnp.ones(2)}

    def energy(p, system):
        idx = jnp.where(system.species == 29, 1, 0)
        e = p["atomic_scale"][idx] * 0.0 + p["atomic_shift"][idx]
        return base.energy(p["pair"], system) + jnp.sum(jnp.where(system.atom_mask, e, 0.0))

    pot = base._replace(init=init, energy=energy,
                        config={"name": "toy", "kwargs": {"species": ["H", "Cu"]}})
    pot2, p2 = train.attach_element_refs(pot, pot.init(None, None), st,
                                         species_index=train.loop.species_index(pot))
    assert pot2 is pot
    assert float(p2["atomic_shift"][1]) == pytest.approx(st.element_refs[29])
    assert float(p2["atomic_scale"][0]) == pytest.approx(st.force_rms)
    # Frozen shift: only the other parameters train (16-atom cells only: one shape to compile).
    tr, va = (d[[i for i, s in enumerate(d.structures) if s.n_atoms == 16]] for d in datasets)
    res = train.fit(pot2, p2, tr, va, _config(epochs=1, lr=0.05), stats=st,
                    frozen=[("atomic_shift",)])
    np.testing.assert_array_equal(np.asarray(res.state.params["atomic_shift"]),
                                  np.asarray(p2["atomic_shift"]))
    assert float(res.state.params["pair"]["D"]) != float(p2["pair"]["D"])


def test_cli_train_then_eval(tmp_path, capsys):
    import ase.io

    from jaxpot import cli, load_model

    images = _emt_images(8, seed=20)
    ase.io.write(tmp_path / "train.xyz", images[1:], format="extxyz")
    ase.io.write(tmp_path / "valid.xyz", images[:1], format="extxyz")  # one shape to compile
    out = tmp_path / "run"
    argv = ["train", "--train", str(tmp_path / "train.xyz"), "--valid",
            str(tmp_path / "valid.xyz"), "--model", "morse", "--model-kwargs",
            '{"D": 0.3, "alpha": 1.4, "r0": 2.7}', "--cutoff", str(CUTOFF), "--epochs", "2",
            "--batch-size", "3", "--lr", "0.01", "--seed", "1", "--time-budget-min", "10",
            "--out", str(out)]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 2 and summary["stop_reason"] == "epochs"
    for f in ("model", "metrics.csv", "checkpoint", "plots/learning_curve.png",
              "plots/parity.png"):
        assert os.path.getsize(out / f) > 0, f
    rows = open(out / "metrics.csv").read().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,step")
    pot, params = load_model(out / "model")
    assert pot.config["name"] == "with_element_refs"

    assert cli.main(["eval", str(out / "model"), str(tmp_path / "valid.xyz")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_structures"] == 1
    for k in ("energy_mae_mev_per_atom", "energy_rmse_mev_per_atom", "force_mae_mev_per_a",
              "force_rmse_mev_per_a", "stress_mae_mev_per_a3"):
        assert np.isfinite(metrics[k]) and metrics[k] >= 0
    assert metrics["force_mae_mev_per_a"] == pytest.approx(
        summary["best"]["force_mae_mev_per_a"], rel=1e-4)

    # Per-structure rows: against a direct evaluation of each frame, and summing to the total.
    import csv

    from jaxpot.potential import energy_forces_stress
    from jaxpot.system import System

    table = tmp_path / "per_structure.csv"
    assert cli.main(["eval", str(out / "model"), str(tmp_path / "train.xyz"),
                     "--per-structure", str(table)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(open(table)))
    assert [int(r["index"]) for r in rows] == list(range(7))
    efs = energy_forces_stress(pot)
    n_tot = mae_sum = 0.0
    for r, atoms in zip(rows, images[1:], strict=True):
        e, f, _ = efs(params, System.from_ase(atoms, cutoff=pot.cutoff))
        n = len(atoms)
        de = 1e3 * (float(e) - atoms.get_potential_energy()) / n
        df = np.asarray(f)[:n] - atoms.get_forces()
        assert int(r["n_atoms"]) == n and "train.xyz" in r["source"]
        assert float(r["energy_error_mev_per_atom"]) == pytest.approx(de, abs=1e-3)
        assert float(r["force_mae_mev_per_a"]) == pytest.approx(1e3 * np.abs(df).mean(),
                                                                 rel=1e-4)
        assert float(r["force_max_error_mev_per_a"]) == pytest.approx(
            1e3 * np.linalg.norm(df, axis=1).max(), rel=1e-4)
        n_tot += n
        mae_sum += n * float(r["force_mae_mev_per_a"])
    assert mae_sum / n_tot == pytest.approx(metrics["force_mae_mev_per_a"], rel=1e-4)
    assert np.ptp([float(r["force_mae_mev_per_a"]) for r in rows]) > 0
    assert cli.main(["eval", str(out / "model"), str(tmp_path / "train.xyz"),
                     "--per-structure", str(tmp_path / "train.xyz")]) == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err

    # Resuming a finished run trains no further; bad input is one clear error.
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 2
    assert cli.main(["train", "--train", str(tmp_path / "nope.xyz"), "--model", "morse",
                     "--out", str(tmp_path / "x")]) == 2
    assert "nope.xyz: no such file" in capsys.readouterr().err


def test_yaml_config_and_flag_overrides(tmp_path):
    from jaxpot.train.commands import load_config

    path = tmp_path / "c.yaml"
    path.write_text("model: morse\nlr: 1e-3\nepochs: 7\nmodel_kwargs: {D: 0.3}\n")
    cfg = load_config(str(path), {"epochs": 2, "seed": None})
    assert cfg.lr == 1e-3 and cfg.epochs == 2 and cfg.seed == 0 and cfg.model == "morse"
    assert cfg.model_kwargs == {"D": 0.3}
    path.write_text("learning_rate: 1.0\n")
    with pytest.raises(ValueError, match="unknown training option"):
        load_config(str(path), {})
    for name in ("train_cu_nequip.yaml", "train_ethanol_nequip.yaml"):
        example = os.path.join(os.path.dirname(__file__), "..", "examples", name)
        cfg = load_config(example, {})
        assert cfg.model == "nequip" and cfg.time_budget_min > 0


@pytest.mark.slow
def test_cli_sigkill_and_resume_equals_uninterrupted(tmp_path):
    """A real kill -9 of ``jaxpot train`` in a subprocess, then a resume (slow: 3 processes)."""
    import signal
    import subprocess
    import sys

    import ase.io

    from jaxpot import load_model

    images = _emt_images(8, seed=30)
    ase.io.write(tmp_path / "train.xyz", images[1:], format="extxyz")
    ase.io.write(tmp_path / "valid.xyz", images[:1], format="extxyz")

    def argv(out):
        return [sys.executable, "-m", "jaxpot", "train", "--train", str(tmp_path / "train.xyz"),
                "--valid", str(tmp_path / "valid.xyz"), "--model", "morse", "--model-kwargs",
                '{"D": 0.3, "alpha": 1.4, "r0": 2.7}', "--cutoff", str(CUTOFF), "--epochs",
                "40", "--batch-size", "2", "--lr", "0.01", "--dtype", "float64", "--out",
                str(tmp_path / out)]

    env = {**os.environ, "CI": "1"}
    subprocess.run(argv("a"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(argv("b"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "b" / "checkpoint"
    while not ckpt.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    subprocess.run(argv("b"), check=True, env=env, capture_output=True)
    _, pa = load_model(tmp_path / "a" / "model")
    _, pb = load_model(tmp_path / "b" / "model")
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    def rows(out):
        lines = (tmp_path / out / "metrics.csv").read_text().strip().splitlines()
        return [[c for k, c in enumerate(r.split(",")) if k != 2] for r in lines]  # no time_s

    assert rows("a") == rows("b") and len(rows("a")) > 2


def test_budget_schedule_follows_steps_or_time():
    """Without a deadline BudgetSchedule is optax's warm-up + cosine; with one it decays over
    the time left (reaching the final rate at the end), never goes back up, and a resumed
    schedule continues from its saved progress."""
    ref = train.make_schedule(1e-2, total_steps=200, warmup_steps=10, final_lr_fraction=0.01)
    sch = train.BudgetSchedule(1e-2, total_steps=200, warmup_steps=10, final_lr_fraction=0.01)
    for k in (0, 5, 10, 11, 50, 120, 199):
        assert sch(k) == pytest.approx(float(ref(k)), rel=1e-5, abs=1e-12)
    assert 0 < float(ref(5)) < float(ref(10)) and sch.progress == pytest.approx(189 / 190)

    # A budget far shorter than the steps: decay follows the clock, not the step count.
    sch = train.BudgetSchedule(1e-2, total_steps=10_000, warmup_steps=2,
                               final_lr_fraction=0.01)
    t0 = 100.0
    rates = [sch(2 + k, now=t0 + k, t_end=t0 + 10.0) for k in range(12)]
    assert rates[0] == pytest.approx(1e-2)
    assert rates[5] == pytest.approx(1e-2 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 0.5))))
    assert rates[10] == pytest.approx(1e-4) and rates[11] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(rates[:-1], rates[1:], strict=True))
    # The step schedule alone would still be near the peak here.
    assert float(ref(12)) > 0.9e-2
    # A later, longer deadline estimate never raises the rate again.
    assert sch(20, now=t0 + 11, t_end=t0 + 100.0) == pytest.approx(1e-4)

    # Resume: progress 0.5 carried over, the remaining half spread over the new budget.
    res = train.BudgetSchedule(1e-2, total_steps=10_000, warmup_steps=2,
                               final_lr_fraction=0.01, progress=0.5)
    mid = 1e-2 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 0.5)))
    assert res(500, now=0.0, t_end=20.0) == pytest.approx(mid)
    assert res(501, now=10.0, t_end=20.0) == pytest.approx(
        1e-2 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 0.75))))


def test_evaluate_partial_when_the_deadline_passes(datasets, toy, monkeypatch):
    """With ``partial=True`` an evaluation cut short by its deadline reports the batches it
    did (and says how many structures); without it, nothing."""
    from types import SimpleNamespace

    from jaxpot.train import metrics as tmetrics

    _, va = datasets
    pot, params, _ = toy
    full = train.evaluate(pot, params, va, batch_size=1)
    clock = iter([0.0, 2.0, 2.0, 2.0])  # the deadline (1.0) passes after the first batch
    monkeypatch.setattr(tmetrics, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    part = train.evaluate(pot, params, va, batch_size=1, deadline=1.0, partial=True)
    assert part["n_structures"] == 1 < full["n_structures"] == len(va)
    assert part["energy_mae_mev_per_atom"] != full["energy_mae_mev_per_atom"]
    clock = iter([0.0, 2.0])
    assert train.evaluate(pot, params, va, batch_size=1, deadline=1.0) is None


def test_float64_training_uses_scoped_x64(tmp_path, x64_off):
    """``dtype: float64`` runs the job under ``jax.enable_x64`` without switching 64-bit mode
    on for the rest of the process (library code never flips it globally)."""
    import ase.io

    from jaxpot.serialization import load_model

    ase.io.write(tmp_path / "t.xyz", _emt_images(4, seed=40), format="extxyz")
    cfg = train.TrainConfig(train=str(tmp_path / "t.xyz"), model="morse", cutoff=CUTOFF,
                            model_kwargs={"D": 0.3, "alpha": 1.4, "r0": 2.7}, epochs=1,
                            batch_size=2, dtype="float64", progress=False, plots=False,
                            valid_fraction=0.25, out=str(tmp_path / "run"))
    result = train.train(cfg)
    assert not jax.config.jax_enable_x64  # the global flag (x64_off fixture), not a context
    assert result["best"]["n_structures"] == 1
    with jax.enable_x64(True):  # what the file stores (without x64 JAX would truncate)
        _, params = load_model(result["model"])
    assert {np.asarray(x).dtype for x in jax.tree.leaves(params)} == {np.dtype("float64")}
