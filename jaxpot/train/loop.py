"""The training loop: epochs, validation with EMA parameters, early stopping, a wall-time
budget, checkpoints that resume exactly, metrics CSV, progress bar and plots.

Two entry points:

* :func:`fit` trains a given potential and parameters on given datasets.
* :func:`train` does the whole job from a :class:`TrainConfig` (what ``jaxpot train`` runs):
  read data, fit element references, build the model, :func:`fit`, save the model file,
  metrics and plots.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxpot import data as jdata
from jaxpot.potential import Potential, from_config
from jaxpot.train.checkpoint import load_checkpoint, save_checkpoint
from jaxpot.train.loss import LossWeights, default_weights, with_element_refs
from jaxpot.train.metrics import evaluate
from jaxpot.train.state import BudgetSchedule, TrainState, make_optimizer
from jaxpot.train.step import make_eval_step, make_train_step

__all__ = ["TrainConfig", "FitResult", "fit", "train", "attach_element_refs", "build_model"]

CSV_FIELDS = [
    "epoch", "step", "time_s", "lr", "train_loss", "valid_loss",
    "energy_mae_mev_per_atom", "energy_rmse_mev_per_atom", "force_mae_mev_per_a",
    "force_rmse_mev_per_a", "stress_mae_mev_per_a3",
]


@dataclasses.dataclass
class TrainConfig:
    """Options of a training run (also the fields of a ``jaxpot train`` YAML file).

    Attributes:
      train: training extxyz file.
      valid: validation extxyz file; if None, ``valid_fraction`` of ``train`` is held out.
      valid_fraction: held-out fraction when there is no ``valid`` file.
      energy_key, forces_key, stress_key: label names in the files.
      model: registered potential name (``nequip``, ``mace``, ``morse``, ...).
      model_kwargs: keyword arguments of the model factory.
      cutoff: neighbour cutoff for the edges, Å (also passed to the model if it takes one).
      batch_size: structures per batch.
      eval_batch_size: structures per validation batch (default ``batch_size``).
      epochs: maximum number of epochs (None: until the time budget runs out, or 100 epochs
        without a budget).
      lr: peak learning rate.
      warmup_epochs: linear warm-up length (epochs, may be fractional).
      decay: ``cosine``, ``exponential`` or ``constant`` after warm-up, over whichever runs
        out first, the epochs or the time budget (:class:`~jaxpot.train.BudgetSchedule`).
      final_lr_fraction: final / peak learning rate.
      optimizer: ``adam`` or ``adamw``; weight_decay for adamw.
      clip_norm: global gradient-norm clip (0/None disables).
      ema_decay: parameter EMA decay used for evaluation and the saved model.
      energy_weight, forces_weight, stress_weight: loss weights; None means the default rule of
        :func:`jaxpot.train.default_weights` (forces normalised by their RMS, energies
        balanced against them through ``energy_length``).
      energy_length: ℓ of the default weights, Å: an energy error of δ per atom weighs as much
        as a force-component error of δ/ℓ (None: each term divided by its label variance).
      trainable_refs: train the per-element reference energies too.
      patience: early-stopping patience in epochs without validation-loss improvement (None:
        20 without a time budget, off with one, as the learning rate then decays over the
        whole budget); min_delta: relative improvement that counts.
      time_budget_min: wall-time budget of the whole run in minutes (None: unlimited).
      seed: seed for the split, initialisation and shuffling.
      out: output directory.
      dtype: ``float32`` or ``float64``.
      max_shapes: upper bound on padded batch shapes (= compilations per step function).
      progress: show a tqdm bar (default: only on a terminal and when ``CI`` is not set).
      plots: write PNG plots.
    """

    train: str | None = None
    valid: str | None = None
    valid_fraction: float = 0.1
    energy_key: str = "energy"
    forces_key: str | None = "forces"
    stress_key: str | None = "stress"
    model: str = "nequip"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    cutoff: float = 5.0
    batch_size: int = 4
    eval_batch_size: int | None = None
    epochs: int | None = None
    lr: float = 1e-2
    warmup_epochs: float = 1.0
    decay: str = "cosine"
    final_lr_fraction: float = 0.01
    optimizer: str = "adam"
    weight_decay: float = 0.0
    clip_norm: float | None = 10.0
    ema_decay: float = 0.99
    energy_weight: float | None = None
    forces_weight: float | None = None
    stress_weight: float | None = None
    energy_length: float | None = 1.5
    trainable_refs: bool = False
    patience: int | None = None
    min_delta: float = 0.0
    time_budget_min: float | None = None
    seed: int = 0
    out: str = "run"
    dtype: str = "float32"
    max_shapes: int = 6
    progress: bool | None = None
    plots: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a dict (a parsed YAML file); unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(names)}")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        out = {}
        for k, v in d.items():
            base = types[k].replace(" | None", "")
            if v is None or base not in ("float", "int"):
                out[k] = v
                continue
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string
                out[k] = float(v) if base == "float" else int(v)
            except (TypeError, ValueError):
                raise ValueError(f"training option {k!r} must be a number, got {v!r}") from None
        return cls(**out)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      params: best EMA parameters (lowest validation loss), or the last EMA parameters if no
        validation happened.
      state: final :class:`~jaxpot.train.TrainState`.
      history: one dict per epoch (the rows of the metrics CSV).
      best: validation metrics of ``params``.
      stop_reason: ``"epochs"``, ``"early_stopping"`` or ``"time_budget"``.
      n_traces: compilations of the train step in this call.
      eval_step: the compiled evaluation step (reuse it with :func:`evaluate`).
      shapes: the padded batch shapes used (reuse them to avoid compiling again).
      eval_time_s: last measured (or, if none, estimated) validation time, s.
    """

    params: Any
    state: TrainState
    history: list
    best: dict | None
    stop_reason: str
    n_traces: int
    eval_step: Any = None
    shapes: list | None = None
    eval_time_s: float = 0.0


