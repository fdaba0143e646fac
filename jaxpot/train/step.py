"""Jitted train and evaluation steps over fixed-shape, vmapped batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxpot.data import Batch
from jaxpot.potential import Potential
from jaxpot.train.loss import LossWeights, make_loss_fn, predict
from jaxpot.train.state import TrainState, ema_update

__all__ = ["make_train_step", "make_eval_step"]


def make_train_step(potential: Potential, optimizer: optax.GradientTransformation,
                    weights: LossWeights, *, ema_decay: float = 0.99, jit: bool = True,
                    jit_kwargs: dict | None = None):
    """Build ``step(state, batch) -> (state, metrics)``.

    The loss (:func:`jaxpot.train.loss.make_loss_fn`) vmaps the potential's energy, forces and
    stress over the batch. The step is ``jax.jit``-compiled, so it compiles once per batch shape
    ``(batch_size, n_atoms, n_edges)``; ``step.n_traces`` counts the traces (= compilations).

    Args:
      potential: the model.
      optimizer: an Optax transformation (e.g. from :func:`jaxpot.train.make_optimizer`).
      weights: loss weights.
      ema_decay: decay of the parameter EMA (0 disables averaging: EMA = params).
      jit: compile (default) or run eagerly (debugging).
      jit_kwargs: extra arguments of ``jax.jit`` (``in_shardings``, ``out_shardings``,
        ``donate_argnums``), for a step sharded over devices.

    Batch placement is the caller's: the step moves nothing between devices and computes
    where its inputs live (:func:`jaxpot.train.fit` takes a ``place`` hook that puts each
    batch, e.g. sharded along its leading axis, before the step sees it).

    The step also takes an optional third argument ``lr``: a scalar that multiplies the
    optimiser's updates. :func:`jaxpot.train.fit` builds its optimiser with a unit learning
    rate and passes the scheduled rate here, so the schedule can follow the wall-time budget
    (known only on the host) without recompiling.

    Returns:
      The step function; ``metrics`` holds ``loss``, the terms ``energy``, ``forces``,
      ``stress``, ``grad_norm`` and ``n_structures`` (real structures in the batch).
    """
    loss_fn = make_loss_fn(potential, weights)
    counter = {"n": 0}

    def step(state: TrainState, batch: Batch, lr=None):
        counter["n"] += 1
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        if lr is not None:
            updates = jax.tree.map(lambda u: (u * lr).astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, state.step, ema_decay)
        key = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.key))[0])
        metrics = {"loss": loss, "energy": terms["energy"], "forces": terms["forces"],
                   "stress": terms["stress"], "grad_norm": optax.global_norm(grads),
                   "n_structures": terms["n_structures"]}
        new = state.replace(params=params, opt_state=opt_state, ema_params=ema,
                            step=state.step + 1, key=key)
        return new, metrics

    fn = jax.jit(step, **(jit_kwargs or {})) if jit else step

    class _Step:
        """The step function with a trace counter."""

        def __call__(self, state, batch, lr=None):
            return fn(state, batch) if lr is None else fn(state, batch, lr)

        @property
        def n_traces(self) -> int:
            return counter["n"]

    return _Step()


def make_eval_step(potential: Potential, *, stress: bool = True, jit: bool = True):
    """Build ``eval(params, batch) -> (sums, (energy [B], forces [B, n, 3], stress [B,3,3]))``.

    ``sums`` are masked sums over the batch, to be accumulated on the host: ``n_structures``,
    ``n_energy`` (structures with an energy label), ``e_abs`` (Σ|ΔE/N|), ``e_sq`` (Σ(ΔE/N)²),
    ``n_force_comps``, ``f_abs``, ``f_sq`` (over force components), ``n_stress_comps``,
    ``s_abs``, ``s_sq`` (over stress components). ``f_sq`` is also Σ over atoms of ``|ΔF|²``,
    as in the loss. Metrics are plain means over real structures (``weight > 0``).
    """

    def ev(params, batch: Batch):
        e, f, s = predict(potential, params, batch.system, stress=stress)
        m = (batch.weight > 0).astype(e.dtype)  # metrics are plain means over real frames
        n = jnp.maximum(batch.n_atoms, 1).astype(e.dtype)
        de = (e - batch.energy) / n
        me = m * batch.has_energy
        amask = batch.system.atom_mask * (m * batch.has_forces)[:, None]
        df = jnp.where(amask[..., None] > 0, f - batch.forces, 0.0)
        smask = m * batch.has_stress
        ds = jnp.where(smask[:, None, None] > 0, s - batch.stress, 0.0)
        sums = {
            "n_structures": jnp.sum(m), "n_energy": jnp.sum(me),
            "e_abs": jnp.sum(me * jnp.abs(de)), "e_sq": jnp.sum(me * de * de),
            "n_force_comps": 3.0 * jnp.sum(amask), "f_abs": jnp.sum(jnp.abs(df)),
            "f_sq": jnp.sum(df * df),
            "n_stress_comps": 9.0 * jnp.sum(smask), "s_abs": jnp.sum(jnp.abs(ds)),
            "s_sq": jnp.sum(ds * ds),
        }
        return sums, (e, f, s)

    return jax.jit(ev) if jit else ev
