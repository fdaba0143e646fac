"""Training state, the Optax optimiser with its learning-rate schedule, and parameter EMA."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

__all__ = ["TrainState", "make_optimizer", "make_schedule", "ema_update"]


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


def ema_update(ema, params, step, decay: float):
    """One EMA step with a warm-up: ``d = min(decay, (1 + step) / (10 + step))``.

    The warm-up keeps early averages from being dominated by the random initialisation.
    """
    step = jnp.asarray(step)
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(p.dtype), ema, params)
