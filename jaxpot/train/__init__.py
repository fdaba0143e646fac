"""Training: losses, element references, the jitted train step, the loop, checkpoints, metrics.

Quick start::

    from jaxpot import data, train
    ds = data.read_extxyz("train.xyz", cutoff=5.0)
    tr, va = data.split(ds, 0.1, seed=0)
    result = train.fit(potential, params, tr, va, train.TrainConfig(epochs=50))

or from a config, as ``jaxpot train`` does: ``train.train(train.TrainConfig(train="train.xyz",
model="nequip", out="run"))``.

The pieces :func:`fit` is made of can be used alone: :class:`TimeBudget` (one clock shared by
``fit``, ``fit_gap`` and ``evaluate``), :class:`Checkpointer` (atomic checkpoints that refuse
another run's), :func:`make_train_step` (jitted; takes shardings, leaves batch placement to the
caller). Models fitted in closed form (GAP) declare ``Potential.fit`` and go through
:mod:`jaxpot.train.closed_form`; data-dependent set-up is ``Potential.prepare``.
"""

from jaxpot.train.budget import TimeBudget
from jaxpot.train.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from jaxpot.train.closed_form import fit_gap
from jaxpot.train.loop import (
    FitResult,
    IncompleteTraining,
    TrainConfig,
    TrainingDiverged,
    attach_element_refs,
    build_model,
    fit,
    train,
)
from jaxpot.train.loss import (
    LossWeights,
    default_weights,
    element_refs_table,
    loss_terms,
    make_loss_fn,
    predict,
    with_element_refs,
)
from jaxpot.train.metrics import evaluate, metrics_from_sums
from jaxpot.train.plots import save_plots
from jaxpot.train.state import (
    BudgetSchedule,
    TrainState,
    ema_update,
    make_optimizer,
    make_schedule,
)
from jaxpot.train.step import make_eval_step, make_train_step

__all__ = [
    "Checkpointer",
    "FitResult",
    "IncompleteTraining",
    "TimeBudget",
    "TrainingDiverged",
    "fit_gap",
    "LossWeights",
    "TrainConfig",
    "TrainState",
    "attach_element_refs",
    "build_model",
    "default_weights",
    "element_refs_table",
    "ema_update",
    "evaluate",
    "fit",
    "load_checkpoint",
    "loss_terms",
    "make_eval_step",
    "make_loss_fn",
    "BudgetSchedule",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "metrics_from_sums",
    "predict",
    "save_checkpoint",
    "save_plots",
    "train",
    "with_element_refs",
]