def _progress_enabled(flag: bool | None) -> bool:
    if flag is not None:
        return bool(flag)
    return sys.stderr.isatty() and not os.environ.get("CI")


def _to_float(x) -> float:
    return float(np.asarray(x))


def fit(
    potential: Potential,
    params,
    train_data: jdata.Dataset,
    valid_data: jdata.Dataset,
    config: TrainConfig,
    *,
    weights: LossWeights | None = None,
    stats: jdata.Statistics | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    csv_path: str | os.PathLike | None = None,
    deadline: float | None = None,
    reserve_s: float = 0.0,
    callback: Callable[[dict], None] | None = None,
    meta_extra: dict | None = None,
    verbose: bool | None = None,
    frozen: list | None = None,
) -> FitResult:
    """Train ``potential`` from ``params`` with Optax, EMA, early stopping and checkpoints.

    Each epoch runs over :class:`~jaxpot.data.BatchLoader` batches (shuffled from
    ``(config.seed, epoch)``), then evaluates the EMA parameters on ``valid_data``; the EMA
    parameters with the lowest validation loss are kept. After every epoch a checkpoint is
    written (if ``checkpoint_path``), so a killed run resumed with the same arguments ends with
    exactly the parameters of an uninterrupted run.

    Time budget: with ``deadline`` (``time.monotonic()`` seconds) or
    ``config.time_budget_min`` (counted from the call), the loop stops before a step would
    run past the deadline minus the time needed for a final validation, the checkpoint and
    ``reserve_s`` (estimated from measured step, compile and validation times; before the
    first validation it trains on as long as the step itself fits, and returns the last EMA
    parameters if no validation fits). At least one step is always taken. On a budget stop the
    position is checkpointed (mid-epoch too), and a resumed run continues from that batch.

    Args:
      potential: the model (already including element references).
      params: initial parameters (ignored when resuming from a checkpoint).
      train_data, valid_data: datasets with edges for ``potential.cutoff``.
      config: options (batch size, epochs, lr schedule, patience, seed, dtype ...).
      weights: loss weights (default: :func:`~jaxpot.train.default_weights` of ``stats``).
      stats: training statistics (computed if needed).
      checkpoint_path: file to checkpoint to and resume from.
      resume: resume from ``checkpoint_path`` if it exists.
      csv_path: write the metrics CSV here (rewritten atomically every epoch).
      deadline: absolute ``time.monotonic()`` deadline (overrides ``time_budget_min``).
      reserve_s: seconds to keep free at the end (model saving, plots).
      callback: called with ``{"event": "step" | "epoch", "epoch", "batch", "state", ...}``;
        exceptions it raises propagate (tests use this to simulate a kill).
      meta_extra: JSON-serialisable data stored in the checkpoint's meta.
      verbose: print one line per epoch to stderr (default: when the progress bar shows).
      frozen: parameter paths (tuples of dict keys, e.g. ``("atomic_shift",)``) kept fixed.

    Returns:
      A :class:`FitResult`.
    """
    t_start = time.monotonic()
    if deadline is None and config.time_budget_min is not None:
        deadline = t_start + 60.0 * float(config.time_budget_min)
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype float64 needs jax.config.update('jax_enable_x64', True) "
                         "before any array is created")
    dtype = jax.numpy.dtype(config.dtype) if config.dtype else None
    if weights is None:
        stats = stats or jdata.statistics(train_data)
        weights = _weights_from_config(config, stats)
    shapes = jdata.choose_shapes([train_data, valid_data], max_shapes=config.max_shapes)
    loader = jdata.BatchLoader(train_data, config.batch_size, shapes=shapes, shuffle=True,
                               seed=config.seed, dtype=dtype)
    vloader = jdata.BatchLoader(valid_data, config.eval_batch_size or config.batch_size,
                                shapes=shapes, shuffle=False, dtype=dtype)
    steps_per_epoch = len(loader)
    # The optimiser runs at unit rate; the step multiplies its updates by the rate the
    # schedule gives on the host, so the decay can follow the time budget (BudgetSchedule).
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    optimizer, _ = make_optimizer(
        1.0, total_steps=1, decay="constant", clip_norm=config.clip_norm,
        name=config.optimizer, weight_decay=config.weight_decay)
    # Without an epoch cap a budgeted run trains until its time is up (the schedule follows the
    # clock); an unbudgeted one stops after 100 epochs.
    n_epochs = (int(config.epochs) if config.epochs is not None
                else (100 if deadline is None else 1_000_000))
    # Early stopping by default only without a budget: with one, the schedule decays over the
    # whole budget and the best EMA parameters are kept anyway.
    patience = (config.patience if config.patience is not None
                else (20 if deadline is None else None))
    schedule = BudgetSchedule(config.lr, total_steps=n_epochs * steps_per_epoch,
                              warmup_steps=warmup_steps, decay=config.decay,
                              final_lr_fraction=config.final_lr_fraction)
    if frozen:
        import optax

        frozen_set = {tuple(p) for p in frozen}
        mask = jax.tree_util.tree_map_with_path(
            lambda path, _: tuple(getattr(k, "key", k) for k in path) in frozen_set, params)
        optimizer = optax.chain(optimizer, optax.masked(optax.set_to_zero(), mask))
    opt_key = (config.clip_norm, config.optimizer, config.weight_decay,
               tuple(sorted(tuple(p) for p in frozen or ())))
    train_step, eval_step = _compiled_steps(
        potential, optimizer, opt_key, weights, config.ema_decay,
        weights.stress > 0 or valid_data.has_stress)
    traces_before = train_step.n_traces
    params = jax.tree.map(lambda x: jax.numpy.asarray(x, _leaf_dtype(x, dtype)), params)
    state = TrainState.create(params, optimizer, seed=config.seed)

    meta = {"epoch": 0, "batch": 0, "history": [], "best": None, "bad_epochs": 0,
            "accum": None, "seed": config.seed, "potential": potential.config,
            "weights": list(weights), "steps_per_epoch": steps_per_epoch,
            "stop_reason": None}
    if meta_extra:
        meta.update(meta_extra)
    best_params = None
    if checkpoint_path is not None and resume and os.path.exists(checkpoint_path):
        state, best_params, saved = load_checkpoint(checkpoint_path, state, state.params)
        if saved.get("steps_per_epoch") != steps_per_epoch:
            raise ValueError(f"{checkpoint_path}: written for {saved.get('steps_per_epoch')} "
                             f"steps per epoch, this run has {steps_per_epoch} (different data "
                             "or batch size); use --restart")
        meta.update(saved)
        meta["stop_reason"] = None
        schedule.progress = float(meta.get("lr_progress", 0.0))

    history: list[dict] = meta["history"]
    best = meta["best"]
    show = _progress_enabled(config.progress)
    compiled: set = set()
    t_step = 0.0           # steady-state step time
    t_compile = 0.0        # largest first-step (compile) time seen
    t_eval = None          # last measured validation time
    t_ckpt = 0.0
    stop_reason = "epochs"

    def eval_estimate() -> float:
        if t_eval is not None:
            return t_eval
        # Not measured yet: an evaluation step (forces and maybe stress) can take longer to
        # compile than the train step, hence the factor 2.
        return 2.0 * len(vloader.used_shapes) * t_compile + len(vloader) * t_step

    def train_end() -> float | None:
        """When the last step must finish: the deadline less the final validation, the
        checkpoint and the reserve (None without a budget)."""
        if deadline is None:
            return None
        return deadline - eval_estimate() - t_ckpt - reserve_s

    def out_of_time(shape) -> bool:
        if deadline is None:
            return False
        est = t_step if shape in compiled else max(t_compile, t_step)
        now = time.monotonic()
        if now + est + t_ckpt + reserve_s > deadline:
            return True
        if best is None:
            # Nothing validated yet: more training beats idling; validation may be dropped.
            return False
        return now + est + eval_estimate() + t_ckpt + reserve_s > deadline

    def validate(st):
        """Validation metrics of the EMA params, or None if the budget ran out meanwhile."""
        nonlocal t_eval
        t0 = time.monotonic()
        m = evaluate(potential, st.ema_params, vloader, weights=weights, eval_step=eval_step,
                     deadline=None if deadline is None else deadline - t_ckpt - reserve_s)
        if m is not None:
            t_eval = time.monotonic() - t0
        return m

    def checkpoint(st, bp):
        nonlocal t_ckpt
        if checkpoint_path is None:
            return
        t0 = time.monotonic()
        meta.update(history=history, best=best, lr_progress=schedule.progress)
        save_checkpoint(checkpoint_path, st, bp, meta)
        t_ckpt = time.monotonic() - t0

    n_steps_taken = 0
    lr = schedule.lr
    epoch = int(meta["epoch"])
    if meta.get("early_stopped"):
        stop_reason = "early_stopping"
        epoch = n_epochs
    while epoch < n_epochs:
        start = int(meta["batch"])
        accum = meta["accum"] or {"loss_sum": 0.0, "n": 0.0}
        plan = loader.plan(epoch)[start:]
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}",
                       leave=False, dynamic_ncols=True)
        stopped = False
        batches = loader.batches(epoch, start=start)
        for j, ((shape, _), batch) in enumerate(zip(plan, batches, strict=True)):
            if n_steps_taken > 0 and out_of_time(shape):
                stopped = True
                meta["batch"] = start + j
                break
            t0 = time.monotonic()
            lr = schedule(int(state.step), t0, train_end())
            state, m = train_step(state, batch, np.asarray(lr, np.float32))
            loss = _to_float(m["loss"])  # also waits for the step to finish
            dt = time.monotonic() - t0
            if shape in compiled:
                t_step = dt if t_step == 0.0 else max(0.8 * t_step, dt)
            else:
                compiled.add(shape)
                t_compile = max(t_compile, dt)
            n_steps_taken += 1
            n_real = _to_float(m["n_structures"])
            accum["loss_sum"] += loss * n_real
            accum["n"] += n_real
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}, step "
                                         f"{int(state.step)}; lower the learning rate")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}")
            if callback is not None:
                callback({"event": "step", "epoch": epoch, "batch": start + j, "state": state,
                          "metrics": m})
        if bar is not None:
            bar.close()
        if (not stopped and deadline is not None
                and time.monotonic() + eval_estimate() + t_ckpt + reserve_s > deadline):
            # All batches done but no time to validate: a resumed run validates first.
            stopped = True
            meta["batch"] = steps_per_epoch
        if stopped:
            stop_reason = "time_budget"
            meta["accum"] = accum
            if deadline is None or (time.monotonic() + eval_estimate() + t_ckpt + reserve_s
                                    < deadline):
                m = validate(state)
                if m is not None and (best is None or m["loss"] < best["loss"]):
                    best, best_params = dict(m, epoch=epoch + 1, partial=True), state.ema_params
            meta["epoch"] = epoch
            checkpoint(state, best_params)
            break

        m = validate(state)
        if m is None:  # the budget ran out during validation: a resumed run validates first
            stop_reason = "time_budget"
            meta.update(accum=accum, batch=steps_per_epoch, epoch=epoch)
            checkpoint(state, best_params)
            break
        row = {"epoch": epoch + 1, "step": int(state.step), "time_s": time.monotonic() - t_start,
               "lr": lr,
               "train_loss": accum["loss_sum"] / max(accum["n"], 1.0),
               "valid_loss": m["loss"], **m}
        history.append(row)
        improved = best is None or m["loss"] < best["loss"] * (1.0 - config.min_delta)
        if improved:
            best, best_params = dict(m, epoch=epoch + 1), state.ema_params
            meta["bad_epochs"] = 0
        else:
            meta["bad_epochs"] = int(meta["bad_epochs"]) + 1
        epoch += 1
        meta.update(epoch=epoch, batch=0, accum=None)
        early = patience is not None and meta["bad_epochs"] >= patience
        meta["early_stopped"] = bool(early)
        if csv_path is not None:
            _write_csv(csv_path, history)
        checkpoint(state, best_params)
        if show if verbose is None else verbose:
            _print_epoch(row, config.epochs)
        if callback is not None:
            callback({"event": "epoch", "epoch": epoch - 1, "batch": steps_per_epoch,
                      "state": state, "metrics": m})
        if early:
            stop_reason = "early_stopping"
            break
        if deadline is not None and epoch < n_epochs:
            shape0 = loader.plan(epoch)[0][0]
            if out_of_time(shape0):
                stop_reason = "time_budget"
                break

    final = best_params if best_params is not None else state.ema_params
    return FitResult(params=final, state=state, history=history, best=best,
                     stop_reason=stop_reason, n_traces=train_step.n_traces - traces_before,
                     eval_step=eval_step, shapes=shapes, eval_time_s=eval_estimate())


