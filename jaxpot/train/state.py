"""Training state, the Optax optimiser with its learning-rate schedule, and parameter EMA."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

__all__ = ["TrainState", "make_optimizer", "make_schedule", "BudgetSchedule", "ema_update"]


@struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; checkpointed as is).

    Attributes:
      params: model parameters being optimised.
      opt_state: the Optax optimiser state.
      ema_params: exponential moving average of ``params`` (used for evaluation and saving).
      step: int scalar, optimiser steps taken.
      key: ``[2]`` uint32 raw PRNG key data (for stochastic models; split per step).
    """

    params: Any
    opt_state: Any
    ema_params: Any
    step: jax.Array
    key: jax.Array

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation, *, seed: int = 0
               ) -> TrainState:
        """Fresh state: optimiser initialised, EMA equal to ``params``, step 0."""
        # Strong dtypes: weakly typed leaves (from Python scalars) would retrace after step 1.
        params = jax.tree.map(lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype), params)
        return cls(
            params=params,
            opt_state=optimizer.init(params),
            ema_params=jax.tree.map(jnp.array, params),
            step=jnp.zeros((), jnp.int32),
            key=jax.random.key_data(jax.random.key(seed)),
        )


def make_schedule(lr: float, *, total_steps: int, warmup_steps: int = 0,
                  decay: str = "cosine", final_lr_fraction: float = 0.01) -> optax.Schedule:
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then decay to
    ``lr · final_lr_fraction`` at ``total_steps``.

    Args:
      lr: peak learning rate.
      total_steps: steps of the whole run (warm-up included).
      warmup_steps: linear warm-up steps.
      decay: ``"cosine"``, ``"exponential"`` or ``"constant"``.
      final_lr_fraction: final / peak learning rate.
    """
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(max(int(warmup_steps), 0), total_steps - 1) if total_steps > 1 else 0
    end = lr * final_lr_fraction
    if decay == "cosine":
        if warmup_steps == 0:
            return optax.cosine_decay_schedule(lr, total_steps, alpha=final_lr_fraction)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps, end)
    if decay == "exponential":
        steps = max(total_steps - warmup_steps, 1)
        rate = max(final_lr_fraction, 1e-12)
        return optax.warmup_exponential_decay_schedule(0.0 if warmup_steps else lr, lr,
                                                       max(warmup_steps, 1), steps, rate,
                                                       end_value=end)
    if decay == "constant":
        if warmup_steps == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)],
            [warmup_steps])
    raise ValueError(f"unknown decay {decay!r}; use 'cosine', 'exponential' or 'constant'")


def make_optimizer(lr: float = 1e-3, *, total_steps: int, warmup_steps: int = 0,
                   decay: str = "cosine", final_lr_fraction: float = 0.01,
                   clip_norm: float | None = 10.0, name: str = "adam",
                   weight_decay: float = 0.0) -> tuple[optax.GradientTransformation,
                                                       optax.Schedule]:
    """Adam or AdamW with global-norm gradient clipping and :func:`make_schedule`.

    Returns:
      ``(optimizer, schedule)``; ``schedule(step)`` is the learning rate (for logging).
    """
    schedule = make_schedule(lr, total_steps=total_steps, warmup_steps=warmup_steps,
                             decay=decay, final_lr_fraction=final_lr_fraction)
    if name == "adam":
        opt = optax.adam(schedule)
    elif name == "adamw":
        opt = optax.adamw(schedule, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {name!r}; use 'adam' or 'adamw'")
    if clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(float(clip_norm)), opt)
    return opt, schedule


class BudgetSchedule:
    """A learning-rate schedule that ends when the steps *or* the wall-time budget run out.

    A schedule planned over ``total_steps`` never decays when a time budget stops the run
    after a fraction of those steps; this one decays over whichever runs out first. After a
    linear warm-up of ``warmup_steps`` the rate follows the decay law of the progress

        q = max(q_steps, q_time),   q_steps = (step - warmup) / (total - warmup),
        q_time = q_a + (1 - q_a) (t - t_a) / (t_end - t_a),

    where ``(t_a, q_a)`` is the anchor (the end of the warm-up, or the point a resumed run
    starts from) and ``t_end`` the time at which training must stop (the caller passes it
    each time, as its estimate of the remaining evaluation cost changes). ``q`` never
    decreases. Without a deadline the schedule is the step schedule of :func:`make_schedule`.

    The state that matters for resuming is :attr:`progress`; a resumed run re-anchors there.

    Args:
      lr: peak learning rate.
      total_steps: steps of the whole run (warm-up included).
      warmup_steps: linear warm-up steps (from 0).
      decay: ``"cosine"``, ``"exponential"`` or ``"constant"``.
      final_lr_fraction: rate at ``q = 1`` over the peak rate.
      progress: starting progress (from a checkpoint).
    """

    def __init__(self, lr: float, *, total_steps: int, warmup_steps: int = 0,
                 decay: str = "cosine", final_lr_fraction: float = 0.01,
                 progress: float = 0.0):
        if decay not in ("cosine", "exponential", "constant"):
            raise ValueError(f"unknown decay {decay!r}; use 'cosine', 'exponential' or "
                             "'constant'")
        self.lr = float(lr)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = min(max(int(warmup_steps), 0), self.total_steps - 1)
        self.decay = decay
        self.final = float(final_lr_fraction)
        self.progress = float(progress)
        self._anchor: tuple[float, float] | None = None

    def _law(self, q: float) -> float:
        q = min(max(q, 0.0), 1.0)
        if self.decay == "cosine":
            return self.lr * (self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * q)))
        if self.decay == "exponential":
            return self.lr * self.final ** q
        return self.lr

    def __call__(self, step: int, now: float | None = None, t_end: float | None = None
                 ) -> float:
        """The rate for optimiser step ``step`` (0-based) at time ``now`` (monotonic s)."""
        step = int(step)
        if step < self.warmup_steps:
            return self.lr * step / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        q = (step - self.warmup_steps) / span
        if now is not None and t_end is not None:
            if self._anchor is None:
                self._anchor = (float(now), self.progress)
            t_a, q_a = self._anchor
            if t_end > t_a:
                q = max(q, q_a + (1.0 - q_a) * (now - t_a) / (t_end - t_a))
            else:
                q = 1.0
        self.progress = max(self.progress, min(q, 1.0))
        return self._law(self.progress)


def ema_update(ema, params, step, decay: float):
    """One EMA step with a warm-up: ``d = min(decay, (1 + step) / (10 + step))``.

    The warm-up keeps early averages from being dominated by the random initialisation.
    """
    step = jnp.asarray(step)
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(p.dtype), ema, params)
