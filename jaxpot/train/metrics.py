"""Validation metrics and the per-epoch metrics CSV.

Conventions: energy errors are per atom, ``(E_pred − E_ref)/N``, in meV/atom; force errors are
over Cartesian components of real atoms, meV/Å; stress errors over the 9 components of
structures that have a stress label, meV/Å³.
"""

from __future__ import annotations

import csv
import math
import os
import time

import numpy as np

from jaxpot.data import BatchLoader, Dataset
from jaxpot.files import append_csv_row
from jaxpot.potential import Potential
from jaxpot.train.budget import TimeBudget
from jaxpot.train.loss import LossWeights
from jaxpot.train.sharding import data_parallel
from jaxpot.train.step import make_eval_step

__all__ = ["evaluate", "metrics_from_sums", "write_csv_row", "read_csv"]

_KEYS = ("n_structures", "e_abs", "e_sq", "n_force_comps", "f_abs", "f_sq", "n_stress_comps",
         "s_abs", "s_sq")


def metrics_from_sums(sums: dict, weights: LossWeights | None = None) -> dict:
    """Turn accumulated error sums (from :func:`jaxpot.train.make_eval_step`) into metrics.

    Returns:
      ``energy_mae_mev_per_atom``, ``energy_rmse_mev_per_atom`` (only when some structure has
      an energy label), ``force_mae_mev_per_a`` and
      ``force_rmse_mev_per_a`` (only when some structure has force labels),
      ``stress_mae_mev_per_a3`` (only when some structure has stress), ``n_structures`` and,
      if ``weights`` is given, ``loss`` (the training loss evaluated over the whole set).
    """
    n = max(sums.get("n_energy", sums["n_structures"]), 1.0)
    out = {}
    if sums.get("n_energy", sums["n_structures"]) > 0:  # no energy labels: no energy metric
        out["energy_mae_mev_per_atom"] = 1e3 * sums["e_abs"] / n
        out["energy_rmse_mev_per_atom"] = 1e3 * math.sqrt(sums["e_sq"] / n)
    if sums["n_force_comps"] > 0:  # no force labels: no force metric (never a fake 0)
        nf = sums["n_force_comps"]
        out["force_mae_mev_per_a"] = 1e3 * sums["f_abs"] / nf
        out["force_rmse_mev_per_a"] = 1e3 * math.sqrt(sums["f_sq"] / nf)
    if sums["n_stress_comps"] > 0:
        out["stress_mae_mev_per_a3"] = 1e3 * sums["s_abs"] / sums["n_stress_comps"]
    out["n_structures"] = int(round(sums["n_structures"]))
    if weights is not None:
        n_atoms = max(sums["n_force_comps"] / 3.0, 1.0)
        n_stress = max(sums["n_stress_comps"] / 9.0, 1.0)
        out["loss"] = (weights.energy * sums["e_sq"] / n + weights.forces * sums["f_sq"] / n_atoms
                       + weights.stress * sums["s_sq"] / n_stress)
    return out