_STEP_CACHE: dict = {}


def _compiled_steps(potential, optimizer, opt_key, weights, ema_decay, stress):
    """Reuse jitted steps across :func:`fit` calls on the same potential object (so resuming
    in the same process, or fitting again, does not compile again)."""
    key = (id(potential.energy), opt_key, tuple(weights), float(ema_decay), bool(stress))
    hit = _STEP_CACHE.get(key)
    if hit is not None and hit[0] is potential.energy:
        return hit[1], hit[2]
    steps = (make_train_step(potential, optimizer, weights, ema_decay=ema_decay),
             make_eval_step(potential, stress=stress))
    if len(_STEP_CACHE) >= 8:
        _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
    _STEP_CACHE[key] = (potential.energy, *steps)
    return steps


def _leaf_dtype(x, dtype):
    x = np.asarray(x)
    if dtype is not None and np.issubdtype(x.dtype, np.floating):
        return dtype
    return x.dtype


def _weights_from_config(config: TrainConfig, stats: jdata.Statistics) -> LossWeights:
    w = default_weights(stats, energy_length=config.energy_length)
    return LossWeights(
        energy=w.energy if config.energy_weight is None else float(config.energy_weight),
        forces=w.forces if config.forces_weight is None else float(config.forces_weight),
        stress=w.stress if config.stress_weight is None else float(config.stress_weight),
    )


