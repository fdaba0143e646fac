"""Per-structure uncertainty of a model on a labelled data set, and its calibration.

:func:`structure_uncertainty` runs :func:`~jaxpot.uncertainty.spread.spread_fn` on each
structure (padded to geometric bucket sizes, so a data set of varied sizes compiles a few
shapes, not one per structure) and returns per-structure rows: predictions, errors against
the labels, spreads and, when a feature density is given, the Mahalanobis score.
:func:`calibrate` fits the energy and force factors on such rows;
:func:`~jaxpot.uncertainty.calibration.uncertainty_metrics` scores them.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxpot.potential import Potential
from jaxpot.system import bucket, default_buckets
from jaxpot.uncertainty.calibration import fit_scale
from jaxpot.uncertainty.spread import spread_fn

__all__ = ["structure_uncertainty", "calibrate", "UNCERTAINTY_FIELDS", "uncertainty_columns"]

UNCERTAINTY_FIELDS = ("energy_std_mev_per_atom", "force_std_mev_per_a",
                      "max_atom_force_std_mev_per_a", "mahalanobis")
"""Per-structure CSV columns of ``jaxpot eval --per-structure`` for a model with a spread."""


def structure_uncertainty(potential: Potential, params, structures, *,
                          calibration: dict | None = None, score=None) -> list[dict]:
    """One dict per structure: ``energy``, ``energy_std`` (eV), ``forces [n, 3]``,
    ``forces_std [n]`` (eV/Å), ``energy_error`` / ``force_error`` against the labels (None
    without), ``mahalanobis [n]`` when ``score`` is given.

    Args:
      potential, params: an ensemble or a GAP model (:func:`~.spread.spread_fn`).
      structures: :class:`jaxpot.data.Structure` objects (a Dataset's ``structures``) built
        with edges for at least ``potential.cutoff``.
      calibration: factors passed to :func:`~.spread.spread_fn`.
      score: optional jittable ``(params, system) -> [n_atoms]`` (a Mahalanobis distance).

    Raises:
      ValueError: the model states no uncertainty.
    """
    fn = spread_fn(potential, calibration)
    if fn is None:
        raise ValueError(f"model {potential.config.get('name')!r} states no uncertainty")
    structures = list(structures)
    atoms_b = default_buckets(max(s.n_atoms for s in structures))
    edges_b = default_buckets(max(max(s.n_edges for s in structures), 1))
    run = jax.jit(lambda p, sys: (fn(p, sys), None if score is None else score(p, sys)))
    rows = []
    for s in structures:
        out, m = run(params, s.system(n_atoms=bucket(s.n_atoms, atoms_b),
                                      n_edges=bucket(max(s.n_edges, 1), edges_b)))
        n = s.n_atoms
        row = {"energy": float(out["energy"]), "energy_std": float(out["energy_std"]),
               "forces": np.asarray(out["forces"])[:n],
               "forces_std": np.asarray(out["forces_std"])[:n], "n_atoms": n,
               "energy_error": None, "force_error": None}
        if s.energy is not None and np.isfinite(s.energy):
            row["energy_error"] = row["energy"] - float(s.energy)
        if s.forces is not None:
            row["force_error"] = row["forces"] - np.asarray(s.forces)
        if m is not None:
            row["mahalanobis"] = np.asarray(m)[:n]
        rows.append(row)
    return rows


def calibrate(rows: list[dict]) -> dict:
    """``{"energy": a, "forces": b}``: the factors that make the rows' stated spreads cover
    their errors (:func:`~jaxpot.uncertainty.calibration.fit_scale`; energies per structure,
    forces per component against the atom's spread). A quantity without labels keeps 1."""
    out = {"energy": 1.0, "forces": 1.0}
    f = [(r["force_error"], r["forces_std"]) for r in rows if r["force_error"] is not None]
    if f:
        err = np.concatenate([e.ravel() for e, _ in f])
        std = np.concatenate([np.repeat(s, 3) for _, s in f])
        out["forces"] = fit_scale(err, std)
    e = [(r["energy_error"], r["energy_std"]) for r in rows if r["energy_error"] is not None]
    if len(e) >= 3:
        out["energy"] = fit_scale([x for x, _ in e], [s for _, s in e])
    return out


def uncertainty_columns(row: dict) -> dict:
    """The :data:`UNCERTAINTY_FIELDS` of one row (meV, empty where absent)."""
    n = max(row["n_atoms"], 1)
    m = row.get("mahalanobis")
    return {"energy_std_mev_per_atom": 1e3 * row["energy_std"] / n,
            "force_std_mev_per_a": 1e3 * float(np.mean(row["forces_std"])),
            "max_atom_force_std_mev_per_a": 1e3 * float(np.max(row["forces_std"])),
            "mahalanobis": None if m is None else float(np.max(m))}
