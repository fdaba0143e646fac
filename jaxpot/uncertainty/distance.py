"""Distances of atomic environments from the training data, in a model's feature space.

A model that declares ``"features"`` among its per-atom outputs (NequIP and MACE: the last
readout layer's silu activations; BPNN: the standardised descriptors; GAP: the normalised SOAP
vectors p̂) maps every atom to an invariant vector ``x_i`` (``[F]``). Fitting one Gaussian per
element to the features of the training atoms gives the Mahalanobis distance

    d_i = sqrt((x_i − μ_Z)ᵀ Σ_Z⁻¹ (x_i − μ_Z)),      Σ_Z = C_Z + λ_Z·I,  λ_Z = s·tr(C_Z)/F

of each atom from its element's training distribution (``C_Z`` the sample covariance, ``s`` the
relative ``shrinkage``, so that Σ is invertible even when the training atoms span fewer than F
directions). Large ``d_i`` flags an environment unlike any the model was fitted on, a cheap
(one forward pass, no ensemble) signal of where predictions may be unreliable: Lee et al.'s
Mahalanobis detector, and Janet et al.'s latent-space distance for MLIPs.

Typical use::

    density = distance.fit_feature_density(pot, params, train_set)
    score = jax.jit(distance.structure_score(pot, density))   # max_i d_i, one structure
    score(params, system)                                       # compare with
    density.structure_quantiles                                 # training levels 50/95/99 %
    jaxpot.save_model("m.jaxpot", pot, params,
                      extras={"feature_density": density.to_tree()})

Inside the fused MD loop, :func:`observer` reads the features the loop already computed
(``simulate(..., observers=[distance.observer(density)])``).

:func:`least_sampled_directions` gives the feature-space directions of least training variance
and :func:`push_along` moves a structure's atoms uphill in distance (along those directions, or
in the full Mahalanobis distance) to propose new structures where the sampling is thin.

A Gaussian mixture per element is not implemented (one Gaussian per element).

References:
  K. Lee, K. Lee, H. Lee, J. Shin, "A simple unified framework for detecting out-of-distribution
  samples and adversarial attacks", NeurIPS 2018.
  J. P. Janet, C. Duan, T. Yang, A. Nandy, H. J. Kulik, "A quantitative uncertainty metric
  controls error in neural network-driven chemical discovery", Chem. Sci. 10, 7913 (2019).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from jaxpot.potential import Potential
from jaxpot.system import System, bucket, default_buckets

__all__ = [
    "FeatureDensity",
    "read_density",
    "PushResult",
    "feature_distances",
    "features_fn",
    "fit_feature_density",
    "least_sampled_directions",
    "mahalanobis",
    "observer",
    "push_along",
    "structure_score",
]

DEFAULT_LEVELS = (0.5, 0.95, 0.99)


class FeatureDensity(NamedTuple):
    """One Gaussian per element in a model's feature space (a pytree of arrays).

    Rows follow ``species``; F is the model's feature width, Q the number of quantile levels.

    Attributes:
      species: ``[S]`` int32 atomic numbers of the elements seen in the training data.
      mean: ``[S, F]`` mean feature vector μ_Z.
      eigvals: ``[S, F]`` eigenvalues of the shrunk covariance Σ_Z, ascending (feature units²).
      eigvecs: ``[S, F, F]`` its eigenvectors, as columns (``eigvecs[s, :, j]`` for
        ``eigvals[s, j]``).
      counts: ``[S]`` training atoms of each element.
      levels: ``[Q]`` quantile levels (fractions, e.g. 0.5, 0.95, 0.99).
      atom_quantiles: ``[S, Q]`` quantiles of the per-atom distance d_i over the reference
        (by default the training) atoms of each element.
      structure_quantiles: ``[Q]`` quantiles of the structure score ``max_i d_i`` over the
        reference structures.
      shrinkage: ``[]`` the relative ridge s used.
      per_element: ``[]`` bool; False when one Gaussian was fitted to all atoms (its rows are
        then copies).
    """

    species: np.ndarray
    mean: np.ndarray
    eigvals: np.ndarray
    eigvecs: np.ndarray
    counts: np.ndarray
    levels: np.ndarray
    atom_quantiles: np.ndarray
    structure_quantiles: np.ndarray
    shrinkage: np.ndarray
    per_element: np.ndarray

    @property
    def n_features(self) -> int:
        """F, the feature width the density was fitted for."""
        return int(np.shape(self.mean)[-1])

    def to_tree(self) -> dict:
        """``{field: NumPy array}``, for :func:`jaxpot.serialization.save_model`'s ``extras``."""
        return {k: np.asarray(v) for k, v in self._asdict().items()}

    @classmethod
    def from_tree(cls, tree: dict) -> FeatureDensity:
        """Rebuild a density from :meth:`to_tree`'s dict (e.g. from
        :func:`jaxpot.serialization.read_model_extras`).

        Raises:
          ValueError: a field is missing or the shapes disagree.
        """
        missing = [k for k in cls._fields if k not in tree]
        if missing:
            raise ValueError(f"feature density: missing fields {missing}")
        d = cls(**{k: np.asarray(tree[k]) for k in cls._fields})
        s, f = np.shape(d.mean)
        if (np.shape(d.species) != (s,) or np.shape(d.eigvals) != (s, f)
                or np.shape(d.eigvecs) != (s, f, f)
                or np.shape(d.atom_quantiles) != (s, np.size(d.levels))):
            raise ValueError("feature density: inconsistent array shapes")
        return d._replace(species=d.species.astype(np.int32))

    def quantile(self, level: float, *, structure: bool = True):
        """The stored training quantile at ``level`` (structure scores, or ``[S]`` per atom).

        Raises:
          ValueError: ``level`` is not one of ``levels``.
        """
        k = _level_index(self, level)
        return float(self.structure_quantiles[k]) if structure else self.atom_quantiles[:, k]