def _write_csv(path, history):
    import csv
    import io

    from jaxpot.train.checkpoint import atomic_write_bytes

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    atomic_write_bytes(path, buf.getvalue().encode())


def _log(msg: str) -> None:
    print(f"jaxpot train: {msg}", file=sys.stderr, flush=True)


def _print_epoch(row: dict, epochs: int | None) -> None:
    of = "" if epochs is None else f"/{epochs}"
    msg = (f"epoch {row['epoch']}{of}  train {row['train_loss']:.4g}  "
           f"valid {row['valid_loss']:.4g}  E {row['energy_mae_mev_per_atom']:.2f} meV/atom  "
           f"F {row['force_mae_mev_per_a']:.1f} meV/Å")
    if "stress_mae_mev_per_a3" in row:
        msg += f"  S {row['stress_mae_mev_per_a3']:.3f} meV/Å³"
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Model construction and element references
# ---------------------------------------------------------------------------------------------


def build_model(name: str, kwargs: dict | None, *, cutoff: float,
                stats: jdata.Statistics | None = None) -> Potential:
    """Build a registered potential, filling in data-derived options the factory accepts.

    ``cutoff``, ``avg_num_neighbors`` and the element list (``species`` / ``elements``) are
    added from the data unless ``kwargs`` sets them, when the factory names them as arguments
    or takes ``**kwargs`` (config-style factories such as ``nequip``); if the factory rejects
    them, it is called with ``kwargs`` alone.
    """
    import inspect

    from jaxpot import potential as _pot

    kwargs = dict(kwargs or {})
    if name not in _pot._REGISTRY:
        import jaxpot.models  # noqa: F401
        import jaxpot.potentials  # noqa: F401
    factory = _pot._REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(_pot.registered())}")
    try:
        sig = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        sig = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values())
    extra = {"cutoff": float(cutoff)}
    if stats is not None:
        extra["avg_num_neighbors"] = float(stats.avg_num_neighbors)
        from ase.data import chemical_symbols

        symbols = [chemical_symbols[z] for z in sorted(stats.element_refs)]
        extra["species"] = symbols
        extra["elements"] = symbols
    if var_kw:
        keys = ["cutoff", "avg_num_neighbors", "species"]
    else:
        keys = [k for k in extra if k in sig]
    filled = dict(kwargs)
    for k in keys:
        if k in extra and not ({"species", "elements"} & set(kwargs) and k in ("species",
                                                                              "elements")):
            filled.setdefault(k, extra[k])
    try:
        return from_config({"name": name, "kwargs": filled})
    except (TypeError, ValueError):
        if filled == kwargs:
            raise
        return from_config({"name": name, "kwargs": kwargs})


