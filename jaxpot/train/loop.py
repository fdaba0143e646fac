"""The training loop: epochs, validation with EMA parameters, early stopping, a wall-time
budget, checkpoints that resume exactly, metrics CSV, progress bar and plots.

Two entry points:

* :func:`fit` trains a given potential and parameters on given datasets.
* :func:`train` does the whole job from a :class:`TrainConfig` (what ``jaxpot train`` runs):
  read data, fit element references, build the model, :func:`fit`, save the model file,
  metrics and plots.

:func:`fit` is built from pieces a later change can swap: a :class:`~jaxpot.train.TimeBudget`
(one clock for the whole run), a :class:`~jaxpot.train.Checkpointer`, an epoch loop
(:class:`_Trainer`), and the jitted step of :func:`~jaxpot.train.make_train_step`, which
consumes batches where ``place`` put them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxpot import data as jdata
from jaxpot.files import write_csv
from jaxpot.io import check_overlap
from jaxpot.models.cells import fit_cells
from jaxpot.potential import Potential
from jaxpot.train.budget import TimeBudget, as_budget
from jaxpot.train.checkpoint import Checkpointer
from jaxpot.train.config import TrainConfig
from jaxpot.train.loss import LossWeights, default_weights
from jaxpot.train.metrics import evaluate
from jaxpot.train.model_setup import attach_element_refs, build_model, species_index
from jaxpot.train.sharding import data_parallel, is_writer
from jaxpot.train.state import BudgetSchedule, TrainState, make_optimizer
from jaxpot.train.step import make_eval_step, make_train_step

__all__ = ["TrainConfig", "FitResult", "TrainingDiverged", "IncompleteTraining", "fit",
           "train", "attach_element_refs", "build_model", "species_index", "choose_shapes"]

CSV_FIELDS = [
    "epoch", "step", "time_s", "lr", "train_loss", "valid_loss",
    "energy_mae_mev_per_atom", "energy_rmse_mev_per_atom", "force_mae_mev_per_a",
    "force_rmse_mev_per_a", "stress_mae_mev_per_a3",
]


class TrainingDiverged(FloatingPointError):
    """The loss (or the validation loss) became non-finite.

    Attributes:
      step: optimiser steps taken before the diverging one.
      best_params: best validated EMA parameters so far (or None).
      best: their validation metrics (or None).
      state: the state before the diverging step (finite, but perhaps already far off; the
        checkpoint on disk is left as the last one written at the end of an epoch).
    """

    def __init__(self, msg: str, *, step: int, best_params=None, best=None, state=None):
        super().__init__(msg)
        self.step, self.best_params, self.best, self.state = step, best_params, best, state


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      params: best EMA parameters (lowest validation loss), or the last EMA parameters if no
        validation happened.
      state: final :class:`~jaxpot.train.TrainState`.
      history: one dict per epoch (the rows of the metrics CSV).
      best: validation metrics of ``params`` (None when no validation completed).
      stop_reason: ``"epochs"``, ``"early_stopping"`` or ``"time_budget"``.
      n_traces: compilations of the train step in this call.
      eval_step: the compiled evaluation step (reuse it with :func:`evaluate`).
      shapes: the padded batch shapes used (reuse them to avoid compiling again).
      eval_time_s: last measured (or, if none, estimated) validation time, s.
      n_steps: optimiser steps taken in this call.
      first_step_s: seconds from the start of :func:`fit` to the end of its first step
        (data loading, compilation), or None when no step was taken.
      first_step_at: ``time.monotonic()`` at the end of the first step (or None).
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
    n_steps: int = 0
    first_step_s: float | None = None
    first_step_at: float | None = None


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
    budget: TimeBudget | None = None,
    checkpointer: Checkpointer | None = None,
    place: Callable | None = None,
    devices: int | Sequence | None = None,
) -> FitResult:
    """Train ``potential`` from ``params`` with Optax, EMA, early stopping and checkpoints.

    Each epoch runs over :class:`~jaxpot.data.BatchLoader` batches (shuffled from
    ``(config.seed, epoch)``), then evaluates the EMA parameters on ``valid_data``; the EMA
    parameters with the lowest validation loss are kept. After every epoch a checkpoint is
    written (if ``checkpoint_path``), so a killed run resumed with the same arguments ends with
    exactly the parameters of an uninterrupted run.

    Time budget: with ``budget``, ``deadline`` (``time.monotonic()`` seconds) or
    ``config.time_budget_min`` (counted from the call), training runs until the budget, in the
    middle of an epoch if need be, keeping back the measured (or, before any, estimated) time of
    one validation of the EMA parameters, a checkpoint and ``reserve_s``; it then validates the
    last EMA parameters (they become the result if better than the best so far) and checkpoints
    the position, so a resumed run continues from that batch.

    Args:
      potential: the model (already including element references).
      params: initial parameters (ignored when resuming from a checkpoint).
      train_data, valid_data: datasets with edges for ``potential.cutoff``.
      config: options (batch size, epochs, lr schedule, patience, seed, dtype ...).
      weights: loss weights (default: :func:`~jaxpot.train.default_weights` of ``stats``).
      stats: training statistics (computed if needed).
      checkpoint_path: file to checkpoint to and resume from (or give ``checkpointer``).
      resume: resume from the checkpoint if it exists.
      csv_path: write the metrics CSV here (rewritten atomically every epoch).
      deadline: absolute ``time.monotonic()`` deadline (overrides ``time_budget_min``).
      reserve_s: seconds to keep free at the end (model saving, plots).
      callback: called with ``{"event": "step" | "epoch", "epoch", "batch", "state", ...}``;
        exceptions it raises propagate (tests use this to simulate a kill).
      meta_extra: JSON-serialisable data stored in the checkpoint's meta.
      verbose: print one line per epoch to stderr (default: when the progress bar shows).
      frozen: parameter paths (tuples of dict keys, e.g. ``("atomic_shift",)``) kept fixed.
      budget: a :class:`~jaxpot.train.TimeBudget` shared with the caller (overrides
        ``deadline`` and ``time_budget_min``).
      checkpointer: a :class:`~jaxpot.train.Checkpointer` (overrides ``checkpoint_path``);
        its fingerprint guards against resuming a different run.
      place: ``batch -> batch`` applied to every batch before the step (device placement or
        sharding; default: as the loader made it).
      devices: data-parallel training over several devices (:mod:`jaxpot.train.sharding`): a
        count, a list of devices, or None for ``config.devices`` (None there too: all
        devices, as many as divide the batch sizes). Batches are split along their leading
        axis, parameters replicated; with several processes (``jax.distributed``) only
        process 0 writes the checkpoint and the metrics CSV.

    Returns:
      A :class:`FitResult`.

    Raises:
      TrainingDiverged: the loss became non-finite (the checkpoint on disk is left as it was,
        the last good one).
      ValueError: bad options, or a checkpoint of a different run.
    """
    config.validate()
    budget = as_budget(budget, deadline=deadline, minutes=config.time_budget_min)
    ckpt = checkpointer or Checkpointer(checkpoint_path)
    trainer = _Trainer(potential, params, train_data, valid_data, config, budget=budget,
                       weights=weights, stats=stats, frozen=frozen, reserve_s=reserve_s,
                       place=place, checkpointer=ckpt,
                       devices=getattr(config, "devices", None) if devices is None else devices)
    if meta_extra:
        trainer.meta.update(meta_extra)
    if resume and ckpt.exists():
        trainer.restore()
    show = _progress_enabled(config.progress)
    trainer.run(callback=callback, csv_path=csv_path, show=show,
                verbose=show if verbose is None else verbose)
    return trainer.result()


EVAL_MARGIN = 1.25
"""Factor on the expected validation time that a budgeted run keeps back for it."""


class _Trainer:
    """One call of :func:`fit`: loaders, optimiser, schedule, compiled steps, the training
    state and the clocks that decide when to stop."""

    def __init__(self, potential, params, train_data, valid_data, config: TrainConfig, *,
                 budget: TimeBudget, weights, stats, frozen, reserve_s: float, place,
                 checkpointer: Checkpointer, devices=None):
        self.t_start = time.monotonic()
        if config.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError("dtype float64 needs 64-bit JAX: run inside `with "
                             "jax.enable_x64(True):` or set jax_enable_x64 at start-up")
        for name, ds in (("training", train_data), ("validation", valid_data)):
            if len(ds) == 0:
                raise ValueError(f"no {name} structures: fit needs at least one")
        self.potential, self.config, self.budget = potential, config, budget
        self.ckpt, self.reserve_s, self.place = checkpointer, float(reserve_s), place
        dtype = jax.numpy.dtype(config.dtype)
        if weights is None:
            weights = _weights_from_config(config, stats or jdata.statistics(train_data))
        self.weights = weights
        self.shapes = choose_shapes([train_data, valid_data], config.max_shapes)
        eval_batch = config.eval_batch_size or config.batch_size
        self.dp = data_parallel(devices, batch_sizes=(config.batch_size, eval_batch))
        put = jax.device_put if self.dp is None else self.dp.put
        self.loader = jdata.BatchLoader(train_data, config.batch_size, shapes=self.shapes,
                                        shuffle=True, seed=config.seed, dtype=dtype, put=put)
        self.vloader = jdata.BatchLoader(valid_data, eval_batch, shapes=self.shapes,
                                         shuffle=False, dtype=dtype, put=put)
        self.steps_per_epoch = len(self.loader)
        # Without an epoch cap a budgeted run trains until its time is up (the schedule follows
        # the clock); an unbudgeted one stops after 100 epochs. Early stopping by default only
        # without a budget: with one, the rate decays over the whole budget.
        self.n_epochs = (int(config.epochs) if config.epochs is not None
                         else (100 if not budget.limited else 1_000_000))
        self.patience = (config.patience if config.patience is not None
                         else (None if budget.limited else 20))
        self.schedule = BudgetSchedule(
            config.lr, total_steps=self.n_epochs * self.steps_per_epoch,
            warmup_steps=int(round(config.warmup_epochs * self.steps_per_epoch)),
            decay=config.decay, final_lr_fraction=config.final_lr_fraction)
        optimizer, opt_key = _optimizer(config, frozen, params)
        self.train_step, self.eval_step = _compiled_steps(
            potential, optimizer, opt_key, weights, config.ema_decay,
            weights.stress > 0 or valid_data.has_stress)
        self.traces_before = self.train_step.n_traces
        params = jax.tree.map(lambda x: jax.numpy.asarray(x, _leaf_dtype(x, dtype)), params)
        self.state = self.replicated(TrainState.create(params, optimizer, seed=config.seed))
        self.meta = {"epoch": 0, "batch": 0, "history": [], "best": None, "bad_epochs": 0,
                     "accum": None, "seed": config.seed, "potential": potential.config,
                     "weights": list(weights), "steps_per_epoch": self.steps_per_epoch,
                     "stop_reason": None}
        self.best_params = None
        self.compiled: set = set()
        self.t_step = 0.0      # steady-state step time
        self.t_compile = 0.0   # largest first-step (compile) time seen
        self.t_eval = None     # last measured validation time
        self.t_eval_batch = None  # one compiled validation batch (from warm_eval)
        self.n_steps = 0
        self.first_step_s = None
        self.stop_reason = "epochs"
        self.lr = self.schedule.lr

    # -- checkpoints -----------------------------------------------------------------------

    def restore(self) -> None:
        state, best_params, saved = self.ckpt.load(self.state, self.state.params)
        if saved.get("steps_per_epoch") != self.steps_per_epoch:
            raise ValueError(f"{self.ckpt.path}: written for {saved.get('steps_per_epoch')} "
                             f"steps per epoch, this run has {self.steps_per_epoch} (different "
                             "data or batch size); use --restart")
        self.meta.update(saved)
        self.meta["stop_reason"] = None
        self.schedule.progress = float(self.meta.get("lr_progress", 0.0))
        self.state = self.replicated(state)
        self.best_params = None if best_params is None else self.replicated(best_params)

    def replicated(self, tree):
        """``tree`` on every device of the data-parallel mesh (as it is on one device)."""
        return tree if self.dp is None else self.dp.replicate(tree)

    def save(self, state=None) -> None:
        self.meta.update(history=self.meta["history"], lr_progress=self.schedule.progress)
        if is_writer():
            self.ckpt.save(self.state if state is None else state, self.best_params, self.meta)

    # -- the clock -------------------------------------------------------------------------

    def eval_estimate(self) -> float:
        """Seconds one validation takes: measured; or from the warm-up of the evaluation step
        (:meth:`warm_eval`); or before either, a guess (an evaluation step can take longer to
        compile than the train step, hence the 2)."""
        if self.t_eval is not None:
            return self.t_eval
        if self.t_eval_batch is not None:
            return len(self.vloader) * self.t_eval_batch
        n_shapes = len(self.vloader.used_shapes)
        return 2.0 * n_shapes * self.t_compile + len(self.vloader) * self.t_step

    def warm_eval(self) -> None:
        """Compile the evaluation step for every validation shape now (one batch each) and
        time a compiled batch, so a budgeted run knows what its final validation costs
        instead of guessing, and that validation does not compile inside the reserve."""
        first: dict = {}
        for k, (shape, _) in enumerate(self.vloader.plan(0)):
            first.setdefault(shape, k)
        t_batch = None
        for k in first.values():
            t_host = time.monotonic()
            batch = next(iter(self.vloader.batches(0, start=k)))
            t0 = time.monotonic()
            jax.block_until_ready(self.eval_step(self.state.ema_params, batch))
            t1 = time.monotonic()
            jax.block_until_ready(self.eval_step(self.state.ema_params, batch))
            run = time.monotonic() - t1
            # building the batch on the host counts too
            t_batch = max(t_batch or 0.0, run + (t0 - t_host))
            self.t_compile = max(self.t_compile, t1 - t0 - run)
            if self.budget.expired():
                break
        self.t_eval_batch = t_batch

    def closing_s(self) -> float:
        """Seconds kept back at the end: the final validation (with a 25 % margin: a run
        without a validated result is worth far less than a few more steps), a checkpoint,
        the model file (taken as long as a checkpoint, which is larger) and the reserve."""
        return EVAL_MARGIN * self.eval_estimate() + 2.0 * self.ckpt.seconds + self.reserve_s

    def train_end(self) -> float | None:
        """When the last step must finish (None without a budget)."""
        return None if not self.budget.limited else self.budget.deadline - self.closing_s()

    def out_of_time(self, shape) -> bool:
        """True when a step of ``shape`` and the closing work no longer fit in the budget.
        The first step, whose cost is unknown, is taken while the budget lasts."""
        if not self.budget.limited:
            return False
        if not self.compiled:
            return self.budget.expired()
        est = self.t_step if shape in self.compiled else max(self.t_compile, self.t_step)
        return not self.budget.fits(est + self.closing_s())

    # -- steps, epochs, validation ---------------------------------------------------------

    def step(self, batch, shape, epoch: int, position: int, accum: dict) -> tuple[float, dict]:
        t0 = time.monotonic()
        self.lr = self.schedule(int(self.state.step), t0, self.train_end())
        if self.place is not None:
            batch = self.place(batch)
        prev = self.state
        self.state, m = self.train_step(prev, batch, np.asarray(self.lr, np.float32))
        loss = _to_float(m["loss"])  # also waits for the step to finish
        dt = time.monotonic() - t0
        if shape in self.compiled:
            self.t_step = dt if self.t_step == 0.0 else max(0.8 * self.t_step, dt)
        else:
            self.compiled.add(shape)
            self.t_compile = max(self.t_compile, dt)
        first = self.first_step_s is None
        if first:
            self.first_step_s = time.monotonic() - self.t_start
        if not math.isfinite(loss):  # the checkpoint on disk stays the last good one
            self.state = prev
            raise self.diverged(f"the training loss became {loss} at step "
                                f"{int(prev.step) + 1} (epoch {epoch + 1}, batch {position + 1}"
                                f"/{self.steps_per_epoch}) with learning rate {self.lr:.3g}")
        self.n_steps += 1
        if first and self.budget.limited and self.t_eval is None:
            self.warm_eval()
        n_real = _to_float(m["n_structures"])
        accum["loss_sum"] += loss * n_real
        accum["n"] += n_real
        return loss, m

    def diverged(self, what: str) -> TrainingDiverged:
        where = ""
        if self.ckpt.exists():
            where = (f"; {self.ckpt.path} keeps the last good checkpoint (epoch "
                     f"{self.meta['epoch']}, batch {self.meta['batch']})")
        return TrainingDiverged(
            f"training diverged: {what}{where}; lower the learning rate (--lr, now "
            f"{self.config.lr:g}) or the gradient clip (clip_norm)",
            step=int(self.state.step), best_params=self.best_params, best=self.meta["best"],
            state=self.state)

    def run_epoch(self, epoch: int, callback, bar) -> str:
        """Train over the rest of ``epoch``; ``"done"``, or ``"budget"`` when time ran out."""
        start = int(self.meta["batch"])
        accum = self.meta["accum"] or {"loss_sum": 0.0, "n": 0.0}
        plan = self.loader.plan(epoch)[start:]
        batches = self.loader.batches(epoch, start=start)
        for j, ((shape, _), batch) in enumerate(zip(plan, batches, strict=True)):
            if self.out_of_time(shape):
                self.meta.update(batch=start + j, accum=accum)
                return "budget"
            loss, m = self.step(batch, shape, epoch, start + j, accum)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}")
            if callback is not None:
                callback({"event": "step", "epoch": epoch, "batch": start + j,
                          "state": self.state, "metrics": m})
        self.meta.update(batch=self.steps_per_epoch, accum=accum)
        return "done"

    def validate(self, partial: bool = False):
        """Validation metrics of the EMA params, or None if the budget ran out meanwhile
        (with ``partial``, the metrics of the batches done by then, if any)."""
        t0 = time.monotonic()
        # The validation may use the reserve too; the checkpoint and the model file may not.
        limit = (None if not self.budget.limited
                 else self.budget.deadline - 2.0 * self.ckpt.seconds - 0.5)
        m = evaluate(self.potential, self.state.ema_params, self.vloader, weights=self.weights,
                     eval_step=self.eval_step, deadline=limit, nonfinite="keep",
                     partial=partial)
        if m is None:
            return None
        self.t_eval = time.monotonic() - t0
        if not math.isfinite(m["loss"]):
            raise self.diverged(f"the validation loss of the EMA parameters is {m['loss']} "
                                f"after step {int(self.state.step)}")
        return m

    def end_epoch(self, epoch: int, callback, csv_path, verbose: bool) -> bool:
        """Validate, record and checkpoint a finished epoch; True when training must stop."""
        m = self.validate()
        if m is None:  # the budget ran out during validation: a resumed run validates first
            self.stop_reason = "time_budget"
            self.meta["epoch"] = epoch
            self.save()
            return True
        accum = self.meta["accum"]
        row = {"epoch": epoch + 1, "step": int(self.state.step),
               "time_s": time.monotonic() - self.t_start, "lr": self.lr,
               "train_loss": accum["loss_sum"] / max(accum["n"], 1.0),
               "valid_loss": m["loss"], **m}
        self.meta["history"].append(row)
        best = self.meta["best"]
        if best is None or m["loss"] < best["loss"] * (1.0 - self.config.min_delta):
            self.meta["best"], self.best_params = dict(m, epoch=epoch + 1), self.state.ema_params
            self.meta["bad_epochs"] = 0
        else:
            self.meta["bad_epochs"] = int(self.meta["bad_epochs"]) + 1
        early = self.patience is not None and self.meta["bad_epochs"] >= self.patience
        self.meta.update(epoch=epoch + 1, batch=0, accum=None, early_stopped=bool(early))
        if csv_path is not None and is_writer():
            _write_csv(csv_path, self.meta["history"])
        self.save()
        if verbose:
            _print_epoch(row, self.config.epochs)
        if callback is not None:
            callback({"event": "epoch", "epoch": epoch, "batch": self.steps_per_epoch,
                      "state": self.state, "metrics": m})
        if early:
            self.stop_reason = "early_stopping"
        return early

    def budget_stop(self, epoch: int) -> None:
        """Out of time mid-epoch: validate the last EMA parameters (kept if better than the
        best so far) and checkpoint the position."""
        self.stop_reason = "time_budget"
        self.meta["epoch"] = epoch
        best = self.meta["best"]
        # Without any validation so far, metrics over part of the validation set beat none.
        m = self.validate(partial=best is None) if self.n_steps else None
        if m is not None and m["n_structures"] < len(self.vloader.dataset):
            _log(f"warning: the time budget allowed validating {m['n_structures']} of "
                 f"{len(self.vloader.dataset)} validation structures")
        if m is not None and (best is None or m["loss"] < best["loss"]):
            self.meta["best"] = dict(m, epoch=epoch + 1, partial=True)
            self.best_params = self.state.ema_params
        self.save()

    def run(self, *, callback, csv_path, show: bool, verbose: bool) -> None:
        epoch = int(self.meta["epoch"])
        if self.meta.get("early_stopped"):
            self.stop_reason = "early_stopping"
            return
        while epoch < self.n_epochs:
            bar = None
            if show:
                from tqdm.auto import tqdm

                bar = tqdm(total=self.steps_per_epoch, initial=int(self.meta["batch"]),
                           desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True)
            try:
                status = self.run_epoch(epoch, callback, bar)
            finally:
                if bar is not None:
                    bar.close()
            if status == "budget":
                self.budget_stop(epoch)
                return
            if self.end_epoch(epoch, callback, csv_path, verbose):
                return
            epoch += 1

    def result(self) -> FitResult:
        final = self.best_params if self.best_params is not None else self.state.ema_params
        return FitResult(params=final, state=self.state, history=self.meta["history"],
                         best=self.meta["best"], stop_reason=self.stop_reason,
                         n_traces=self.train_step.n_traces - self.traces_before,
                         eval_step=self.eval_step, shapes=self.shapes,
                         eval_time_s=self.eval_estimate(), n_steps=self.n_steps,
                         first_step_s=self.first_step_s,
                         first_step_at=(None if self.first_step_s is None
                                        else self.t_start + self.first_step_s))


SHAPE_TOLERANCE = 0.05
"""Extra padded work accepted to save a batch shape (one compile of the train step and one of
the evaluation step, 30-45 s each for NequIP on one CPU core)."""


def _padded_work(shapes, n_atoms: np.ndarray, n_edges: np.ndarray) -> float:
    """``Σ_structures n_atoms + n_edges`` of the smallest shape each structure fits."""
    arr = np.asarray(shapes)
    fits = (arr[None, :, 0] >= n_atoms[:, None]) & (arr[None, :, 1] >= n_edges[:, None])
    return float(np.where(fits, arr[:, 0] + arr[:, 1], np.inf).min(axis=1).sum())


def choose_shapes(datasets, max_shapes: int, *, tolerance: float = SHAPE_TOLERANCE) -> list:
    """The fewest padded batch shapes (at most ``max_shapes``) whose padded work is within
    ``tolerance`` of what ``max_shapes`` shapes give (:func:`jaxpot.data.choose_shapes`).

    Each shape costs a compilation of the train and of the evaluation step, which on a CPU can
    take longer than an epoch of steps: on ``cu_emt`` (107-108 atoms, 4 200-5 200 edges at 5 Å)
    six shapes pad 5.8 % of the edge work, one shape 10.9 %, and one shape is chosen.
    """
    n = np.concatenate([np.asarray(d.n_atoms) for d in datasets])
    e = np.concatenate([np.asarray(d.n_edges) for d in datasets])
    most = jdata.choose_shapes(datasets, max_shapes=max_shapes)
    target = (1.0 + tolerance) * _padded_work(most, n, e)
    for k in range(1, len(most)):
        shapes = jdata.choose_shapes(datasets, max_shapes=k)
        if _padded_work(shapes, n, e) <= target:
            return shapes
    return most


def _optimizer(config: TrainConfig, frozen, params):
    """The optimiser at unit rate (the step multiplies its updates by the rate the schedule
    gives on the host, so the decay can follow the time budget), with frozen leaves masked."""
    import optax

    optimizer, _ = make_optimizer(1.0, total_steps=1, decay="constant",
                                  clip_norm=config.clip_norm, name=config.optimizer,
                                  weight_decay=config.weight_decay)
    if frozen:
        frozen_set = {tuple(p) for p in frozen}
        mask = jax.tree_util.tree_map_with_path(
            lambda path, _: tuple(getattr(k, "key", k) for k in path) in frozen_set, params)
        optimizer = optax.chain(optimizer, optax.masked(optax.set_to_zero(), mask))
    key = (config.clip_norm, config.optimizer, config.weight_decay,
           tuple(sorted(tuple(p) for p in frozen or ())))
    return optimizer, key


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
    write_csv(path, CSV_FIELDS, ([row.get(k) for k in CSV_FIELDS] for row in history),
              make_dirs=True)


def _log(msg: str) -> None:
    print(f"jaxpot train: {msg}", file=sys.stderr, flush=True)


def _print_epoch(row: dict, epochs: int | None) -> None:
    of = "" if epochs is None else f"/{epochs}"
    msg = f"epoch {row['epoch']}{of}  train {row['train_loss']:.4g}  valid {row['valid_loss']:.4g}"
    if "energy_mae_mev_per_atom" in row:
        msg += f"  E {row['energy_mae_mev_per_atom']:.2f} meV/atom"
    if "force_mae_mev_per_a" in row:
        msg += f"  F {row['force_mae_mev_per_a']:.1f} meV/Å"
    if "stress_mae_mev_per_a3" in row:
        msg += f"  S {row['stress_mae_mev_per_a3']:.3f} meV/Å³"
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The whole job
# ---------------------------------------------------------------------------------------------


class IncompleteTraining(RuntimeError):
    """A budgeted run ended before any validation; no model was written (see
    ``TrainConfig.keep_incomplete``)."""

    exit_code = 3  # the CLI's code for a run that failed on valid input


def _read(path, config: TrainConfig) -> jdata.Dataset:
    return jdata.read_extxyz(path, cutoff=config.cutoff, energy_key=config.energy_key,
                             forces_key=config.forces_key, stress_key=config.stress_key,
                             allow_partial=config.allow_partial_labels,
                             check_units=config.check_units,
                             check_outliers=config.check_outliers)


def train(config: TrainConfig, *, resume: bool = True, t_start: float | None = None,
          callback: Callable[[dict], None] | None = None) -> dict:
    """Run a training job from a config: data → element refs → model → :func:`fit` → files.

    Writes into ``config.out``: ``model`` (a :func:`jaxpot.save_model` file of the best EMA
    parameters), ``metrics.csv``, ``plots/learning_curve.png``, ``plots/parity.png``,
    ``checkpoint`` (resumed from when present and ``resume``), ``config.json`` and ``run.json``
    (the run's fingerprint). Everything is checked before anything is written or deleted: the
    options, that the input files exist, and that ``out`` holds no files this run would
    overwrite other than those of the same run (:func:`jaxpot.train.runfiles.claim_out_dir`).
    With ``dtype="float64"`` the job runs under a scoped ``jax.enable_x64``.

    Args:
      config: the options.
      resume: continue from ``out/checkpoint`` if it exists (False starts over).
      t_start: ``time.monotonic()`` at which the time budget started (default: now).
      callback: passed to :func:`fit`.

    Returns:
      ``{"model": path, "best": metrics, "stop_reason": ..., "epochs": n, "history": [...],
      "n_traces", "n_steps", "first_step_s"}`` (``first_step_s``: from ``t_start`` to the end
      of the first optimiser step: reading, model set-up and compilation).

    Raises:
      ValueError: bad options or inputs, or an output directory that is not this run's.
      TrainingDiverged: the loss became non-finite (the best validated model so far, if any,
        is written).
      IncompleteTraining: no validation fitted in the budget and not ``keep_incomplete``.
    """
    config.validate()
    budget = TimeBudget.minutes(config.time_budget_min, start=t_start)
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        with jax.enable_x64(True):
            return _train(config, budget, resume, callback)
    return _train(config, budget, resume, callback)


def _train(config: TrainConfig, budget: TimeBudget, resume: bool, callback) -> dict:
    from jaxpot.train.checkpoint import atomic_write_bytes

    fp, train_set, valid_set, stats = _prepare_run(config, resume, budget)
    model = build_model(config.model, config.model_kwargs, cutoff=config.cutoff, stats=stats)
    cells = [s.cell for s in (*train_set.structures, *valid_set.structures) if np.any(s.pbc)]
    model = fit_cells(model, cells)  # before its prepare() sees the training cells
    if model.fit is not None:  # fitted in closed form (e.g. gap), not by gradient descent
        if config.ensemble > 1:
            raise ValueError(f"training option 'ensemble' (--ensemble) is for gradient-trained "
                             f"models; {config.model!r} is fitted in closed form and reports "
                             "its own variance")
        from jaxpot.train.closed_form import train_closed_form

        return train_closed_form(config, model, train_set, valid_set, stats, budget=budget)
    ckpt = Checkpointer(os.path.join(config.out, "checkpoint"), fingerprint=fp)
    potential, params, frozen = _gradient_model(config, model, train_set, stats, ckpt, resume)
    potential = fit_cells(potential, cells)  # a parent model or checkpoint read from a file
    atomic_write_bytes(os.path.join(config.out, "config.json"),
                       _json(config.to_dict()).encode())
    # Kept free after the loop for writing the model (plus a measured checkpoint-sized write).
    reserve_s = 0.0 if not budget.limited else max(2.0, 0.01 * budget.seconds)
    if budget.limited and "features" in potential.outputs:  # the feature density, after
        reserve_s = max(reserve_s, 0.04 * budget.seconds)
    if config.ensemble > 1 and budget.limited:  # calibrating the spreads after the loop
        reserve_s = max(reserve_s, 0.06 * budget.seconds)
    try:
        result = fit(potential, params, train_set, valid_set, config, stats=stats,
                     frozen=frozen, checkpointer=ckpt, resume=resume,
                     csv_path=os.path.join(config.out, "metrics.csv"), budget=budget,
                     reserve_s=reserve_s, callback=callback,
                     meta_extra={"statistics": stats.to_dict()}, verbose=True)
    except TrainingDiverged as err:
        if err.best_params is not None:
            path = _save(config, potential, err.best_params, err.best, stats, "diverged")
            raise TrainingDiverged(f"{err}; the best validated parameters (epoch "
                                   f"{err.best.get('epoch')}) are in {path}", step=err.step,
                                   best_params=err.best_params, best=err.best) from None
        raise
    return _finish(config, potential, result, stats, valid_set, budget, train_set)


def _json(d: dict) -> str:
    import json

    return json.dumps(d, indent=2)


def _prepare_run(config: TrainConfig, resume: bool, budget: TimeBudget):
    """Check inputs and the output directory, read the data; only then drop an old checkpoint
    (``resume=False``)."""
    from jaxpot.train.runfiles import claim_out_dir, fingerprint

    if not config.train:
        raise ValueError("no training data: set 'train' in the config or pass --train PATH")
    if config.init_from and os.path.abspath(config.init_from) == os.path.abspath(
            os.path.join(config.out, "model")):
        raise ValueError(f"--init-from {config.init_from} is the model this run would write: "
                         "choose another --out (outputs never overwrite inputs)")
    if config.init_from and not os.path.isfile(config.init_from):
        raise ValueError(f"--init-from {config.init_from}: no such model file")
    fp = fingerprint(config)  # also: the input files exist
    same = bool(config.valid) and fp.get("valid data") == fp["train data"]  # hashed above
    if same:
        _log(f"warning: --valid {config.valid} holds the same data as --train {config.train}: "
             "validation errors will not measure how the model generalises")
    claim_out_dir(config.out, config, fp, restart=not resume)
    _log(f"reading {config.train}" + (f" and {config.valid}" if config.valid else ""))
    train_set = _read(config.train, config)
    if config.valid:
        valid_set = _read(config.valid, config)
    else:
        train_set, valid_set = jdata.split(train_set, config.valid_fraction, seed=config.seed)
    pairs = [] if same else check_overlap(train_set.structures, valid_set.structures)
    if pairs:
        t, v = pairs[0]
        _log(f"warning: {len({j for _, j in pairs})} of {len(valid_set)} validation structures "
             f"repeat training structures (e.g. {valid_set[v].source or v} = "
             f"{train_set[t].source or t}): validation errors will be optimistic")
    ckpt = os.path.join(config.out, "checkpoint")
    if not resume and os.path.exists(ckpt):
        os.unlink(ckpt)
    stats = jdata.statistics(train_set)
    _log(f"data: {len(train_set)} train / {len(valid_set)} valid structures, "
         f"{stats.avg_num_neighbors:.1f} neighbours per atom within {config.cutoff} Å, "
         f"E std {1e3 * stats.energy_std_per_atom:.2f} meV/atom after element refs, "
         f"F rms {1e3 * stats.force_rms:.0f} meV/Å ({budget.elapsed():.1f} s)")
    return fp, train_set, valid_set, stats


def _gradient_model(config: TrainConfig, model: Potential, train_set, stats,
                    ckpt: Checkpointer, resume: bool):
    """``(potential, params, frozen)`` for :func:`fit`: the checkpoint's model when resuming,
    else ``model`` initialised, prepared (its declared ``prepare``) and given element refs;
    with ``config.ensemble`` = K > 1, K such members from seeds ``seed .. seed+K-1``, stacked
    into a :func:`~jaxpot.models.ensemble`."""
    from jaxpot.models.ensemble import ensemble, ensemble_parts, stack_params
    from jaxpot.potential import from_config
    from jaxpot.train.model_setup import SHIFT_KEY, has_atomic_offsets

    if resume and ckpt.exists():
        potential = from_config(_checkpoint_potential(ckpt))
        params = potential.init(jax.random.key(config.seed), train_set[0].system())
    elif config.init_from:
        potential, params = _parent(config, train_set, stats)
        if config.noise_head and "force_noise_std" not in (
                (ensemble_parts(potential) or (potential,))[0].outputs):
            raise ValueError(f"--noise-head: the parent model {config.init_from} has no noise "
                             "head (a head can only be added to a model trained from scratch)")
    else:
        members = [_member(config, model, train_set, stats, config.seed + k)
                   for k in range(config.ensemble)]
        if config.noise_head:  # each member gets its own noise head (aleatoric uncertainty)
            from jaxpot.train.nll import attach_noise_head

            members = [attach_noise_head(pot, p, train_set, stats, config.seed + k)
                       for k, (pot, p) in enumerate(members)]
        potential, params = members[0]
        if config.ensemble > 1:
            potential = ensemble(potential, config.ensemble)
            params = stack_params([p for _, p in members])
    if potential.cutoff > config.cutoff + 1e-9:
        raise ValueError(f"model cutoff {potential.cutoff} Å exceeds the data cutoff "
                         f"{config.cutoff} Å (--cutoff)")
    parts = ensemble_parts(potential)
    single = parts[0] if parts is not None else potential
    one = params if parts is None else jax.tree.map(lambda x: x[0], params)
    root = ()
    if single.config.get("name") == "heteroscedastic":  # the offsets are the inner model's
        single, one, root = from_config(single.config["kwargs"]["inner"]), one["model"], ("model",)
    frozen = []
    if (single.config.get("name") != "with_element_refs" and has_atomic_offsets(one)
            and not config.trainable_refs):
        frozen = [(*root, SHIFT_KEY)]
    if config.freeze:
        from jaxpot.train.finetune import frozen_paths

        frozen += [p for p in frozen_paths(params, config.freeze) if p not in frozen]
    return potential, params, frozen or None


def _parent(config: TrainConfig, train_set, stats):
    """The ``init_from`` model, extended to the data's elements (fine-tuning)."""
    from jaxpot.train.finetune import load_parent

    numbers = np.unique(np.concatenate([s.numbers for s in train_set.structures]))
    potential, params, added = load_parent(config.init_from, numbers, stats.element_refs,
                                           seed=config.seed)
    _log(f"fine-tuning from {config.init_from} ({potential.config.get('name')})"
         + (f"; new element(s) {', '.join(added)} added" if added else ""))
    return potential, params


def _member(config: TrainConfig, model: Potential, train_set, stats, seed: int):
    """One freshly initialised, prepared model with element refs: ``(potential, params)``."""
    params = model.init(jax.random.key(seed), train_set[0].system())
    if model.prepare is not None:  # data-dependent setup (e.g. bpnn standardisation)
        params = model.prepare(params, train_set)
    return attach_element_refs(model, params, stats, trainable=config.trainable_refs)


_CALIBRATION_FRAMES = 64  # validation structures the ensemble's spreads are calibrated on
_DENSITY_FRAMES = 256  # training structures the feature density is fitted on (at most)


def _feature_density(potential: Potential, params, train_set, valid_set, budget: TimeBudget,
                     per_frame_s: float = 0.0) -> dict | None:
    """``{"feature_density": tree}`` for a model with per-atom features (the Mahalanobis
    distance of :mod:`jaxpot.uncertainty.distance`), fitted on (up to 256) training structures
    with validation structures as the reference for its quantiles; None without features."""
    from jaxpot.models.ensemble import ensemble_parts, member_params

    parts = ensemble_parts(potential)
    model, p = (potential, params) if parts is None else (parts[0], member_params(params, 0))
    if train_set is None or "features" not in model.outputs:
        return None
    rng = np.random.default_rng(0)
    pick = sorted(rng.permutation(len(train_set))[:_DENSITY_FRAMES])
    if budget.limited and not budget.fits(2.0 + 0.2 * per_frame_s * (len(pick) + 64)):
        _log("time budget spent: no feature density stored")
        return None
    t0 = time.monotonic()
    from jaxpot.uncertainty.distance import fit_feature_density

    reference = valid_set.structures[:_CALIBRATION_FRAMES] if len(valid_set) else None
    density = fit_feature_density(model, p, [train_set.structures[i] for i in pick],
                                  reference=reference)
    _log(f"feature density ({density.n_features} features per atom) fitted on {len(pick)} "
         f"training structures ({time.monotonic() - t0:.1f} s)")
    return {"feature_density": density.to_tree()}


def _calibrated(potential: Potential, params, valid_set, budget: TimeBudget) -> Potential:
    """An ensemble with its spreads calibrated on the validation set (other models as given)."""
    from jaxpot.models.ensemble import ensemble, ensemble_parts
    from jaxpot.uncertainty.evaluate import calibrate, structure_uncertainty

    parts = ensemble_parts(potential)
    if parts is None or len(valid_set) == 0:
        return potential
    if budget.limited and not budget.fits(5.0):
        _log("time budget spent: ensemble spreads left uncalibrated")
        return potential
    frames = valid_set.structures[:_CALIBRATION_FRAMES]
    factors = calibrate(structure_uncertainty(potential, params, frames,
                                              calibration={"energy": 1.0, "forces": 1.0}))
    _log(f"ensemble spreads calibrated on {len(frames)} validation structures: energy "
         f"x{factors['energy']:.3g}, forces x{factors['forces']:.3g}")
    return ensemble(parts[0], parts[1], calibration=factors)


def _checkpoint_potential(ckpt: Checkpointer) -> dict:
    """The potential config stored in a checkpoint, after checking it is this run's."""
    import json

    from flax import serialization

    from jaxpot.train.checkpoint import fingerprint_differences

    with open(ckpt.path, "rb") as f:
        raw = serialization.msgpack_restore(f.read())
    try:
        meta = json.loads(raw["meta"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{ckpt.path}: not a jaxpot training checkpoint; use --restart") from None
    diff = fingerprint_differences(meta.get("fingerprint"), ckpt.fingerprint)
    if diff:
        raise ValueError(f"{ckpt.path} belongs to a different run ({'; '.join(diff)}); use "
                         "--restart to start over, or another --out")
    return meta["potential"]


def _save(config: TrainConfig, potential, params, best, stats, stop_reason: str, *,
          extras: dict | None = None) -> str:
    from jaxpot.serialization import save_model

    path = os.path.join(config.out, "model")
    meta = {"statistics": stats.to_dict(), "valid_metrics": best or {},
            "train_config": config.to_dict(), "stop_reason": stop_reason}
    if config.init_from:
        from jaxpot.train.finetune import parent_record

        meta["parent_model"] = parent_record(config.init_from)
    save_model(path, potential, params, metadata=meta, extras=extras)
    return path


def _finish(config: TrainConfig, potential, result: FitResult, stats, valid_set,
            budget: TimeBudget, train_set=None) -> dict:
    """Write the model (refusing an unvalidated one unless ``keep_incomplete``) and plots."""
    if result.best is None and not config.keep_incomplete:
        first = ("no training step" if result.first_step_at is None else
                 f"{result.n_steps} step(s), the first done "
                 f"{result.first_step_at - budget.start:.0f} s after the start")
        raise IncompleteTraining(
            f"no validation completed within the time budget ({config.time_budget_min} min: "
            f"{first}, {len(result.shapes)} batch shape(s) to compile); no model written. "
            f"The state is checkpointed in {config.out}: run again "
            "with a larger --time-budget-min to continue, or pass --keep-incomplete to write "
            "the unvalidated model")
    potential = _calibrated(potential, result.params, valid_set, budget)
    per_frame = result.eval_time_s / max(len(valid_set), 1)
    extras = _feature_density(potential, result.params, train_set, valid_set, budget,
                              per_frame)
    model_path = _save(config, potential, result.params, result.best, stats,
                       result.stop_reason if result.best else "incomplete", extras=extras)
    if config.plots and budget.limited and not budget.fits(1.0):
        _log("time budget spent: plots skipped")
    elif config.plots:
        from jaxpot.train.plots import save_plots

        preds = None
        if budget.fits(result.eval_time_s + 1.0):
            vloader = jdata.BatchLoader(valid_set, config.eval_batch_size or config.batch_size,
                                        shapes=result.shapes, shuffle=False,
                                        dtype=jax.numpy.dtype(config.dtype))
            _, preds = evaluate(potential, result.params, vloader, return_predictions=True,
                                eval_step=result.eval_step, nonfinite="keep")
        save_plots(os.path.join(config.out, "plots"), result.history, preds)
    best = result.best or {}
    _log(f"stopped ({result.stop_reason}) after {len(result.history)} epoch(s), "
         f"{int(result.state.step)} steps; best epoch {best.get('epoch')}; model {model_path}; "
         f"first step {(result.first_step_at or budget.start) - budget.start:.1f} s after "
         f"the start, validation "
         f"{result.eval_time_s:.1f} s; {len(result.shapes)} batch shape(s); "
         f"{budget.elapsed():.1f} s")
    return {"model": model_path, "best": best, "stop_reason": result.stop_reason,
            "epochs": len(result.history), "history": result.history,
            "n_traces": result.n_traces, "n_steps": result.n_steps,
            "first_step_s": (None if result.first_step_at is None
                             else result.first_step_at - budget.start)}