# ---------------------------------------------------------------------------------------------
# Collecting features on the host
# ---------------------------------------------------------------------------------------------


def features_fn(potential: Potential) -> Callable:
    """``(params, system) -> [n_atoms, F]`` per-atom features of ``potential`` (0 on padding).

    Raises:
      ValueError: the potential declares no ``"features"`` output.
    """
    if potential.atomic is None or "features" not in potential.outputs:
        raise ValueError(f"potential {potential.config.get('name')!r} declares no per-atom "
                         f"features (its outputs: {list(potential.outputs)})")
    atomic = potential.atomic
    return lambda params, system: atomic(params, system)["features"]


def _slots(n: int) -> int:
    """A geometric bucket ≥ n (bounded number of compiled shapes)."""
    n = max(int(n), 1)
    return bucket(n, default_buckets(n))


def _as_systems(potential: Potential, structures) -> list[System]:
    """Unbatched systems (real atoms first) with edges for ``potential.cutoff``, padded to
    bucketed slot counts; accepts a Dataset, Structures, Systems or ``ase.Atoms``."""
    cutoff = getattr(structures, "cutoff", None)
    if cutoff is not None and cutoff + 1e-9 < potential.cutoff:
        raise ValueError(f"data edges built for {cutoff} Å < model cutoff {potential.cutoff} Å")
    out = []
    for k, item in enumerate(getattr(structures, "structures", structures)):
        if isinstance(item, System):
            system = item
        elif hasattr(item, "system") and hasattr(item, "numbers"):  # jaxpot.data.Structure
            system = item.system()
        elif hasattr(item, "get_positions"):  # ase.Atoms
            system = System.from_ase(item, cutoff=potential.cutoff, where=f"structure {k}")
        else:
            raise TypeError(f"structure {k}: expected a jaxpot.data.Structure, System or "
                            f"ase.Atoms, got {type(item).__name__}")
        if np.ndim(system.positions) != 2:
            raise ValueError(f"structure {k}: expected one unbatched structure")
        if not isinstance(item, System):  # a System keeps the padding its caller chose
            n_edges = int((np.asarray(system.senders) < system.n_atoms).sum())
            system = system.pad(_slots(system.n_atoms), _slots(n_edges))
        out.append(system)
    if not out:
        raise ValueError("no structures")
    return out