def species_index(potential: Potential) -> dict[int, int] | None:
    """``{atomic number: row}`` of a model's per-species arrays, from its config's ``species``."""
    from ase.data import atomic_numbers

    kw = potential.config.get("kwargs", {}) if isinstance(potential.config, dict) else {}
    species = kw.get("species")
    if not isinstance(species, list | tuple):
        return None
    return {int(atomic_numbers[s]) if isinstance(s, str) else int(s): i
            for i, s in enumerate(species)}


_SHIFT_NAMES = ("atomic_shift",)
_SCALE_NAMES = ("atomic_scale",)


def _find_leaf(params, names):
    """Path (tuple of keys) of the first dict entry named in ``names`` holding a 1-D array."""
    if not isinstance(params, dict):
        return None
    for k, v in params.items():
        if k in names and np.ndim(v) == 1:
            return (k,)
    for k, v in params.items():
        sub = _find_leaf(v, names) if isinstance(v, dict) else None
        if sub is not None:
            return (k,) + sub
    return None


def _set_leaf(params, path, value):
    if len(path) == 1:
        return {**params, path[0]: value}
    return {**params, path[0]: _set_leaf(params[path[0]], path[1:], value)}


def _get_leaf(params, path):
    for k in path:
        params = params[k]
    return params


def attach_element_refs(potential: Potential, params, stats: jdata.Statistics, *,
                        trainable: bool = False, species_index: dict[int, int] | None = None):
    """Put the fitted per-element reference energies (and the force scale) into the model.

    If ``params`` contain a per-species atomic shift array (a 1-D leaf named ``atomic_shift``,
    as the ``jaxpot.models`` families have; ``species_index`` maps atomic number → row, or
    rows are atomic numbers when the array has 119 entries) it is set to the references, and
    the matching ``atomic_scale`` array to the force RMS. Otherwise the potential is wrapped with
    :func:`~jaxpot.train.with_element_refs`, which adds ``Σ_i e_{Z_i}`` (constants, or
    trainable with ``trainable=True``). :func:`train` keeps a model's own ``atomic_shift``
    fixed unless ``trainable_refs`` (``fit(..., frozen=[path])``); ``atomic_scale`` trains.

    Returns:
      ``(potential, params)``.

    Raises:
      ValueError: the data has an element the model's species list lacks.
    """
    path = _find_leaf(params, _SHIFT_NAMES)
    if path is not None:
        shift = np.array(_get_leaf(params, path), np.float64)
        index = species_index
        if index is None and shift.shape[0] >= 119:
            index = {z: z for z in stats.element_refs}
        if index is not None:
            for z, v in stats.element_refs.items():
                if z not in index:
                    raise ValueError(f"element Z={z} is in the data but not in the model's "
                                     f"species {sorted(index)}")
                shift[index[z]] = v
            params = _set_leaf(params, path, jax.numpy.asarray(
                shift, jax.numpy.asarray(_get_leaf(params, path)).dtype))
            spath = _find_leaf(params, _SCALE_NAMES)
            if spath is not None and stats.force_rms > 0:
                old = jax.numpy.asarray(_get_leaf(params, spath))
                params = _set_leaf(params, spath, jax.numpy.full_like(old, stats.force_rms))
            return potential, params
    wrapped = with_element_refs(potential, stats.element_refs, trainable=trainable)
    new = {"model": params}
    if trainable:
        from jaxpot.train.loss import element_refs_table

        new["element_refs"] = element_refs_table(stats.element_refs)
    return wrapped, new


