"""Gaussian Approximation Potential (GAP): sparse GP regression on SOAP, fitted to E and F.

Model. The energy is a sum of atomic energies ``E = Σ_i ε(p̂_i) + Σ_i e_{Z_i}`` where ``p̂_i`` is
the L2-normalised smooth SOAP power spectrum of atom ``i`` (:mod:`jaxpot.descriptors.soap`),
``e_Z`` are least-squares element reference energies, and ``ε`` has a Gaussian-process prior
with covariance ``δ² k(p̂, p̂')``, ``k(p̂, p̂') = (p̂ · p̂')^ζ`` (zero between environments of
different centre elements).

Sparsification (projected process / DTC). ``ε(p) = Σ_m α_m δ² k(p, p̂_m)`` over ``M``
representative environments chosen by farthest-point sampling in the kernel metric or by CUR
leverage scores. Every observation is linear in ``α``: a total energy is ``Σ_i`` of atomic
terms (row ``K_E = δ² Σ_i k(p̂_i, ·)``), a force component is ``−∂/∂x`` of that sum (row
``K_F``, built from the SOAP Jacobian by the chain rule). With the diagonal noise ``Λ``
(``σ_E² · n_atoms`` per energy, ``σ_F²`` per force component)::

    A = K_MM + K_MN Λ⁻¹ K_NM,      α = A⁻¹ K_MN Λ⁻¹ y        (Cholesky, float64)

The normal equations are accumulated structure by structure (memory ``O(M²)``, never the
``N × M`` design matrix). Predictive variance of any linear observation with row ``k*`` and
prior variance ``k**`` (projected-process / DTC variance, which returns to the prior far from
the data)::

    var = k** − k*ᵀ K_MM⁻¹ k* + k*ᵀ A⁻¹ k*

The prior variances ``k**`` of a total energy and of each force component are exact
(second derivatives of the kernel through the SOAP Jacobian).

Hyperparameters: ``δ`` defaults to the per-atom energy spread of the data, ``σ_E`` to 1 % of
it and ``σ_F`` to 5 % of the force RMS; ``optimize_noise=True`` picks ``(σ_E, σ_F)`` (and ``δ``
unless it is given) by maximising the log marginal likelihood: a grid, then Nelder–Mead in log
space (cheap: the accumulated sums are reused; each step is two ``M × M`` Cholesky
factorisations).

Use :func:`fit_gap` (or ``jaxpot train --model gap``), then ``potential.energy`` in MD and
:func:`gap_predict` for means and variances.

References:
  A. P. Bartók, M. C. Payne, R. Kondor, G. Csányi, "Gaussian approximation potentials: the
  accuracy of quantum mechanics, without the electrons", Phys. Rev. Lett. 104, 136403 (2010).
  A. P. Bartók, G. Csányi, "Gaussian approximation potentials: a brief tutorial introduction",
  Int. J. Quantum Chem. 115, 1051 (2015).
  J. Quiñonero-Candela, C. E. Rasmussen, "A unifying view of sparse approximate Gaussian
  process regression", J. Mach. Learn. Res. 6, 1939 (2005).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.data import Dataset, fit_element_refs
from jaxpot.descriptors import soap as _soap
from jaxpot.nn.embedding import normalize_species, species_index, species_table
from jaxpot.potential import Potential, register
from jaxpot.system import System

__all__ = ["GAPConfig", "gap", "fit_gap", "gap_predict", "gap_predictor", "GAPFitInfo"]


@dataclasses.dataclass(frozen=True)
class GAPConfig:
    """Options of :func:`gap` / :func:`fit_gap` (JSON-serialisable).

    Attributes:
      cutoff: SOAP neighbour cutoff, Å (smooth C³ cutoff, no padding beyond it).
      species: elements (symbols or atomic numbers).
      n_max, l_max, sigma: SOAP resolution and Gaussian width (Å).
      zeta: integer kernel exponent ζ.
      n_sparse: number of representative environments M (all environments if fewer).
      sparse_method: ``"fps"`` (farthest-point sampling) or ``"cur"`` (leverage scores).
      max_neighbors: static neighbour capacity per atom (None: from ``avg_num_neighbors``).
      avg_num_neighbors: mean coordination of the data (filled in by ``jaxpot train``).
      delta: prior std δ of an atomic energy, eV (None: from the data).
      sigma_energy: energy noise per atom, eV/atom (None: 1 % of δ).
      sigma_force: force noise, eV/Å (None: 5 % of the force RMS).
      use_forces: fit force observations too.
      optimize_noise: choose (σ_E, σ_F), and δ unless given, by maximising the marginal
        likelihood (default); the given or default σ_E, σ_F are then only starting points.
        False: use them as they are.
      jitter: relative diagonal jitter on K_MM.
      max_structures: use at most this many training structures (None: all).
      seed: seed for sparse-point selection and structure subsampling.
    """

    cutoff: float = 5.0
    species: Sequence[str | int] = ("Cu",)
    n_max: int = 6
    l_max: int = 4
    sigma: float = 0.5
    zeta: int = 4
    n_sparse: int = 500
    sparse_method: str = "fps"
    max_neighbors: int | None = None
    avg_num_neighbors: float | None = None
    delta: float | None = None
    sigma_energy: float | None = None
    sigma_force: float | None = None
    use_forces: bool = True
    optimize_noise: bool = True
    jitter: float = 1e-8
    max_structures: int | None = None
    seed: int = 0

    def validated(self) -> GAPConfig:
        """A normalised copy or ``ValueError``."""
        from jaxpot.models.bpnn import default_max_neighbors

        if self.cutoff <= 1.0:
            raise ValueError(f"gap: cutoff must be > 1 Å, got {self.cutoff}")
        if int(self.zeta) != self.zeta or self.zeta < 1:
            raise ValueError(f"gap: zeta must be a positive integer, got {self.zeta}")
        if self.sparse_method not in ("fps", "cur"):
            raise ValueError(f"gap: sparse_method must be 'fps' or 'cur', got "
                             f"{self.sparse_method!r}")
        if self.n_sparse < 1:
            raise ValueError(f"gap: n_sparse must be >= 1, got {self.n_sparse}")
        k = self.max_neighbors
        if k is None:
            k = default_max_neighbors(self.avg_num_neighbors)
        opt = lambda v: None if v is None else float(v)  # noqa: E731
        return dataclasses.replace(
            self, species=tuple(normalize_species(self.species)), cutoff=float(self.cutoff),
            n_max=int(self.n_max), l_max=int(self.l_max), sigma=float(self.sigma),
            zeta=int(self.zeta), n_sparse=int(self.n_sparse), max_neighbors=int(k),
            avg_num_neighbors=opt(self.avg_num_neighbors), delta=opt(self.delta),
            sigma_energy=opt(self.sigma_energy), sigma_force=opt(self.sigma_force),
            jitter=float(self.jitter), seed=int(self.seed),
            max_structures=None if self.max_structures is None else int(self.max_structures),
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self.validated())
        d["species"] = list(d["species"])
        return d


def _make(config, overrides) -> GAPConfig:
    if config is None:
        config = GAPConfig()
    elif isinstance(config, dict):
        config = GAPConfig(**config)
    elif not isinstance(config, GAPConfig):
        raise TypeError(f"config must be a GAPConfig, a dict or None, got {type(config)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(GAPConfig)}
    if unknown:
        raise ValueError(f"unknown GAPConfig fields: {sorted(unknown)}")
    return dataclasses.replace(config, **overrides).validated()


class _Kernel:
    """SOAP descriptors, kernel rows and prior variances of one validated config (jittable)."""

    def __init__(self, cfg: GAPConfig):
        self.cfg = cfg
        self.sp = _soap.soap_params(cfg.cutoff, cfg.n_max, cfg.l_max, cfg.species,
                                    sigma=cfg.sigma, cutoff_padding=0.0, smooth=True,
                                    normalize=True)
        self.n_features = int(self.sp.n_features)
        self.table = species_table(cfg.species)
        self.zeta = cfg.zeta

    def descriptors(self, system: System) -> jax.Array:
        """``[n_atoms, F]`` normalised SOAP (0 on padding; NaN on neighbour overflow)."""
        return _soap.soap(system, self.sp, max_neighbors=self.cfg.max_neighbors)

    def _same(self, system, sparse_species):
        z = jnp.where(system.atom_mask, system.species, -1)
        return z[:, None] == sparse_species[None, :]  # [n, M]; sparse species 0 never matches

    def energy_row(self, system: System, sparse, sparse_species) -> jax.Array:
        """``[M]`` unit-δ kernel row of the total energy: ``Σ_i k(p̂_i, p̂_m)``."""
        p = self.descriptors(system)
        c = p @ sparse.T
        return jnp.sum(jnp.where(self._same(system, sparse_species),
                                 jax.lax.integer_pow(c, self.zeta), 0.0), axis=0)

    def rows(self, system: System, sparse, sparse_species):
        """Energy row ``[M]`` and force rows ``[n_atoms, 3, M]`` (``−∂/∂x`` of the energy row).

        Built from the per-slot SOAP Jacobian: ``∂k_im/∂r_{ia} = ζ c^{ζ−1} (∂p̂_i/∂r_{ia})·p̂_m``,
        scattered onto the atoms (``∂/∂x_j = Σ_{slots → j} − δ_ij Σ_slots``).
        """
        p, local, env = _soap.soap_jacobian(system, self.sp,
                                            max_neighbors=self.cfg.max_neighbors, dense=False)
        same = self._same(system, sparse_species)
        c = p @ sparse.T  # [n, M]
        k_e = jnp.sum(jnp.where(same, jax.lax.integer_pow(c, self.zeta), 0.0), axis=0)
        g = jnp.where(same, self.zeta * jax.lax.integer_pow(c, self.zeta - 1), 0.0)  # [n, M]
        t = jnp.einsum("iacf,mf->iacm", local, sparse) * g[:, None, None, :]  # [n, K, 3, M]
        n = system.n_atoms
        into = jax.ops.segment_sum(t.reshape((-1,) + t.shape[2:]), env.senders.reshape(-1),
                                   num_segments=n + 1)[:n]
        d = into - jnp.sum(t, axis=1)  # [n, 3, M] = ∂(Σ_i k_im)/∂x_j
        d = jnp.where(system.atom_mask[:, None, None], d, 0.0)
        return k_e, -d

    def prior_variances(self, system: System):
        """Unit-δ prior variances: total energy (scalar) and force components ``[n, 3]``."""
        p, jac = _soap.soap_jacobian(system, self.sp, max_neighbors=self.cfg.max_neighbors)
        n = system.n_atoms
        z = jnp.where(system.atom_mask, system.species, -1)
        same = (z[:, None] == z[None, :]) & system.atom_mask[:, None] & system.atom_mask[None, :]
        c = p @ p.T
        zeta = self.zeta
        var_e = jnp.sum(jnp.where(same, jax.lax.integer_pow(c, zeta), 0.0))
        d = jac.reshape(n, 3 * n, -1)  # [i, b, f] = ∂p̂_i/∂x_b
        gg = jnp.einsum("ibf,kbf->ikb", d, d)
        u = jnp.einsum("ibf,kf->ikb", d, p)  # D_i[b]·p̂_k
        w1 = jnp.where(same, zeta * jax.lax.integer_pow(c, zeta - 1), 0.0)
        w2 = jnp.where(same, zeta * (zeta - 1) * (jax.lax.integer_pow(c, zeta - 2)
                                                   if zeta >= 2 else 0.0), 0.0)
        var_f = (jnp.einsum("ik,ikb->b", w1, gg)
                 + jnp.einsum("ik,ikb,kib->b", w2, u, u))
        var_f = jnp.where(system.atom_mask[:, None], var_f.reshape(n, 3), 0.0)
        return var_e, var_f


def _init_params(kern: _Kernel, dtype=None) -> dict:
    cfg = kern.cfg
    m, f, s = cfg.n_sparse, kern.n_features, len(cfg.species)
    dtype = dtype or jnp.zeros(()).dtype
    eye = jnp.eye(m, dtype=dtype)
    return {
        "sparse_descriptors": jnp.zeros((m, f), dtype),
        "sparse_species": jnp.zeros((m,), jnp.int32),
        "weights": jnp.zeros((m,), dtype),
        "atomic_shift": jnp.zeros((s,), dtype),
        "chol_kmm": eye,
        "chol_a": eye,
        "delta2": jnp.ones((), dtype),
    }


def _energy_fn(kern: _Kernel):
    def energy(params, system: System) -> jax.Array:
        idx, unknown = species_index(kern.table, system.species, system.atom_mask)
        row = kern.energy_row(system, params["sparse_descriptors"], params["sparse_species"])
        shift = jnp.where(system.atom_mask, params["atomic_shift"][idx], 0.0)
        e = row @ params["weights"] + jnp.sum(shift)
        return jnp.where(jnp.any(unknown), jnp.nan, e)

    return energy


def _atomic_fn(kern: _Kernel):
    def atomic(params, system: System) -> dict:
        """Atomic energies ``[n_atoms]`` eV, their latent variances ``[n_atoms]`` eV² and the
        normalised SOAP vectors ``p̂_i`` ``[n_atoms, F]`` (the ``"features"``, 0 on padding)."""
        idx, unknown = species_index(kern.table, system.species, system.atom_mask)
        p = kern.descriptors(system)
        same = kern._same(system, params["sparse_species"])
        rows = jnp.where(same, jax.lax.integer_pow(p @ params["sparse_descriptors"].T,
                                                    kern.zeta), 0.0)  # [n, M], unit δ
        shift = params["atomic_shift"][idx]
        energy = jnp.where(system.atom_mask, rows @ params["weights"] + shift, 0.0)
        d2 = params["delta2"]
        r = (d2 * rows).T  # [M, n]
        a = jax.scipy.linalg.solve_triangular(params["chol_kmm"], r, lower=True)
        b = jax.scipy.linalg.solve_triangular(params["chol_a"], r, lower=True)
        # prior variance of one atomic energy: δ² k(p̂, p̂) = δ² (p̂ normalised)
        var = jnp.maximum(d2 - jnp.sum(a * a, 0) + jnp.sum(b * b, 0), 0.0)
        var = jnp.where(system.atom_mask, var, 0.0)
        nan = jnp.where(unknown, jnp.nan, 0.0)
        feats = jnp.where(system.atom_mask[:, None], p, 0.0) + nan[:, None]
        return {"energy": energy + nan, "variance": var + nan, "features": feats}

    return atomic


@register("gap", data_options=("cutoff", "avg_num_neighbors", "species"))
def gap(config: GAPConfig | dict | None = None, **overrides) -> Potential:
    """A GAP potential (fit its params with :func:`fit_gap`; ``init`` gives an empty model).

    Args:
      config: a :class:`GAPConfig`, a dict of its fields, or None.
      **overrides: fields replacing those of ``config``.

    Returns:
      A :class:`~jaxpot.Potential`; ``energy(params, system)`` is the posterior mean total
      energy (eV), jit/vmap/grad compatible, so MD and ``energy_and_forces`` work on it.
      Params: ``sparse_descriptors [M, F]``, ``sparse_species [M]`` (atomic numbers),
      ``weights [M]`` (eV), ``atomic_shift [S]`` (eV), ``chol_kmm``/``chol_a [M, M]`` (Cholesky
      factors of ``K_MM`` and ``A``) and ``delta2`` (δ², eV²).

      Model protocol: ``species`` (atomic numbers of the config), ``atomic(params, system)``
      → ``{"energy": [n_atoms] eV, "variance": [n_atoms] eV², "features": [n_atoms, F]}``
      (posterior mean and latent variance of each atomic energy, and the normalised SOAP
      vector ``p̂_i``, 0 on padding), and the closed-form
      ``fit(structures, *, refs=None, deadline=None, verbose=False, seed=None)`` →
      ``(potential, params, info)`` (:func:`fit_gap` with this config), which
      :func:`jaxpot.train.train` runs instead of gradient training.
    """
    cfg = _make(config, overrides)
    kern = _Kernel(cfg)

    def init(key, system):
        del key
        return _init_params(kern, system.positions.dtype)

    def fit(structures, *, refs=None, deadline=None, verbose=False, seed=None):
        """Closed-form fit (the model protocol's ``fit``): :func:`fit_gap` with this config."""
        extra = {} if seed is None else {"seed": int(seed)}
        return fit_gap(structures, cfg, refs=refs, deadline=deadline, verbose=verbose, **extra)

    return Potential(init, _energy_fn(kern), cfg.cutoff, {"name": "gap", "kwargs": cfg.to_dict()},
                     atomic=_atomic_fn(kern), outputs=("energy", "variance", "features"),
                     species=tuple(int(z) for z in np.flatnonzero(kern.table >= 0)), fit=fit)


# ---------------------------------------------------------------------------------------------
# Prediction with variances
# ---------------------------------------------------------------------------------------------


def gap_predictor(potential: Potential):
    """A jitted ``(params, system) -> (energy, energy_var, forces, forces_var)`` (see
    :func:`gap_predict`); cached per config, so repeated calls do not compile again."""
    import json

    return _predictor(json.dumps(potential.config["kwargs"], sort_keys=True))


@functools.lru_cache(maxsize=16)
def _predictor(kwargs_json: str):
    import json

    kern = _Kernel(_make(json.loads(kwargs_json), {}))

    def predict(params, system):
        sparse, zs = params["sparse_descriptors"], params["sparse_species"]
        k_e, k_f = kern.rows(system, sparse, zs)
        d2 = params["delta2"]
        idx, _ = species_index(kern.table, system.species, system.atom_mask)
        shift = jnp.sum(jnp.where(system.atom_mask, params["atomic_shift"][idx], 0.0))
        energy = k_e @ params["weights"] + shift
        forces = k_f @ params["weights"]
        prior_e, prior_f = kern.prior_variances(system)

        def var(rows, prior):  # rows [..., M] in unit-δ kernel units
            r = d2 * rows
            flat = r.reshape(-1, r.shape[-1]).T  # [M, R]
            a = jax.scipy.linalg.solve_triangular(params["chol_kmm"], flat, lower=True)
            b = jax.scipy.linalg.solve_triangular(params["chol_a"], flat, lower=True)
            v = d2 * prior - (jnp.sum(a * a, 0) - jnp.sum(b * b, 0)).reshape(prior.shape)
            return jnp.maximum(v, 0.0)

        f_var = jnp.where(system.atom_mask[:, None], var(k_f, prior_f), 0.0)
        return energy, var(k_e[None], prior_e[None])[0], forces, f_var

    return jax.jit(predict)


def gap_predict(potential: Potential, params, system: System):
    """Posterior mean and variance of a structure's energy and forces.

    Args:
      potential: a :func:`gap` potential (its config gives the descriptor and kernel).
      params: fitted params from :func:`fit_gap`.
      system: one unbatched structure with edges for ``potential.cutoff``.

    Returns:
      ``(energy [] eV, energy_var [] eV², forces [n_atoms, 3] eV/Å, forces_var [n_atoms, 3]
      (eV/Å)²)``; variances are of the latent (noise-free) function, 0 on padding.
    """
    return gap_predictor(potential)(params, system)


def gap_uncertainty_report(potential: Potential, params, frames, *, sigma_force: float = 0.0,
                           deadline: float | None = None, seed: int = 0) -> dict:
    """How well the predicted force uncertainty ranks and covers the actual errors.

    For each labelled frame the posterior force mean and variance (:func:`gap_predict`) are
    compared with the reference forces. Reported (all rank correlations are Spearman's):

    - ``spearman_component``: σ of each force component vs its |error|;
    - ``spearman_atom``: ``sqrt(Σ_c σ²_ic)`` vs ``|ΔF_i|`` per atom;
    - ``spearman_structure``: a frame's mean σ vs its force MAE (which frames to label next);
    - ``spearman_component_ceiling``: the value a perfectly calibrated model would get for
      the same σ (errors drawn as σ·z, z ~ N(0, 1)); a single |error| is one draw, so a
      per-component correlation cannot approach 1 unless σ spans orders of magnitude;
    - ``coverage_1sigma`` / ``coverage_2sigma``: fraction of components with |error| below
      1σ / 2σ of the predictive distribution of a label, σ² = latent variance + σ_F²
      (68 % / 95 % if calibrated);
    - ``energy_*`` the same for total energies when enough frames are evaluated.

    Args:
      potential, params: a fitted GAP (:func:`fit_gap`).
      frames: labelled structures (a :class:`jaxpot.data.Dataset`) with energy and forces.
      sigma_force: the fitted force noise, eV/Å (``GAPFitInfo.sigma_force``), added to the
        latent variance for the coverage figures.
      deadline: ``time.monotonic()`` at which to stop evaluating (at least 5 frames are).
      seed: seed of the calibrated-ceiling draw.

    Returns:
      A dict of floats (``nan`` where undefined) and ``n_frames``.
    """
    from scipy.stats import spearmanr

    predict = gap_predictor(potential)
    frames = _structures(frames)
    n_at = max(s.n_atoms for s in frames)
    n_ed = max(max(s.n_edges for s in frames), 1)
    s_f2 = float(sigma_force) ** 2
    err_c, std_c, cov_c, err_a, std_a, err_s, std_s, e_err, e_std = ([] for _ in range(9))
    for s in frames:
        if deadline is not None and time.monotonic() > deadline and len(err_s) >= 5:
            break
        if s.forces is None:
            continue
        e, ev, f, fv = predict(params, s.system(n_atoms=n_at, n_edges=n_ed))
        f = np.asarray(f)[: s.n_atoms]
        fv = np.asarray(fv)[: s.n_atoms]
        d = f - s.forces
        err_c.append(np.abs(d).ravel())
        std_c.append(np.sqrt(fv).ravel())
        cov_c.append(np.sqrt(fv + s_f2).ravel())
        err_a.append(np.linalg.norm(d, axis=1))
        std_a.append(np.sqrt(fv.sum(1)))
        err_s.append(float(np.mean(np.abs(d))))
        std_s.append(float(np.mean(np.sqrt(fv))))
        if s.energy is not None:
            e_err.append(abs(float(e) - s.energy))
            e_std.append(float(np.sqrt(ev)))

    def rho(a, b):
        if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
            return float("nan")
        return float(spearmanr(a, b).statistic)

    err_c, std_c, cov_c = np.concatenate(err_c), np.concatenate(std_c), np.concatenate(cov_c)
    z = np.random.default_rng(seed).standard_normal(std_c.shape)
    return {
        "n_frames": len(err_s),
        "spearman_component": rho(std_c, err_c),
        "spearman_component_ceiling": rho(std_c, np.abs(std_c * z)),
        "spearman_atom": rho(np.concatenate(std_a), np.concatenate(err_a)),
        "spearman_structure": rho(np.asarray(std_s), np.asarray(err_s)),
        "coverage_1sigma": float(np.mean(err_c <= cov_c)),
        "coverage_2sigma": float(np.mean(err_c <= 2.0 * cov_c)),
        "spearman_energy": rho(np.asarray(e_std), np.asarray(e_err)),
    }


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GAPFitInfo:
    """Diagnostics of :func:`fit_gap`.

    Attributes:
      n_structures: structures used; n_environments: atoms in them; n_sparse: M.
      delta, sigma_energy, sigma_force: hyperparameters used (eV, eV/atom, eV/Å).
      log_marginal_likelihood: of the chosen hyperparameters (DTC approximation).
      grid: ``[(σ_E, σ_F, log ML), ...]``, the starting grid of ``optimize_noise`` (at the
        initial δ; the chosen values come from the refinement that follows it).
      time_s: wall time of the fit.
    """

    n_structures: int
    n_environments: int
    n_sparse: int
    delta: float
    sigma_energy: float
    sigma_force: float
    log_marginal_likelihood: float
    grid: list
    time_s: float


def _select_fps(x: np.ndarray, m: int, rng) -> np.ndarray:
    """Farthest-point sampling in the kernel metric ``d² = 2 − 2 p̂·p̂'`` (normalised rows)."""
    n = x.shape[0]
    first = int(rng.integers(n))
    chosen = [first]
    d = 2.0 - 2.0 * (x @ x[first])
    for _ in range(m - 1):
        j = int(np.argmax(d))
        chosen.append(j)
        d = np.minimum(d, 2.0 - 2.0 * (x @ x[j]))
    return np.asarray(chosen)


def _select_cur(x: np.ndarray, m: int, rng) -> np.ndarray:
    """CUR row selection: sample rows by leverage scores of the rank-``m`` SVD."""
    u, _, _ = np.linalg.svd(x, full_matrices=False)
    k = min(m, u.shape[1])
    lev = np.sum(u[:, :k] ** 2, axis=1) + 1e-12
    return rng.choice(x.shape[0], size=m, replace=False, p=lev / lev.sum())


def _cholesky(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower Cholesky factor of ``a``, adding diagonal jitter (1e-12 … 1e-4 of the mean
    diagonal) only if ``a`` is numerically not positive definite; returns ``(L, a_used)``."""
    scale = float(np.mean(np.diag(a))) or 1.0
    for k in (None, -12, -10, -8, -6, -4):
        b = a if k is None else a + scale * 10.0**k * np.eye(a.shape[0])
        try:
            return np.linalg.cholesky(b), b
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("gap: kernel matrix is not positive definite even with jitter")


def _maximize_evidence(solve, start, with_forces: bool, fit_delta: bool, grid: list):
    """Hyperparameters ``(δ, σ_E, σ_F)`` maximising the DTC log marginal likelihood.

    A 5 × 5 grid of (σ_E, σ_F) over factors 1/4 … 4 of the starting values (recorded in
    ``grid``) gives a starting point that is then refined by Nelder–Mead in log space over
    ``(σ_E, σ_F)`` and, if ``fit_delta``, ``δ``, so the optimum is not confined to the grid.
    Each evaluation is two Cholesky factorisations of ``M × M`` matrices.
    """
    from scipy.optimize import minimize

    def logml(d, s_e, s_f):
        try:
            value = solve(d, s_e, s_f)[-1]
        except np.linalg.LinAlgError:
            return -np.inf
        return float(value) if np.isfinite(value) else -np.inf

    d0, s_e0, s_f0 = start
    factors = (0.25, 0.5, 1.0, 2.0, 4.0)
    best, best_ml = start, -np.inf
    for fe in factors:
        for ff in factors if with_forces else (1.0,):
            ml = logml(d0, s_e0 * fe, s_f0 * ff)
            if not np.isfinite(ml):  # not positive definite: leave it out (JSON has no -inf)
                continue
            grid.append((s_e0 * fe, s_f0 * ff, ml))
            if ml > best_ml:
                best, best_ml = (d0, s_e0 * fe, s_f0 * ff), ml
    free = [1] + ([2] if with_forces else []) + ([0] if fit_delta else [])
    x0 = np.log(np.asarray(best))

    def unpack(x):
        full = x0.copy()
        full[free] = np.clip(x, x0[free] - 12.0, x0[free] + 12.0)
        return np.exp(full)

    res = minimize(lambda x: -logml(*unpack(x)), x0[free], method="Nelder-Mead",
                   options={"xatol": 1e-3, "fatol": 1e-3, "maxfev": 300,
                            "initial_simplex": x0[free] + np.vstack([np.zeros(len(free)),
                                                                     np.eye(len(free))])})
    if np.isfinite(res.fun) and -res.fun > best_ml:
        best = tuple(float(v) for v in unpack(res.x))
    return best


def _structures(frames) -> list:
    """Labelled structures (``jaxpot.data.Structure`` or alike) from a dataset or a list."""
    items = list(getattr(frames, "structures", frames))
    for k, s in enumerate(items):
        if not hasattr(s, "system"):
            raise TypeError(f"gap: item {k} is a {type(s).__name__}, not a labelled structure; "
                            "pass a jaxpot.data.Dataset (jaxpot.data.from_atoms(frames, "
                            "cutoff=...)) or use jaxpot.train.fit_gap, which takes ase.Atoms")
    return items


@dataclasses.dataclass
class _Sums:
    """Unit-δ normal-equation pieces accumulated structure by structure (all float64)."""

    g_e: np.ndarray
    g_f: np.ndarray
    b_e: np.ndarray
    b_f: np.ndarray
    yy_e: float = 0.0
    yy_f: float = 0.0
    logn: float = 0.0
    n_e: int = 0
    n_f: int = 0
    n_env: int = 0
    n_used: int = 0
    resid_e: list = dataclasses.field(default_factory=list)
    f_all: list = dataclasses.field(default_factory=list)

    @classmethod
    def zeros(cls, m: int) -> _Sums:
        return cls(np.zeros((m, m)), np.zeros((m, m)), np.zeros(m), np.zeros(m))

    def add(self, s, k_e, k_f, y: float | None, use_forces: bool) -> None:
        """Add one structure; ``y`` (residual energy, eV) is None without an energy label."""
        m = k_e.shape[0]
        if y is not None:
            self.resid_e.append(y / s.n_atoms)
            self.g_e += np.outer(k_e, k_e) / s.n_atoms
            self.b_e += k_e * y / s.n_atoms
            self.yy_e += y * y / s.n_atoms
            self.logn += math.log(s.n_atoms)
            self.n_e += 1
        self.n_env += s.n_atoms
        self.n_used += 1
        if use_forces and s.forces is not None:
            kf = np.asarray(k_f)[: s.n_atoms].reshape(-1, m)
            yf = np.asarray(s.forces, np.float64).reshape(-1)
            self.g_f += kf.T @ kf
            self.b_f += kf.T @ yf
            self.yy_f += float(yf @ yf)
            self.n_f += yf.size
            self.f_all.append(yf)


def _candidates(kern: _Kernel, structures, systems, t0: float, deadline: float | None):
    """Descriptors ``[N_env, F]`` and centre elements of the candidate sparse environments."""
    cfg = kern.cfg
    desc = jax.jit(kern.descriptors)
    p_all, z_all = [], []
    for k, sy in enumerate(systems):
        p = np.asarray(desc(sy))
        if not np.all(np.isfinite(p)):
            raise ValueError(f"gap: {structures[k].source or f'structure {k}'} has an atom with "
                             f"more than max_neighbors={cfg.max_neighbors} neighbours")
        mask = np.asarray(sy.atom_mask, bool)
        p_all.append(p[mask])
        z_all.append(np.asarray(sy.species)[mask])
        if deadline is not None and k >= 2:
            # enough candidates (≥ 3 M environments) or a quarter of the budget spent
            n_cand = sum(len(x) for x in p_all)
            spent = time.monotonic() - t0
            if (n_cand >= 3 * cfg.n_sparse and spent > 0.1 * (deadline - t0)) or (
                    spent > 0.25 * (deadline - t0)):
                break
    return np.concatenate(p_all), np.concatenate(z_all)


def _sparse_set(p_all: np.ndarray, z_all: np.ndarray, cfg: GAPConfig, rng) -> np.ndarray:
    """Indices of the M representative environments, per element in proportion."""
    m = min(cfg.n_sparse, p_all.shape[0])
    if m == p_all.shape[0]:
        return np.arange(m)
    chosen = []
    for z in np.unique(z_all):
        sel = np.nonzero(z_all == z)[0]
        m_z = min(max(1, int(round(m * sel.size / z_all.size))), sel.size)
        pick = (_select_fps if cfg.sparse_method == "fps" else _select_cur)(p_all[sel], m_z, rng)
        chosen.extend(sel[pick].tolist())
    return np.asarray(chosen[:m])


def _accumulate(kern, sparse, sparse_z, structures, systems, refs, *, deadline, verbose, t0):
    """Normal-equation sums over the structures that fit before ``deadline``."""
    import sys

    rows_fn = jax.jit(lambda sy: kern.rows(sy, sparse, sparse_z))
    sums = _Sums.zeros(sparse.shape[0])
    t_acc = time.monotonic()
    for k, (s, sy) in enumerate(zip(structures, systems, strict=True)):
        if deadline is not None and k >= 1:
            per = (time.monotonic() - t_acc) / k
            if time.monotonic() + 1.5 * per + 5.0 > deadline:
                break
        k_e, k_f = rows_fn(sy)
        y = None if s.energy is None else s.energy - sum(refs[int(z)] for z in s.numbers)
        sums.add(s, np.asarray(k_e), k_f, y, kern.cfg.use_forces)
        if verbose and (k + 1) % 50 == 0:
            print(f"gap: {k + 1}/{len(structures)} structures accumulated "
                  f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    return sums


def _default_hypers(kern, sums: _Sums, structures, systems) -> tuple[float, float, float]:
    """Starting ``(δ, σ_E, σ_F)``: δ from the energy spread (and the force scale), σ_E = 1 %
    of δ, σ_F = 5 % of the force RMS, unless the config fixes them."""
    cfg = kern.cfg
    delta = cfg.delta
    if delta is None:
        delta = max(float(np.std(np.asarray(sums.resid_e))), 1e-3)
        if sums.f_all:
            # match the prior force variance to the force labels (forces dominate the data)
            prior = jax.jit(kern.prior_variances)
            unit = np.mean([float(np.mean(np.asarray(prior(sy)[1])[: s.n_atoms]))
                            for s, sy in zip(structures[:3], systems[:3], strict=False)])
            if unit > 0:
                delta = max(delta, math.sqrt(np.mean(np.concatenate(sums.f_all) ** 2) / unit))
    f_rms = float(np.sqrt(np.mean(np.concatenate(sums.f_all) ** 2))) if sums.f_all else 0.0
    s_e0 = cfg.sigma_energy or max(0.01 * delta, 1e-4)
    s_f0 = cfg.sigma_force or max(0.05 * f_rms, 1e-3)
    return delta, s_e0, s_f0


def _solver(k_mm: np.ndarray, sums: _Sums, jitter: float):
    """``solve(δ, σ_E, σ_F) -> (α, L_A, L_MM, δ², log ML)`` on the host in float64."""
    eye = np.eye(k_mm.shape[0])
    n_f = sums.n_f

    def solve(d, s_e, s_f):
        d2 = d * d
        l_mm, kmm = _cholesky(d2 * k_mm + jitter * d2 * eye)
        a = kmm + d2 * d2 * (sums.g_e / s_e**2 + (sums.g_f / s_f**2 if n_f else 0.0))
        b = d2 * (sums.b_e / s_e**2 + (sums.b_f / s_f**2 if n_f else 0.0))
        l_a, _ = _cholesky(a)
        z = np.linalg.solve(l_a, b)
        alpha = np.linalg.solve(l_a.T, z)
        yy = sums.yy_e / s_e**2 + (sums.yy_f / s_f**2 if n_f else 0.0)
        logdet_lam = (sums.n_e * math.log(s_e**2) + sums.logn
                      + (n_f * math.log(s_f**2) if n_f else 0.0))
        fit = yy - float(z @ z)
        logml = -0.5 * (fit + logdet_lam + 2.0 * np.sum(np.log(np.diag(l_a)))
                        - 2.0 * np.sum(np.log(np.diag(l_mm)))
                        + (sums.n_e + n_f) * math.log(2 * math.pi))
        return alpha, l_a, l_mm, d2, logml

    return solve


def fit_gap(frames, config: GAPConfig | dict | None = None, *, refs: dict | None = None,
            deadline: float | None = None, verbose: bool = False, **overrides):
    """Fit a sparse GAP to total energies (and forces) in closed form.

    The linear algebra runs on the host in NumPy float64 and the descriptors and kernel rows
    under a scoped ``jax.enable_x64`` (the global JAX setting is left as it is); the returned
    params are float64 NumPy arrays.

    Args:
      frames: labelled structures: a :class:`jaxpot.data.Dataset` (or a list of its
        structures); :func:`jaxpot.train.fit_gap` also takes ``ase.Atoms``.
      config: a :class:`GAPConfig`, dict or None; ``**overrides`` replace its fields.
      refs: element reference energies ``{Z: eV}`` (default: least squares on the structures).
      deadline: ``time.monotonic()`` time; structures are added (in random order) only while
        the projected accumulation time fits before it.
      verbose: print progress to stderr.

    Returns:
      ``(potential, params, info)``: the :func:`gap` potential, its fitted params and a
      :class:`GAPFitInfo`.
    """
    t0 = time.monotonic()
    cfg = _make(config, overrides)
    structures = _structures(frames)
    cutoff = getattr(frames, "cutoff", None)
    if cutoff is not None and cutoff + 1e-9 < cfg.cutoff:
        raise ValueError(f"gap: data edges built for {cutoff} Å < model cutoff {cfg.cutoff} Å")
    if not structures:
        raise ValueError("gap: no training structures")
    with jax.enable_x64(True):
        return _fit(structures, cfg, refs, deadline=deadline, verbose=verbose, t0=t0)


def _fit(structures, cfg: GAPConfig, refs, *, deadline, verbose, t0):
    import sys

    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(structures))
    if cfg.max_structures is not None:
        order = order[: cfg.max_structures]
    structures = [structures[int(i)] for i in order]
    refs = fit_element_refs(Dataset(structures, cfg.cutoff)) if refs is None else refs
    kern = _Kernel(cfg)
    unknown = {int(z) for s in structures for z in s.numbers} - set(
        int(z) for z in np.flatnonzero(kern.table >= 0))
    if unknown:
        raise ValueError(f"gap: elements {sorted(unknown)} are in the data but not in species "
                         f"{list(cfg.species)}")
    n_at = max(s.n_atoms for s in structures)
    n_ed = max(max(s.n_edges for s in structures), 1)
    systems = [s.system(n_atoms=n_at, n_edges=n_ed, dtype=jnp.float64) for s in structures]
    p_all, z_all = _candidates(kern, structures, systems, t0, deadline)
    chosen = _sparse_set(p_all, z_all, cfg, rng)
    m = chosen.size
    sparse = jnp.asarray(p_all[chosen])
    sparse_z = jnp.asarray(z_all[chosen], jnp.int32)
    same = z_all[chosen][:, None] == z_all[chosen][None, :]
    k_mm = np.where(same, (p_all[chosen] @ p_all[chosen].T) ** cfg.zeta, 0.0)
    sums = _accumulate(kern, sparse, sparse_z, structures, systems, refs, deadline=deadline,
                       verbose=verbose, t0=t0)
    solve = _solver(k_mm, sums, cfg.jitter)
    grid: list = []
    best = _default_hypers(kern, sums, structures, systems)
    if cfg.optimize_noise:
        best = _maximize_evidence(solve, best, sums.n_f > 0, cfg.delta is None, grid)
        if verbose:
            print(f"gap: marginal likelihood: δ={best[0]:.4g} eV, σ_E={best[1]:.3g} eV/atom, "
                  f"σ_F={best[2]:.3g} eV/Å", file=sys.stderr, flush=True)
    alpha, l_a, l_mm, d2, logml = solve(*best)
    params = {
        "sparse_descriptors": np.asarray(sparse, np.float64),
        "sparse_species": np.asarray(sparse_z, np.int32),
        "weights": np.asarray(d2 * alpha, np.float64),
        "atomic_shift": np.asarray([refs.get(int(z), 0.0) for z in _numbers(cfg.species)],
                                   np.float64),
        "chol_kmm": np.asarray(l_mm, np.float64),
        "chol_a": np.asarray(l_a, np.float64),
        "delta2": np.asarray(d2, np.float64),
    }
    potential = gap(cfg) if m == cfg.n_sparse else gap(cfg, n_sparse=m)
    info = GAPFitInfo(n_structures=sums.n_used, n_environments=sums.n_env, n_sparse=m,
                      delta=best[0], sigma_energy=best[1], sigma_force=best[2],
                      log_marginal_likelihood=float(logml), grid=grid,
                      time_s=time.monotonic() - t0)
    if verbose:
        print(f"gap: fitted on {sums.n_used} structures ({sums.n_env} environments), M={m}, "
              f"δ={best[0]:.4g} eV, σ_E={best[1]:.3g} eV/atom, σ_F={best[2]:.3g} eV/Å, "
              f"{info.time_s:.1f} s", file=sys.stderr, flush=True)
    return potential, params, info


def _numbers(species) -> list[int]:
    from ase.data import atomic_numbers

    return [int(atomic_numbers[s]) if isinstance(s, str) else int(s) for s in species]