def _collect(potential: Potential, params, structures):
    """``(features [N, F] float64, numbers [N], structure index [N])`` of all real atoms."""
    fn = jax.jit(features_fn(potential))
    feats, numbers, index = [], [], []
    for k, system in enumerate(_as_systems(potential, structures)):
        mask = np.asarray(system.atom_mask, bool)
        x = np.asarray(fn(params, system), np.float64)[mask]
        if not np.all(np.isfinite(x)):
            raise ValueError(f"structure {k}: non-finite features (an unknown element, or a "
                             "descriptor's neighbour capacity overflowed)")
        feats.append(x)
        numbers.append(np.asarray(system.species)[mask])
        index.append(np.full(int(mask.sum()), k))
    return np.concatenate(feats), np.concatenate(numbers).astype(np.int32), np.concatenate(index)


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


def _gaussian(x: np.ndarray, shrinkage: float):
    """Mean, ascending eigenvalues and eigenvectors of the shrunk covariance of ``x [n, F]``."""
    n, f = x.shape
    mean = x.mean(0)
    d = x - mean
    cov = d.T @ d / max(n - 1, 1)
    scale = np.trace(cov) / f
    if not scale > 0:  # one environment only: fall back to the size of the features
        scale = float(np.mean(mean**2)) or 1.0
    vals, vecs = np.linalg.eigh(cov + shrinkage * scale * np.eye(f))
    return mean, np.maximum(vals, shrinkage * scale), vecs