# ---------------------------------------------------------------------------------------------
# The whole job
# ---------------------------------------------------------------------------------------------


def _read(path, config: TrainConfig) -> jdata.Dataset:
    return jdata.read_extxyz(path, cutoff=config.cutoff, energy_key=config.energy_key,
                             forces_key=config.forces_key, stress_key=config.stress_key)


def train(config: TrainConfig, *, resume: bool = True, t_start: float | None = None,
          callback: Callable[[dict], None] | None = None) -> dict:
    """Run a training job from a config: data → element refs → model → :func:`fit` → files.

    Writes into ``config.out``: ``model`` (a :func:`jaxpot.save_model` file of the best EMA
    parameters), ``metrics.csv``, ``plots/learning_curve.png``, ``plots/parity.png``,
    ``checkpoint`` (resumed from when present and ``resume``), ``config.json``.

    Args:
      config: the options.
      resume: continue from ``out/checkpoint`` if it exists (False starts over).
      t_start: ``time.monotonic()`` at which the time budget started (default: now).
      callback: passed to :func:`fit`.

    Returns:
      ``{"model": path, "best": metrics, "stop_reason": ..., "epochs": n, "history": [...]}``.
    """
    import json

    t_start = time.monotonic() if t_start is None else t_start
    deadline = (None if config.time_budget_min is None
                else t_start + 60.0 * float(config.time_budget_min))
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if not config.train:
        raise ValueError("no training data: set 'train' in the config or pass --train PATH")
    out = config.out
    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, "checkpoint")
    if not resume and os.path.exists(ckpt):
        os.unlink(ckpt)
    _log(f"reading {config.train}" + (f" and {config.valid}" if config.valid else ""))
    train_set = _read(config.train, config)
    if config.valid:
        valid_set = _read(config.valid, config)
    else:
        train_set, valid_set = jdata.split(train_set, config.valid_fraction, seed=config.seed)
    stats = jdata.statistics(train_set)
    _log(f"data: {len(train_set)} train / {len(valid_set)} valid structures, "
         f"{stats.avg_num_neighbors:.1f} neighbours per atom within {config.cutoff} Å, "
         f"E std {1e3 * stats.energy_std_per_atom:.2f} meV/atom after element refs, "
         f"F rms {1e3 * stats.force_rms:.0f} meV/Å ({time.monotonic() - t_start:.1f} s)")
    hooks = _factory_hooks(config.model)
    if "train" in hooks:  # a model fitted in closed form (e.g. gap), not by gradient descent
        return hooks["train"](config, train_set, valid_set, stats, t_start=t_start)

    if resume and os.path.exists(ckpt):
        saved_cfg = _read_meta_potential(ckpt)
        potential = from_config(saved_cfg)
        params = potential.init(jax.random.key(config.seed), train_set[0].system())
    else:
        model = build_model(config.model, config.model_kwargs, cutoff=config.cutoff,
                            stats=stats)
        params = model.init(jax.random.key(config.seed), train_set[0].system())
        if "prepare" in hooks:  # data-dependent setup (e.g. bpnn descriptor standardisation)
            model, params = hooks["prepare"](model, params, train_set)
        potential, params = attach_element_refs(model, params, stats,
                                                trainable=config.trainable_refs,
                                                species_index=species_index(model))
    if potential.cutoff > config.cutoff + 1e-9:
        raise ValueError(f"model cutoff {potential.cutoff} Å exceeds the data cutoff "
                         f"{config.cutoff} Å")
    from jaxpot.train.checkpoint import atomic_write_bytes

    atomic_write_bytes(os.path.join(out, "config.json"),
                       json.dumps(config.to_dict(), indent=2).encode())

    # Time kept for saving the model and plotting after the loop.
    reserve_s = 0.0 if deadline is None else max(3.0, 0.02 * (deadline - t_start))
    frozen = None
    shift_path = _find_leaf(params, _SHIFT_NAMES)
    if potential.config.get("name") != "with_element_refs" and shift_path is not None:
        if not config.trainable_refs:
            frozen = [shift_path]
    result = fit(potential, params, train_set, valid_set, config, stats=stats, frozen=frozen,
                 checkpoint_path=ckpt, resume=resume, csv_path=os.path.join(out, "metrics.csv"),
                 deadline=deadline, reserve_s=reserve_s, callback=callback,
                 meta_extra={"statistics": stats.to_dict()}, verbose=True)

    from jaxpot.serialization import save_model

    model_path = os.path.join(out, "model")
    best = result.best or {}
    save_model(model_path, potential, result.params,
               metadata={"statistics": stats.to_dict(), "valid_metrics": best,
                         "train_config": config.to_dict(), "stop_reason": result.stop_reason})
    if config.plots and deadline is not None and time.monotonic() + 1.0 > deadline:
        _log("time budget spent: plots skipped")
    elif config.plots:
        from jaxpot.train.plots import save_plots

        preds = None
        if deadline is None or time.monotonic() + result.eval_time_s + 1.0 < deadline:
            vloader = jdata.BatchLoader(valid_set, config.eval_batch_size or config.batch_size,
                                        shapes=result.shapes, shuffle=False,
                                        dtype=jax.numpy.dtype(config.dtype))
            _, preds = evaluate(potential, result.params, vloader, return_predictions=True,
                                eval_step=result.eval_step)
        save_plots(os.path.join(out, "plots"), result.history, preds)
    _log(f"stopped ({result.stop_reason}) after {len(result.history)} epoch(s), "
         f"{int(result.state.step)} steps; best epoch {best.get('epoch')}; model {model_path}; "
         f"{time.monotonic() - t_start:.1f} s")
    return {"model": model_path, "best": best, "stop_reason": result.stop_reason,
            "epochs": len(result.history), "history": result.history,
            "n_traces": result.n_traces}


def _factory_hooks(name: str) -> dict:
    """Optional ``prepare`` / ``train`` attributes of a registered model factory."""
    from jaxpot import potential as _pot

    if name not in _pot._REGISTRY:
        import jaxpot.models  # noqa: F401
    factory = _pot._REGISTRY.get(name)
    return {k: getattr(factory, k) for k in ("prepare", "train") if hasattr(factory, k)}


def _read_meta_potential(path) -> dict:
    import json

    from flax import serialization

    with open(path, "rb") as f:
        raw = serialization.msgpack_restore(f.read())
    return json.loads(raw["meta"])["potential"]