def evaluate(potential: Potential, params, data: Dataset | BatchLoader, *,
             batch_size: int = 16, weights: LossWeights | None = None, eval_step=None,
             stress: bool | None = None, return_predictions: bool = False,
             deadline: float | None = None, budget: TimeBudget | None = None,
             nonfinite: str = "raise", partial: bool = False, devices=None):
    """Errors of ``potential`` on a dataset.

    Args:
      potential: the model.
      params: its parameters (e.g. the EMA parameters).
      data: a :class:`~jaxpot.data.Dataset` or a non-shuffling :class:`~jaxpot.data.BatchLoader`.
      batch_size: when ``data`` is a Dataset.
      weights: also report the loss.
      eval_step: a compiled :func:`~jaxpot.train.make_eval_step` to reuse.
      stress: compute stress (default: when the data has stress labels).
      return_predictions: also return per-structure predictions.
      deadline: ``time.monotonic()`` time; if it passes before a batch starts, the evaluation
        is abandoned and None is returned.
      budget: a :class:`~jaxpot.train.TimeBudget` whose deadline is used the same way.
      partial: when the deadline passes after some batches, return the metrics of those
        (``n_structures`` says how many) instead of None.
      nonfinite: ``"raise"``: a non-finite prediction raises ``ValueError`` naming the first
        such structure (its ``source``, e.g. ``"valid.xyz frame 12"``); ``"keep"``: the
        metrics come out non-finite (the training loop reports divergence itself).
      devices: spread every batch over this many devices (or these devices; see
        :mod:`jaxpot.train.sharding`); the batch size must be a multiple of the count.
        None: one device.

    Returns:
      The metrics dict (:func:`metrics_from_sums`), and with ``return_predictions`` a second
      dict ``{"energy_ref", "energy_pred" [S] eV/atom, "forces_ref", "forces_pred" [M, 3] eV/Å,
      "index" [S]}`` in dataset order.
    """
    loader = data if isinstance(data, BatchLoader) else BatchLoader(
        data, batch_size, shuffle=False)
    if devices is not None:
        dp = data_parallel(devices, batch_sizes=(loader.batch_size,))
        if dp is not None:
            loader = BatchLoader(loader.dataset, loader.batch_size, shapes=loader.shapes,
                                 shuffle=False, dtype=loader.dtype, put=dp.put)
            params = dp.replicate(params)
    if stress is None:
        stress = loader.dataset.has_stress
    if eval_step is None:
        eval_step = make_eval_step(potential, stress=stress)
    totals = dict.fromkeys(_KEYS, 0.0)
    preds = {"index": [], "energy_ref": [], "energy_pred": [], "forces_ref": [],
             "forces_pred": []}
    if budget is not None and budget.limited:
        deadline = budget.deadline if deadline is None else min(deadline, budget.deadline)
    for (_, idx), batch in zip(loader.plan(0), loader.batches(0), strict=True):
        if deadline is not None and time.monotonic() > deadline:
            if partial and totals["n_structures"] > 0 and not return_predictions:
                return metrics_from_sums(totals, weights)
            return None
        sums, (e, f, _) = eval_step(params, batch)
        sums = {k: float(sums[k]) for k in _KEYS}
        if nonfinite == "raise" and not all(math.isfinite(v) for v in sums.values()):
            _raise_nonfinite(loader.dataset, idx, e, f)
        for k in _KEYS:
            totals[k] += sums[k]
        if return_predictions:
            e = np.asarray(e, np.float64)
            f = np.asarray(f, np.float64)
            for k, i in enumerate(idx):
                s = loader.dataset.structures[int(i)]
                preds["index"].append(int(i))
                preds["energy_ref"].append(np.nan if s.energy is None
                                           else s.energy / s.n_atoms)
                preds["energy_pred"].append(e[k] / s.n_atoms)
                has_f = s.forces is not None
                preds["forces_ref"].append(s.forces if has_f else np.zeros((0, 3)))
                preds["forces_pred"].append(f[k, : s.n_atoms] if has_f else np.zeros((0, 3)))
    metrics = metrics_from_sums(totals, weights)
    if not return_predictions:
        return metrics
    order = np.argsort(preds["index"], kind="stable")
    out = {"index": np.asarray(preds["index"])[order],
           "energy_ref": np.asarray(preds["energy_ref"])[order],
           "energy_pred": np.asarray(preds["energy_pred"])[order]}
    for k in ("forces_ref", "forces_pred"):  # batches follow shape buckets: reorder
        out[k] = (np.concatenate([preds[k][j] for j in order]) if preds[k]
                  else np.zeros((0, 3)))
    return metrics, out


PER_STRUCTURE_FIELDS = ("index", "source", "n_atoms", "energy_error_mev_per_atom",
                        "force_mae_mev_per_a", "force_max_error_mev_per_a")


def per_structure_rows(dataset: Dataset, predictions: dict) -> list[dict]:
    """One row per structure (dataset order) from ``evaluate(..., return_predictions=True)``.

    Columns (:data:`PER_STRUCTURE_FIELDS`): index, source (file and frame), n_atoms, the signed
    energy error (prediction − reference) in meV/atom, the mean absolute force error over the
    structure's components and the largest atomic force-error norm, meV/Å (empty cells where
    the structure has no such label).
    """
    rows, start = [], 0
    f_ref, f_pred = predictions["forces_ref"], predictions["forces_pred"]
    for k, i in enumerate(predictions["index"]):
        s = dataset.structures[int(i)]
        row = {"index": int(i), "source": s.source or "", "n_atoms": s.n_atoms,
               "energy_error_mev_per_atom": 1e3 * float(predictions["energy_pred"][k]
                                                        - predictions["energy_ref"][k]),
               "force_mae_mev_per_a": None, "force_max_error_mev_per_a": None}
        if not np.isfinite(row["energy_error_mev_per_atom"]):
            row["energy_error_mev_per_atom"] = None
        if s.forces is not None:
            d = f_pred[start:start + s.n_atoms] - f_ref[start:start + s.n_atoms]
            start += s.n_atoms
            row["force_mae_mev_per_a"] = 1e3 * float(np.abs(d).mean())
            row["force_max_error_mev_per_a"] = 1e3 * float(np.linalg.norm(d, axis=1).max())
        rows.append(row)
    return rows


def _raise_nonfinite(dataset: Dataset, idx, energies, forces) -> None:
    """Name the first structure of a batch whose predicted energy or forces are not finite."""
    e = np.asarray(energies)
    f = np.asarray(forces)
    for k, i in enumerate(idx):
        s = dataset.structures[int(i)]
        bad_f = ~np.isfinite(f[k, : s.n_atoms]).all(axis=1)
        if np.isfinite(e[k]) and not bad_f.any():
            continue
        where = s.source or f"structure {int(i)}"
        atom = f", first at atom {int(np.flatnonzero(bad_f)[0])}" if bad_f.any() else ""
        raise ValueError(f"{where}: the model predicts a non-finite energy or forces "
                         f"(energy {float(e[k])}{atom}); the parameters may be corrupt or "
                         "the structure outside what the model can describe")
    raise ValueError("non-finite prediction in a batch (no single structure found)")


def write_csv_row(path: str | os.PathLike, row: dict, fields: list[str]) -> None:
    """Append ``row`` to the CSV at ``path`` (writing the header if the file is new; see
    :func:`jaxpot.files.append_csv_row`, which refuses a file with another header)."""
    append_csv_row(path, row, fields)


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics CSV as dicts of floats (empty cells → None)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in rows]
