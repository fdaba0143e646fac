"""Models fitted in closed form (the model protocol's ``fit``, e.g. GAP) as a training job.

:func:`train` (``jaxpot train --model gap``) calls :func:`train_closed_form` for a model that
declares ``fit``: fit on the training set within part of the time budget, evaluate on the
validation set, write ``model`` and ``config.json``. :func:`fit_gap` is the user-level GAP fit
that also takes ``ase.Atoms``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax

from jaxpot import data as jdata
from jaxpot.models.gap import GAPConfig, gap_uncertainty_report
from jaxpot.models.gap import fit_gap as _fit_gap
from jaxpot.potential import Potential
from jaxpot.train.budget import TimeBudget
from jaxpot.train.checkpoint import atomic_write_bytes
from jaxpot.train.metrics import evaluate

__all__ = ["fit_gap", "train_closed_form"]


def fit_gap(frames, config=None, *, cutoff: float | None = None, deadline: float | None = None,
            budget: TimeBudget | None = None, verbose: bool = False, **overrides):
    """Fit a sparse GAP (:func:`jaxpot.models.gap.fit_gap`) to a dataset or to ``ase.Atoms``.

    Args:
      frames: a :class:`jaxpot.data.Dataset` or labelled ``ase.Atoms`` (energy, forces).
      config: a :class:`~jaxpot.models.gap.GAPConfig`, dict or None; ``**overrides`` replace
        its fields.
      cutoff: edge cutoff for ``ase.Atoms`` input, Å (default: the config's cutoff).
      deadline: ``time.monotonic()`` deadline; or ``budget``, a shared
        :class:`~jaxpot.train.TimeBudget`.
      verbose: progress on stderr.

    Returns:
      ``(potential, params, info)``.
    """
    if budget is not None and budget.limited:
        deadline = budget.deadline if deadline is None else min(deadline, budget.deadline)
    if not isinstance(frames, jdata.Dataset):
        frames = list(frames)
        if frames and not hasattr(frames[0], "system"):
            if cutoff is None:
                cut = (config or {}).get("cutoff") if isinstance(config, dict) else None
                cut = overrides.get("cutoff", cut or getattr(config, "cutoff", None))
                cutoff = cut or GAPConfig().cutoff
            frames = jdata.from_atoms(frames, cutoff=cutoff)
    return _fit_gap(frames, config, deadline=deadline, verbose=verbose, **overrides)


def _log(msg: str) -> None:
    print(f"jaxpot train: {msg}", file=sys.stderr, flush=True)


def train_closed_form(config, potential: Potential, train_set, valid_set, stats, *,
                      budget: TimeBudget) -> dict:
    """Closed-form training job (called by :func:`jaxpot.train.train`).

    Runs ``potential.fit`` on ``train_set`` in float64 (scoped) within 65 % of what is left of
    ``budget`` (the rest is for validation and writing), writes ``out/model`` and
    ``out/config.json`` and evaluates on ``valid_set``.

    Returns:
      The summary dict of :func:`jaxpot.train.train` (``stop_reason="closed_form"``).
    """
    from jaxpot.serialization import save_model

    seed = None if "seed" in (config.model_kwargs or {}) else int(config.seed)
    fit_budget = budget.sub(0.65)
    with jax.enable_x64(True):
        potential, params, info = potential.fit(
            train_set, refs=dict(stats.element_refs), deadline=fit_budget.deadline,
            verbose=True, seed=seed)
        atomic_write_bytes(os.path.join(config.out, "config.json"),
                           json.dumps(config.to_dict(), indent=2).encode())
        vbudget = budget.sub(reserve_s=2.0)
        best = dict(evaluate(potential, params, valid_set, budget=vbudget,
                             batch_size=config.eval_batch_size or config.batch_size) or {}
                    ) if len(valid_set) else {}
        best["fit"] = dataclasses.asdict(info)
        if (potential.config.get("name") == "gap" and len(valid_set) and valid_set.has_forces
                and not vbudget.expired()):
            best["uncertainty"] = _uncertainty(potential, params, valid_set, info, vbudget)
    model_path = os.path.join(config.out, "model")
    save_model(model_path, potential, params,
               metadata={"statistics": stats.to_dict(), "valid_metrics": best,
                         "train_config": config.to_dict(), "stop_reason": "closed_form"})
    _log(f"fitted in closed form; model {model_path}; {budget.elapsed():.1f} s")
    return {"model": model_path, "best": best, "stop_reason": "closed_form", "epochs": 0,
            "history": [], "n_traces": 0, "n_steps": 0, "first_step_s": None}


def _uncertainty(potential, params, valid_set, info, budget: TimeBudget) -> dict:
    unc = gap_uncertainty_report(potential, params, valid_set,
                                 sigma_force=info.sigma_force, deadline=budget.deadline)
    _log(f"force uncertainty on {unc['n_frames']} validation frames: "
         f"Spearman(σ, |ΔF|) {unc['spearman_component']:.2f} per component (a calibrated "
         f"model: {unc['spearman_component_ceiling']:.2f}), "
         f"{unc['spearman_atom']:.2f} per atom, {unc['spearman_structure']:.2f} per frame; "
         f"|ΔF| < 1σ / 2σ for {100 * unc['coverage_1sigma']:.0f} % / "
         f"{100 * unc['coverage_2sigma']:.0f} % of components")
    return unc
