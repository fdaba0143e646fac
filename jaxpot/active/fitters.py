"""Fitters for the active-learning loop: ``fit(frames) -> (potential, params)``.

``frames`` are labelled ``ase.Atoms``; the returned potential must state an uncertainty
(:func:`jaxpot.uncertainty.spread.has_spread`): a GAP model or an ensemble.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

__all__ = ["Fitter", "gap_fitter", "ensemble_fitter"]

Fitter = Callable[[list], tuple]
"""``fit(frames: list[ase.Atoms]) -> (potential, params)``."""

GAP_DEFAULTS = dict(cutoff=4.0, n_max=4, l_max=3, n_sparse=100, zeta=4, sigma=0.5,
                    max_neighbors=48, optimize_noise=False, sigma_energy=0.002,
                    sigma_force=0.02)
"""Small, fast GAP settings (a few seconds per fit for tens of 32-atom frames on one core)."""


def gap_fitter(**options) -> Fitter:
    """A closed-form GAP fitter (:func:`jaxpot.models.fit_gap`); ``options`` override
    :data:`GAP_DEFAULTS` (any :class:`jaxpot.models.gap.GAPConfig` field). GAP has no warm
    start: every call refits from scratch (seconds)."""
    opts = {**GAP_DEFAULTS, **options}

    def fit(frames):
        from jaxpot import data as jdata
        from jaxpot.models.gap import fit_gap

        dataset = jdata.from_atoms(frames, cutoff=opts["cutoff"], source="active data",
                                   check_outliers=False)
        potential, params, _ = fit_gap(dataset, **opts)
        return potential, params

    fit.description = f"gap({', '.join(f'{k}={v}' for k, v in sorted(options.items()))})"
    return fit


def ensemble_fitter(model: str = "nequip", ensemble: int = 4, *, work_dir: str | None = None,
                    **train_options) -> Fitter:
    """A deep-ensemble fitter: :func:`jaxpot.train.train` with ``ensemble=K`` on the frames
    (written to an extxyz file in ``work_dir``); ``train_options`` are
    :class:`jaxpot.train.TrainConfig` fields (``epochs``, ``cutoff``, ``time_budget_min``...).
    Each call trains the committee anew (no warm start yet)."""
    if ensemble < 2:
        raise ValueError(f"ensemble_fitter: ensemble must be >= 2 members, got {ensemble}")

    def fit(frames):
        from jaxpot import io
        from jaxpot.serialization import load_model
        from jaxpot.train import TrainConfig, train

        base = work_dir or tempfile.mkdtemp(prefix="jaxpot-active-")
        os.makedirs(base, exist_ok=True)
        path = os.path.join(base, "train.xyz")
        io.write(path, frames)
        out = os.path.join(base, "ensemble")
        config = TrainConfig(train=path, model=model, ensemble=ensemble, out=out, plots=False,
                             check_outliers=False, **train_options)
        result = train(config, resume=False)
        return load_model(result["model"])

    fit.description = f"{model} ensemble of {ensemble}"
    return fit
