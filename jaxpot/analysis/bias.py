"""Collective variables, harmonic biases on any potential, and umbrella-sampling windows.

A **collective variable** (CV) here is a JAX function ``cv(system) -> scalar`` of one unbatched
:class:`~jaxpot.System` (positions in Å, its cell for periodic images). Built-ins:
:func:`distance` (Å), :func:`angle` and :func:`dihedral` (radians), :func:`coordination`
(dimensionless, a smooth switching count) and :func:`from_positions` for any user function of
the ``[n_atoms, 3]`` positions. Distances between atoms use the minimum image through the
cell's fractional coordinates in periodic directions (exact below half the cell width).

:func:`harmonic_bias` wraps any :class:`~jaxpot.Potential` into one whose energy adds
``½ k (s(x) − s₀)²`` (eV, with ``k`` in eV per CV unit²). ``k`` and ``s₀`` live in the
parameters (``params["bias"]``), not in the traced program, so every umbrella window runs the
same compiled MD program with different numbers (:func:`window_params`). The wrapped potential
is jit-, grad- and vmap-compatible; forces and stress include the bias. It is a runtime-only
potential: a CV is an arbitrary Python function, so the bias is not registered and cannot be
rebuilt from its config (its ``config`` records the inner model and the CV's name only).

:func:`umbrella_sampling` runs one Langevin simulation per window, recording the CV as an
observer inside the fused loop, and returns the samples for :mod:`jaxpot.analysis.wham`. The
windows run one after another with ``md.simulate``. Every window traces the same program (only
the parameters differ), so with JAX's persistent compilation cache on
(``JAX_COMPILATION_CACHE_DIR``) only the first window compiles; without it each window compiles
again. ``md.simulate_replicas`` (one vmapped loop for many replicas) shares one set of
parameters among its replicas and takes no observers, so it cannot yet hold windows with
different centres; the CV would also have to be recomputed from its saved positions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.potential import Potential

__all__ = ["distance", "angle", "dihedral", "coordination", "from_positions", "harmonic_bias",
           "window_params", "cv_observer", "Umbrella", "umbrella_sampling"]

CV = Callable[[object], jax.Array]


def _vector(system, i: int, j: int) -> jax.Array:
    """``x_j − x_i`` with the minimum image in periodic directions (Å)."""
    d = system.positions[j] - system.positions[i]
    pbc = jnp.asarray(system.pbc)
    cell = system.cell
    basis = jnp.where((jnp.sum(cell * cell, 1) > 0)[:, None], cell, jnp.eye(3, dtype=d.dtype))
    frac = jnp.linalg.solve(basis.T, d)
    frac = frac - jnp.where(pbc, jnp.round(jax.lax.stop_gradient(frac)), 0.0)
    return frac[0] * basis[0] + frac[1] * basis[1] + frac[2] * basis[2]


def _named(fn, name: str):
    fn.cv_name = name
    return fn


def distance(i: int, j: int) -> CV:
    """``|x_j − x_i|`` in Å (minimum image)."""
    def cv(system):
        d = _vector(system, i, j)
        return jnp.sqrt(jnp.sum(d * d))
    return _named(cv, f"distance({i},{j})")


def angle(i: int, j: int, k: int) -> CV:
    """The angle i–j–k at atom ``j``, radians in ``[0, π]``."""
    def cv(system):
        a, b = _vector(system, j, i), _vector(system, j, k)
        cos = jnp.dot(a, b) / jnp.sqrt(jnp.dot(a, a) * jnp.dot(b, b))
        return jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    return _named(cv, f"angle({i},{j},{k})")


def dihedral(i: int, j: int, k: int, l: int) -> CV:
    """The dihedral i–j–k–l, radians in ``(−π, π]`` (IUPAC sign: ``atan2``)."""
    def cv(system):
        b1, b2, b3 = _vector(system, i, j), _vector(system, j, k), _vector(system, k, l)
        n1, n2 = jnp.cross(b1, b2), jnp.cross(b2, b3)
        y = jnp.sqrt(jnp.dot(b2, b2)) * jnp.dot(b1, n2)
        return jnp.arctan2(y, jnp.dot(n1, n2))
    return _named(cv, f"dihedral({i},{j},{k},{l})")


def coordination(group_a: Sequence[int], group_b: Sequence[int], r0: float, *, n: int = 6,
                 m: int = 12) -> CV:
    """``Σ_{a∈A} Σ_{b∈B, b≠a} (1 − (r/r0)ⁿ) / (1 − (r/r0)ᵐ)``, a smooth count of B atoms within
    about ``r0`` (Å) of A atoms (PLUMED's rational switching function)."""
    ga, gb = np.asarray(group_a, int), np.asarray(group_b, int)
    pairs = np.array([(a, b) for a in ga for b in gb if a != b], int).reshape(-1, 2)

    def cv(system):
        def one(p):
            d = _vector(system, p[0], p[1])
            x = jnp.sqrt(jnp.sum(d * d)) / r0
            near = jnp.abs(x - 1.0) < 1e-6  # the limit n/m at r = r0, without 0/0
            xs = jnp.where(near, 0.5, x)
            return jnp.where(near, n / m, (1 - xs ** n) / (1 - xs ** m))
        return jnp.sum(jax.vmap(one)(jnp.asarray(pairs)))
    return _named(cv, f"coordination(r0={r0})")


def from_positions(fn: Callable[[jax.Array], jax.Array], name: str = "custom") -> CV:
    """A CV from any JAX function of the ``[n_atoms, 3]`` positions (Å) to a scalar."""
    return _named(lambda system: fn(system.positions), name)


def harmonic_bias(potential: Potential, cv: CV, *, k: float, s0: float) -> Potential:
    """``potential`` plus ``½ k (cv(x) − s₀)²``.

    Args:
      potential: any :class:`~jaxpot.Potential`.
      cv: a collective variable ``cv(system) -> scalar``.
      k: spring constant, eV per CV unit² (eV/Å² for a distance, eV/rad² for angles).
      s0: the centre, in CV units.

    Returns:
      A runtime-only :class:`~jaxpot.Potential` with params
      ``{"potential": inner params, "bias": {"k": k, "s0": s0}}``; its ``atomic`` (when the
      inner model has one) reports the inner model's per-atom outputs (the bias is not
      per-atom).
    """
    if not k >= 0:
        raise ValueError(f"harmonic_bias: k must be ≥ 0, got {k}")

    def init(key, system):
        return {"potential": potential.init(key, system),
                "bias": {"k": jnp.asarray(float(k)), "s0": jnp.asarray(float(s0))}}

    def energy(params, system):
        b = params["bias"]
        s = cv(system)
        return potential.energy(params["potential"], system) + 0.5 * b["k"] * (s - b["s0"]) ** 2

    atomic = None
    if potential.atomic is not None:
        def atomic(params, system):
            return potential.atomic(params["potential"], system)

    config = {"name": "harmonic_bias", "kwargs": {
        "potential": potential.config, "cv": getattr(cv, "cv_name", "custom"),
        "k": float(k), "s0": float(s0), "runtime_only": True}}
    return Potential(init=init, energy=energy, cutoff=potential.cutoff, config=config,
                     atomic=atomic, outputs=potential.outputs if atomic else (),
                     local=False, species=potential.species)


def window_params(params, *, s0: float, k: float | None = None):
    """The same parameters with a new bias centre (and spring constant)."""
    b = dict(params["bias"])
    b["s0"] = jnp.asarray(float(s0), jnp.asarray(b["s0"]).dtype)
    if k is not None:
        b["k"] = jnp.asarray(float(k), jnp.asarray(b["k"]).dtype)
    return {**params, "bias": b}


def cv_observer(cv: CV, name: str = "cv"):
    """An ``md.simulate`` observer recording ``cv`` of the state's structure at each log
    point (inside the fused loop): ``log[name]`` ``[n_log]``."""
    def observer(state, output):
        return {name: cv(state.system)}
    return observer


@dataclasses.dataclass
class Umbrella:
    """Samples of umbrella windows.

    Attributes:
      centers: ``[K]`` window centres, CV units.
      k: ``[K]`` spring constants, eV per CV unit².
      samples: ``[K, n]`` CV values after equilibration, one row per window.
      kT: eV.
      results: the ``md.MDResult`` of every window (logs, timings).
    """

    centers: np.ndarray
    k: np.ndarray
    samples: np.ndarray
    kT: float
    results: list


def umbrella_sampling(potential: Potential, params, system, cv: CV, centers, *, k: float,
                      temperature_kelvin: float, steps: int, dt_fs: float,
                      equilibration_steps: int = 0, log_every: int = 10,
                      friction_per_fs: float = 0.01, seed: int = 0, starts=None,
                      **simulate_kw) -> Umbrella:
    """Langevin umbrella sampling of ``cv`` restrained at each centre.

    Args:
      potential, params: the unbiased model and its parameters.
      system: the starting structure of every window, unless ``starts`` is given.
      cv: the collective variable.
      centers: ``[K]`` window centres.
      k: spring constant, eV per CV unit².
      temperature_kelvin: K.
      steps: production steps per window (the CV is recorded every ``log_every``).
      dt_fs: time step, fs.
      equilibration_steps: steps run first in each window and discarded.
      log_every: steps between CV samples.
      friction_per_fs: Langevin friction, 1/fs.
      seed: seed of window 0 (window w uses ``seed + w``).
      starts: optional sequence of K structures, one per window (each near its centre; a
        window started far from its centre begins with a large bias energy).
      **simulate_kw: passed on to ``md.simulate``.

    Returns:
      An :class:`Umbrella` with ``steps // log_every`` samples per window.
    """
    from jaxpot import md, units

    centers = np.asarray(centers, np.float64).reshape(-1)
    biased = harmonic_bias(potential, cv, k=k, s0=float(centers[0]))
    base = {"potential": params, "bias": {"k": jnp.asarray(float(k), system.positions.dtype),
                                          "s0": jnp.asarray(0.0, system.positions.dtype)}}
    samples, results = [], []
    total = int(equilibration_steps) + int(steps)
    skip = int(equilibration_steps) // log_every
    if starts is not None and len(starts) != len(centers):
        raise ValueError(f"umbrella_sampling: {len(starts)} starting structures for "
                         f"{len(centers)} windows")
    for w, c in enumerate(centers):
        start = system if starts is None else starts[w]
        res = md.simulate(biased, window_params(base, s0=float(c)), start, ensemble="langevin",
                          dt_fs=dt_fs, temperature_kelvin=temperature_kelvin, steps=total,
                          log_every=log_every, friction_per_fs=friction_per_fs, seed=seed + w,
                          observers=[cv_observer(cv, "cv")], **simulate_kw)
        samples.append(np.asarray(res.log["cv"], np.float64)[1 + skip:])
        results.append(res)
    return Umbrella(centers=centers, k=np.full(len(centers), float(k)),
                    samples=np.stack(samples), kT=float(temperature_kelvin * units.kB),
                    results=results)