def _host_distances(density: FeatureDensity, x: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """``[N]`` float64 Mahalanobis distances of feature rows ``x`` (NumPy, host side)."""
    out = np.full(len(x), np.inf)
    for s, z in enumerate(np.asarray(density.species)):
        sel = numbers == z
        w = density.eigvecs[s] / np.sqrt(density.eigvals[s])[None, :]
        out[sel] = np.sqrt(np.sum(((x[sel] - density.mean[s]) @ w) ** 2, axis=-1))
    return out


def _with_quantiles(density: FeatureDensity, x, numbers, index) -> FeatureDensity:
    d = _host_distances(density, x, numbers)
    levels = np.asarray(density.levels, np.float64)
    per_atom = np.stack([np.quantile(d[numbers == z], levels) if np.any(numbers == z)
                         else np.full(len(levels), np.nan) for z in density.species])
    per_structure = np.full(index.max() + 1, -np.inf)
    np.maximum.at(per_structure, index, d)
    per_structure = per_structure[np.isfinite(per_structure)]
    return density._replace(atom_quantiles=per_atom,
                            structure_quantiles=np.quantile(per_structure, levels))


def fit_feature_density(potential: Potential, params, structures, *, shrinkage: float = 1e-3,
                        per_element: bool = True, levels: Sequence[float] = DEFAULT_LEVELS,
                        reference=None) -> FeatureDensity:
    """Fit one Gaussian per element to the features of every real training atom (host side).

    Args:
      potential: a potential with ``"features"`` in its ``outputs``.
      params: its parameters (the features of NequIP/MACE/BPNN depend on them).
      structures: the training structures: a :class:`jaxpot.data.Dataset`, or a list of
        :class:`jaxpot.data.Structure`, unbatched :class:`~jaxpot.System` (with edges for
        ``potential.cutoff``) or ``ase.Atoms``. Structures and Atoms are padded to a few
        bucketed shapes (Systems keep theirs) and evaluated one at a time.
      shrinkage: relative ridge s: ``Σ = C + s·tr(C)/F·I``; larger values make the distance
        less sensitive to directions the training data never varied in.
      per_element: one Gaussian per element (True) or one for all atoms (False).
      levels: quantile levels of the stored reference scores.
      reference: structures for the stored quantiles (same forms as ``structures``; default:
        the training structures themselves, whose in-sample distances are slightly lower than
        those of fresh structures from the same distribution when F is not ≪ the atom count).

    Returns:
      A :class:`FeatureDensity` (float64 NumPy arrays).

    Raises:
      ValueError: the potential has no features; no structures; non-finite features.
    """
    if not 0 <= shrinkage:
        raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
    x, numbers, index = _collect(potential, params, structures)
    species = np.unique(numbers).astype(np.int32)
    fits = ([_gaussian(x[numbers == z], shrinkage) for z in species] if per_element
            else [_gaussian(x, shrinkage)] * len(species))
    density = FeatureDensity(
        species=species,
        mean=np.stack([m for m, _, _ in fits]),
        eigvals=np.stack([v for _, v, _ in fits]),
        eigvecs=np.stack([u for _, _, u in fits]),
        counts=np.asarray([int(np.sum(numbers == z)) for z in species]),
        levels=np.asarray(levels, np.float64),
        atom_quantiles=np.zeros((len(species), len(levels))),
        structure_quantiles=np.zeros(len(levels)),
        shrinkage=np.asarray(float(shrinkage)),
        per_element=np.asarray(bool(per_element)),
    )
    if reference is not None:
        x, numbers, index = _collect(potential, params, reference)
    return _with_quantiles(density, x, numbers, index)


# ---------------------------------------------------------------------------------------------
# Distances (jittable)
# ---------------------------------------------------------------------------------------------


def _level_index(density: FeatureDensity, level: float) -> int:
    levels = np.asarray(density.levels)
    hit = np.flatnonzero(np.isclose(levels, level))
    if hit.size == 0:
        raise ValueError(f"level {level} is not among the stored levels {levels.tolist()}")
    return int(hit[0])


def _element_row(density: FeatureDensity, element) -> int:
    z = atomic_numbers[element] if isinstance(element, str) else int(element)
    hit = np.flatnonzero(np.asarray(density.species) == z)
    if hit.size == 0:
        known = [chemical_symbols[int(s)] for s in density.species]
        raise ValueError(f"element {element!r} is not in the feature density (it has {known})")
    return int(hit[0])


def _constants(density: FeatureDensity, k: int | None, relative_to: float | None):
    """Host constants of the traced distance: species table, means, whitening, scale."""
    table = np.full(119, -1, np.int32)
    table[np.asarray(density.species)] = np.arange(len(density.species))
    vecs, vals = np.asarray(density.eigvecs), np.asarray(density.eigvals)
    if k is not None:
        vecs, vals = vecs[:, :, :k], vals[:, :k]
    whiten = vecs / np.sqrt(vals)[:, None, :]  # [S, F, K]: z = (x − μ) @ W
    scale = (np.ones(len(table)) if relative_to is None
             else np.asarray(density.atom_quantiles)[:, _level_index(density, relative_to)])
    return table, np.asarray(density.mean), whiten, scale


def _squared(consts, features, species, atom_mask):
    """``([n] squared whitened distances, [n] bool atom has a fitted element)``."""
    table, mean, whiten, _ = consts
    dtype = features.dtype
    row = jnp.asarray(table)[jnp.clip(species, 0, 118)]
    known = atom_mask & (row >= 0)
    diff = features[None, :, :] - jnp.asarray(mean, dtype)[:, None, :]  # [S, n, F]
    z = jnp.einsum("snf,sfk->snk", diff, jnp.asarray(whiten, dtype))
    d2 = jnp.sum(z * z, axis=-1)  # [S, n]
    own = jnp.take_along_axis(d2, jnp.maximum(row, 0)[None, :], axis=0)[0]
    return jnp.where(known, own, 0.0), known


def _check_width(density: FeatureDensity, features) -> None:
    if features.shape[-1] != density.n_features:
        raise ValueError(f"features have width {features.shape[-1]}, the density was fitted "
                         f"for {density.n_features} (another model or configuration?)")


def feature_distances(density: FeatureDensity, features, species, atom_mask, *,
                      relative_to: float | None = None) -> jax.Array:
    """``[n_atoms]`` Mahalanobis distances of given features (jittable; no model call).

    Args:
      density: from :func:`fit_feature_density`.
      features: ``[n_atoms, F]`` per-atom features of the same model.
      species: ``[n_atoms]`` atomic numbers; atom_mask: ``[n_atoms]`` bool.
      relative_to: divide each atom's distance by its element's training quantile at this
        level (one of ``density.levels``), so 1 is the training level.

    Returns:
      ``d_i`` (dimensionless), 0 on padding, ``inf`` on real atoms of elements the density has
      never seen.
    """
    _check_width(density, features)
    consts = _constants(density, None, relative_to)
    d2, known = _squared(consts, features, species, atom_mask)
    row = jnp.asarray(consts[0])[jnp.clip(species, 0, 118)]
    scale = jnp.asarray(consts[3], features.dtype)[jnp.maximum(row, 0)]
    d = jnp.sqrt(jnp.where(known, d2, 1.0)) / scale  # no sqrt'(0) = inf in gradients
    return jnp.where(known, d, jnp.where(atom_mask, jnp.inf, 0.0))


def mahalanobis(potential: Potential, density: FeatureDensity, *,
                relative_to: float | None = None) -> Callable:
    """``(params, system) -> [n_atoms]`` Mahalanobis distance of each atom (jittable).

    One forward pass of the model's per-atom outputs; usable under ``jit``/``vmap`` and inside
    the MD loop. See :func:`feature_distances` for ``relative_to`` and the values on padding
    (0) and on unseen elements (``inf``).

    Raises:
      ValueError: the potential declares no ``"features"``.
    """
    feats = features_fn(potential)

    def fn(params, system):
        return feature_distances(density, feats(params, system), system.species,
                                 system.atom_mask, relative_to=relative_to)

    return fn


def structure_score(potential: Potential, density: FeatureDensity, *,
                    relative_to: float | None = None) -> Callable:
    """``(params, system) -> []`` the largest per-atom distance of a structure (jittable).

    Compare with ``density.structure_quantiles`` (the same score over the reference
    structures), e.g. flag a structure when it exceeds ``density.quantile(0.99)``.
    """
    per_atom = mahalanobis(potential, density, relative_to=relative_to)
    return lambda params, system: jnp.max(per_atom(params, system))


def observer(density: FeatureDensity, *, name: str = "feature_distance",
             relative_to: float | None = None) -> Callable:
    """An MD observer ``(state, output) -> {name: max_i d_i, name + "_mean": mean_i d_i}``.

    It reads ``output.atomic["features"]``, which :func:`jaxpot.md.simulate` fills when the
    model declares features (no extra forward pass), so it traces inside the fused loop.
    """
    def observe(state, output):
        system = state.system
        d = feature_distances(density, output.atomic["features"], system.species,
                              system.atom_mask, relative_to=relative_to)
        n = jnp.maximum(jnp.sum(system.atom_mask), 1)
        return {name: jnp.max(d), name + "_mean": jnp.sum(d) / n}

    return observe


# ---------------------------------------------------------------------------------------------
# Where the sampling is thin
# ---------------------------------------------------------------------------------------------


def least_sampled_directions(density: FeatureDensity, element, k: int = 1):
    """The ``k`` feature-space directions of least training variance for ``element``.

    Args:
      density: from :func:`fit_feature_density`.
      element: atomic number or chemical symbol.
      k: number of directions.

    Returns:
      ``(directions [k, F], variances [k])``: unit eigenvectors of the shrunk covariance Σ_Z
      with the smallest eigenvalues (ascending). Directions the training features never varied
      in have the ridge variance ``s·tr(C)/F``; a structure cannot always move its features
      along them (they may be fixed by the descriptor's construction).
    """
    row = _element_row(density, element)
    k = int(k)
    if not 1 <= k <= density.n_features:
        raise ValueError(f"k must be in 1..{density.n_features}, got {k}")
    return (np.asarray(density.eigvecs)[row, :, :k].T.copy(),
            np.asarray(density.eigvals)[row, :k].copy())


class PushResult(NamedTuple):
    """What :func:`push_along` did.

    Attributes:
      system: the final structure (edges rebuilt for the model's cutoff).
      scores: ``[steps + 1]`` structure score (max Mahalanobis distance) before each step and
        at the end.
      objective: ``[steps + 1]`` the objective that was ascended, at the same points.
      displacement: ``[n_atoms, 3]`` Å, final minus initial positions (0 on padding).
    """

    system: System
    scores: np.ndarray
    objective: np.ndarray
    displacement: np.ndarray


def _objective(potential: Potential, density: FeatureDensity, k, element):
    """``(positions, params, system) -> Σ_i w_i d²_i`` restricted to k directions/element."""
    feats = features_fn(potential)
    consts = _constants(density, k, None)
    z = None if element is None else int(density.species[_element_row(density, element)])

    def objective(positions, params, system):
        x = feats(params, system.replace(positions=positions))
        _check_width(density, x)
        d2, known = _squared(consts, x, system.species, system.atom_mask)
        if z is not None:
            known = known & (system.species == z)
        return jnp.sum(jnp.where(known, d2, 0.0))

    return objective


def _step(grad: np.ndarray, masses: np.ndarray, mask: np.ndarray, step_size: float):
    """Displacement along ``grad`` with zero mass-weighted mean and largest |Δx| = step."""
    g = np.where(mask[:, None], grad, 0.0)
    m = np.where(mask, masses, 0.0)
    g = g - (m[:, None] * g).sum(0) / m.sum()
    g = np.where(mask[:, None], g, 0.0)
    norm = np.max(np.linalg.norm(g, axis=1))
    return None if not norm > 0 else g * (step_size / norm)


def push_along(potential: Potential, params, density: FeatureDensity, system: System, *,
               steps: int = 10, step_size: float = 0.05, k: int | None = None,
               element=None) -> PushResult:
    """Move atoms uphill in feature-space distance, to propose structures where data is thin.

    Each step is normalised gradient ascent of ``Σ_i (x_i − μ_Z)ᵀ V_k Λ_k⁻¹ V_kᵀ (x_i − μ_Z)``
    over the real atoms, where ``V_k`` are the ``k`` least-sampled directions of each element
    (:func:`least_sampled_directions`; the squared projections onto them, each divided by its
    variance) or, with ``k=None``, all directions (the summed squared Mahalanobis distance).
    The displacement has zero mass-weighted mean (the centre of mass stays where it is; the
    objective is translation invariant) and is scaled so that the atom that moves most moves
    ``step_size`` Å. Edges are rebuilt on the host after every step (a host loop, one compiled
    gradient per bucketed edge count).

    Args:
      potential, params: a model with ``"features"``, and its parameters.
      density: from :func:`fit_feature_density` with the same model.
      system: one unbatched structure (real atoms first) with edges for ``potential.cutoff``.
      steps: number of ascent steps.
      step_size: largest displacement of one atom per step, Å.
      k: number of least-sampled directions per element (None: the full distance).
      element: only atoms of this element (atomic number or symbol) count in the objective.

    Returns:
      A :class:`PushResult`. Labelling its ``system`` with an oracle and adding it to the
      training data fills in the thin region; small ``step_size`` keeps the structures
      physical (check the energy before labelling with an expensive oracle).
    """
    grad = jax.jit(jax.value_and_grad(_objective(potential, density, k, element)))
    score = jax.jit(structure_score(potential, density))
    mask = np.asarray(system.atom_mask, bool)
    masses = np.asarray(system.masses, np.float64)
    start = np.asarray(system.positions, np.float64)
    system = _rebuild(system, start, potential.cutoff)
    scores, values = [], []
    for _ in range(int(steps)):
        value, g = grad(system.positions, params, system)
        scores.append(float(score(params, system)))
        values.append(float(value))
        dx = _step(np.asarray(g, np.float64), masses, mask, float(step_size))
        if dx is None:
            break
        system = _rebuild(system, np.asarray(system.positions, np.float64) + dx,
                          potential.cutoff)
    value, _ = grad(system.positions, params, system)
    scores.append(float(score(params, system)))
    values.append(float(value))
    moved = np.where(mask[:, None], np.asarray(system.positions, np.float64) - start, 0.0)
    return PushResult(system, np.asarray(scores), np.asarray(values), moved)


def _rebuild(system: System, positions: np.ndarray, cutoff: float) -> System:
    """``system`` at ``positions`` with edges for ``cutoff``, edge slots bucketed."""
    moved = system.replace(positions=jnp.asarray(positions, system.positions.dtype))
    fresh = moved.with_edges(cutoff)
    n_edges = int((np.asarray(fresh.senders) < fresh.n_atoms).sum())
    return fresh.pad(fresh.n_atoms, _slots(n_edges))


def read_density(path) -> FeatureDensity | None:
    """The feature density a model file holds (``extras["feature_density"]``, written by
    ``jaxpot train``), or None when it has none."""
    from jaxpot.serialization import read_model_extras

    tree = read_model_extras(path).get("feature_density")
    return None if tree is None else FeatureDensity.from_tree(tree)
