"""Harmonic vibrations from the exact Hessian: frequencies, normal modes and thermodynamics.

Units and shapes (``n`` = padded atom slots of the :class:`~jaxpot.System`):

* Hessian ``H``: ``[3n, 3n]`` eV/Å² (:func:`jaxpot.potential.hessian`, reshaped); the
  mass-weighted dynamical matrix ``D = M^{-1/2} H M^{-1/2}`` is in eV/(Å²·amu).
* frequencies: ``[3n]`` in cm⁻¹, ascending; an imaginary mode (``λ < 0``) is reported as the
  negative number ``−sqrt(|λ|)``; slots that are not vibrations (the projected translations and
  rotations, and padding atoms) are NaN and sorted last.
* modes: ``[3n, n, 3]``; ``modes[k]`` is the Cartesian displacement pattern of mode ``k``
  (``e_k / sqrt(m)``, normalised to 1; zero on padding atoms). ``mass_weighted[k]`` is the
  orthonormal eigenvector ``e_k`` of ``D``.
* energies in eV, entropies in eV/K, temperatures in K.

Projection: the three rigid translations are always removed; the rigid rotations about the
centre of mass are removed too for a non-periodic structure (``rotations=None`` decides from
``pbc``). For a linear molecule the rotation about its axis is a zero vector and is dropped
(rank-revealing), so it has ``3N − 5`` modes. The projected-out directions are moved to the top
of the spectrum by a shift, so everything stays jittable and ``vmap``-able over structures of
one shape (:func:`vibrations_batch`).

For large systems, :func:`lowest_modes` never forms ``H``: it runs Lanczos with full
reorthogonalisation on the projected, mass-weighted Hessian-vector product (forward-over-reverse
``jax.jvp`` of ``jax.grad``), memory ``O(k_krylov · 3n)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot import units
from jaxpot.potential import Potential, hessian
from jaxpot.system import System

__all__ = ["Vibrations", "HarmonicThermo", "hessian_matrix", "dynamical_matrix",
           "external_basis", "vibrations", "vibrations_batch", "frequencies_cm",
           "harmonic_thermo", "lowest_modes", "EV_PER_CM", "HBAR_OMEGA"]

EV_PER_CM = 100.0 * units._c * units._hplanck / units._e
"""eV per cm⁻¹ (h c × 1 cm⁻¹), as ``ase.units.invcm``."""

HBAR_OMEGA = units._hbar * 1e10 / math.sqrt(units._e * units._amu)
"""ħω in eV for a dynamical-matrix eigenvalue of 1 eV/(Å²·amu): ``ħω = HBAR_OMEGA·sqrt(λ)``."""

_SHIFT = 1e6  # eV/(Å² amu): external directions are moved far above any vibration


class Vibrations(NamedTuple):
    """Normal modes of one structure (a leading batch axis from :func:`vibrations_batch`).

    Attributes:
      frequencies: ``[3n]`` cm⁻¹, ascending, imaginary modes negative, NaN for non-modes.
      eigenvalues: ``[3n]`` eigenvalues of the projected ``D``, eV/(Å²·amu) (non-modes: NaN).
      modes: ``[3n, n, 3]`` Cartesian displacement patterns, each of unit norm.
      mass_weighted: ``[3n, n, 3]`` orthonormal eigenvectors of ``D``.
      n_modes: number of vibrational modes (``3 N_real −`` the projected directions).
    """

    frequencies: jax.Array
    eigenvalues: jax.Array
    modes: jax.Array
    mass_weighted: jax.Array
    n_modes: jax.Array


class HarmonicThermo(NamedTuple):
    """Harmonic-oscillator thermodynamics of a set of modes (real, positive ones only).

    Attributes:
      zpe: zero-point energy ``Σ ħω/2``, eV.
      free_energy: vibrational Helmholtz energy ``Σ [ħω/2 + kT ln(1 − e^{−ħω/kT})]``, eV.
      entropy: ``k Σ [x/(eˣ − 1) − ln(1 − e^{−x})]``, ``x = ħω/kT``, eV/K.
      energy: internal energy ``Σ ħω (1/2 + 1/(eˣ − 1))``, eV.
      temperature: K.
      n_imaginary: modes left out because they are imaginary (or zero).
    """

    zpe: float
    free_energy: float
    entropy: float
    energy: float
    temperature: float
    n_imaginary: int


def hessian_matrix(potential: Potential, params, system: System) -> jax.Array:
    """The exact Hessian as a ``[3n, 3n]`` matrix, eV/Å² (rows/columns of padding are 0).

    The system's edges must cover ``potential.cutoff`` (they stay fixed while differentiating,
    which is exact as long as the energy is smooth at the cutoff).
    """
    n = system.n_atoms
    h = hessian(potential)(params, system).reshape(3 * n, 3 * n)
    mask = jnp.repeat(system.atom_mask, 3)
    return jnp.where(mask[:, None] & mask[None, :], h, 0.0)


def dynamical_matrix(h: jax.Array, masses: jax.Array) -> jax.Array:
    """``D = M^{-1/2} H M^{-1/2}``, eV/(Å²·amu), from a ``[3n, 3n]`` Hessian and ``[n]`` masses."""
    w = 1.0 / jnp.sqrt(jnp.repeat(masses, 3))
    return h * w[:, None] * w[None, :]


def _rotations_default(system: System) -> bool:
    return not bool(np.any(np.asarray(system.pbc)))


def external_basis(system: System, *, rotations: bool, tol: float = 1e-6):
    """Orthonormal mass-weighted rigid-body directions and padding directions.

    Returns:
      ``(basis [3n, 3n + 6], keep [3n + 6])``: columns that span the translations, (with
      ``rotations``) the rotations about the centre of mass, and the coordinates of padding
      atoms, orthonormalised; ``keep`` is False for columns that came out as zero (e.g. the
      axial rotation of a linear molecule), which are themselves zero.
    """
    mask = system.atom_mask
    m = jnp.where(mask, system.masses, 0.0)
    sq = jnp.sqrt(m)
    com = jnp.sum(m[:, None] * system.positions, 0) / jnp.sum(m)
    rel = jnp.where(mask[:, None], system.positions - com, 0.0)
    eye = jnp.eye(3, dtype=system.positions.dtype)
    cols = [(sq[:, None] * eye[a][None, :]).reshape(-1) for a in range(3)]
    if rotations:
        cols += [(sq[:, None] * jnp.cross(eye[a][None, :], rel)).reshape(-1) for a in range(3)]
    pad = jnp.where(jnp.repeat(~mask, 3), 1.0, 0.0)
    vecs = jnp.concatenate([jnp.diag(pad), jnp.stack(cols, axis=1)], axis=1)
    return _orthonormalise(vecs, tol)


def _orthonormalise(vecs: jax.Array, tol: float):
    """Modified Gram-Schmidt that zeroes (and flags) columns dependent on earlier ones."""
    scale = jnp.max(jnp.linalg.norm(vecs, axis=0))

    def step(q, j):
        v = vecs[:, j]
        v = v - q @ (q.T @ v)
        v = v - q @ (q.T @ v)  # twice is enough
        norm = jnp.linalg.norm(v)
        keep = norm > tol * scale
        v = jnp.where(keep, v / jnp.where(keep, norm, 1.0), 0.0)
        return q.at[:, j].set(v), keep

    q0 = jnp.zeros_like(vecs)
    q, keep = jax.lax.scan(step, q0, jnp.arange(vecs.shape[1]))
    return q, keep


def _to_cm(eigenvalues: jax.Array) -> jax.Array:
    s = jnp.sign(eigenvalues)
    return s * HBAR_OMEGA * jnp.sqrt(jnp.abs(eigenvalues)) / EV_PER_CM


def frequencies_cm(eigenvalues) -> jax.Array:
    """Eigenvalues of ``D`` (eV/(Å²·amu)) to frequencies in cm⁻¹ (negative = imaginary)."""
    return _to_cm(jnp.asarray(eigenvalues))


def _modes_of(d: jax.Array, system: System, rotations: bool) -> Vibrations:
    n = system.n_atoms
    q, keep = external_basis(system, rotations=rotations)
    p = jnp.eye(3 * n, dtype=d.dtype) - q @ q.T
    shifted = p @ d @ p + _SHIFT * (q @ q.T)
    lam, vec = jnp.linalg.eigh(shifted)
    n_modes = 3 * n - jnp.sum(keep)
    real = jnp.arange(3 * n) < n_modes
    lam = jnp.where(real, lam, jnp.nan)
    vec = jnp.where(real[None, :], vec, 0.0)
    mw = vec.T.reshape(3 * n, n, 3)
    inv = jnp.where(system.atom_mask, 1.0 / jnp.sqrt(system.masses), 0.0)
    cart = mw * inv[None, :, None]
    norm = jnp.sqrt(jnp.sum(cart * cart, axis=(1, 2), keepdims=True))
    cart = cart / jnp.where(norm > 0, norm, 1.0)
    return Vibrations(_to_cm(lam), lam, cart, mw, n_modes)


def vibrations(potential: Potential, params, system: System, *,
               rotations: bool | None = None) -> Vibrations:
    """Normal modes from the exact Hessian (mass-weighted, projected, diagonalised).

    Args:
      potential, params: the potential and its parameters.
      system: one structure with edges covering ``potential.cutoff``; padding allowed.
      rotations: also project out rigid rotations (default: only for a non-periodic
        structure, i.e. a molecule or cluster).

    Returns:
      :class:`Vibrations` (frequencies in cm⁻¹; see the module docstring for shapes).
    """
    if rotations is None:
        rotations = _rotations_default(system)
    return _vib_jit(potential, bool(rotations))(params, system)


_JITS: dict = {}


def _vib_jit(potential: Potential, rotations: bool, batched: bool = False):
    key = (potential.energy, rotations, batched)
    if key not in _JITS:
        def one(params, system):
            h = hessian_matrix(potential, params, system)
            d = dynamical_matrix(h, jnp.where(system.atom_mask, system.masses, 1.0))
            return _modes_of(d, system, rotations)

        fn = jax.vmap(one, in_axes=(None, 0)) if batched else one
        if len(_JITS) > 32:
            _JITS.clear()
        _JITS[key] = jax.jit(fn)
    return _JITS[key]


def vibrations_batch(potential: Potential, params, batch: System, *,
                     rotations: bool | None = None) -> Vibrations:
    """:func:`vibrations` of a batch of structures of one padded shape (``jax.vmap``).

    Args:
      batch: a :class:`~jaxpot.System` with a leading batch axis (:func:`jaxpot.system.stack`).
      rotations: as in :func:`vibrations` (default from the first structure's ``pbc``).

    Returns:
      :class:`Vibrations` whose fields carry a leading ``[n_batch]`` axis.
    """
    if rotations is None:
        rotations = not bool(np.any(np.asarray(batch.pbc)[0]))
    return _vib_jit(potential, bool(rotations), batched=True)(params, batch)


def harmonic_thermo(frequencies, temperature: float) -> HarmonicThermo:
    """Harmonic-oscillator ZPE, free energy, entropy and energy of modes in cm⁻¹.

    Args:
      frequencies: mode frequencies in cm⁻¹ (any shape; NaN, zero and negative, i.e.
        imaginary, modes are left out and counted in ``n_imaginary``, NaN not counted).
      temperature: K (``0`` gives the zero-point values and zero entropy).

    Returns:
      :class:`HarmonicThermo` in eV and eV/K (host floats).

    Raises:
      ValueError: a negative or non-finite temperature.
    """
    t = float(temperature)
    if not (np.isfinite(t) and t >= 0):
        raise ValueError(f"harmonic_thermo: temperature must be a finite number >= 0 K, got "
                         f"{temperature!r}")
    f = np.asarray(frequencies, np.float64).reshape(-1)
    f = f[np.isfinite(f)]
    n_imag = int(np.sum(f <= 0))
    e = f[f > 0] * EV_PER_CM  # ħω, eV
    zpe = 0.5 * float(np.sum(e))
    if t == 0:
        return HarmonicThermo(zpe, zpe, 0.0, zpe, 0.0, n_imag)
    kt = units.kB * t
    x = e / kt
    ln_term = np.log(-np.expm1(-x))  # ln(1 − e^{−x})
    bose = 1.0 / np.expm1(x)
    free = zpe + kt * float(np.sum(ln_term))
    entropy = units.kB * float(np.sum(x * bose - ln_term))
    energy = zpe + float(np.sum(e * bose))
    return HarmonicThermo(zpe, free, entropy, energy, t, n_imag)


def _hvp_operator(potential: Potential, params, system: System, rotations: bool):
    """``v -> P D P v`` (mass-weighted, projected) on flat ``[3n]`` vectors, without ``H``."""
    q, _ = external_basis(system, rotations=rotations)
    mask = system.atom_mask
    inv = jnp.repeat(jnp.where(mask, 1.0 / jnp.sqrt(jnp.where(mask, system.masses, 1.0)),
                               0.0), 3)
    shape = system.positions.shape

    def grad(x):
        return jax.grad(lambda y: potential.energy(params, system.replace(positions=y)))(x)

    def op(v):
        v = v - q @ (q.T @ v)
        _, hv = jax.jvp(grad, (system.positions,), ((v * inv).reshape(shape),))
        w = hv.reshape(-1) * inv
        return w - q @ (q.T @ w)

    return op, q


def _lanczos(op, v0: jax.Array, k: int, project=lambda w: w):
    """``k`` Lanczos steps with full reorthogonalisation: basis ``[k, m]``, α ``[k]``, β ``[k]``.

    After a breakdown (an invariant subspace found, ``β ≈ 0``) the remaining steps are dead:
    their basis vectors are zero and their α is a large shift, so they sort last.
    ``project`` is applied to every new vector: without it, rounding errors along an excluded
    (zero-eigenvalue) direction grow step by step until a spurious zero Ritz value appears.
    """
    m = v0.shape[0]
    v0 = v0 / jnp.linalg.norm(v0)

    def body(j, carry):
        basis, alpha, beta, v, v_prev, b_prev, alive = carry
        v = jnp.where(alive, v, 0.0)
        basis = basis.at[j].set(v)
        w = op(v) - b_prev * v_prev
        a = jnp.dot(w, v)
        w = project(w - a * v)
        w = w - basis.T @ (basis @ w)  # full reorthogonalisation, twice
        w = w - basis.T @ (basis @ w)
        b = jnp.where(alive, jnp.linalg.norm(w), 0.0)
        still = alive & (b > 1e-10 * jnp.maximum(jnp.abs(a), 1e-30))
        v_next = jnp.where(still, w / jnp.where(still, b, 1.0), 0.0)
        alpha = alpha.at[j].set(jnp.where(alive, a, _SHIFT))
        beta = beta.at[j].set(jnp.where(still, b, 0.0))
        return basis, alpha, beta, v_next, v, jnp.where(still, b, 0.0), still

    z = jnp.zeros((), v0.dtype)
    init = (jnp.zeros((k, m), v0.dtype), jnp.zeros(k, v0.dtype), jnp.zeros(k, v0.dtype),
            v0, jnp.zeros_like(v0), z, jnp.asarray(True))
    basis, alpha, beta, *_ = jax.lax.fori_loop(0, k, body, init)
    return basis, alpha, beta


def lowest_modes(potential: Potential, params, system: System, *, n_modes: int = 6,
                 krylov: int = 120, rotations: bool | None = None, seed: int = 0) -> dict:
    """The lowest vibrational modes of a large system without forming the Hessian.

    Lanczos (full reorthogonalisation, ``krylov`` steps) on the Hessian-vector product of the
    projected, mass-weighted dynamical matrix; memory ``O(krylov · 3n)`` instead of ``(3n)²``.
    The projected-out directions have eigenvalue 0 in this operator and the start vector has
    no component along them, so they do not appear among the Ritz values.

    Args:
      potential, params, system: as in :func:`vibrations`.
      n_modes: how many of the lowest modes to return.
      krylov: Lanczos steps (more steps, better converged interior modes; ``≤ 3n``).
      rotations: as in :func:`vibrations`.
      seed: seed of the random start vector.

    Returns:
      dict with ``frequencies`` (``[n_modes]`` cm⁻¹, ascending, imaginary negative),
      ``eigenvalues`` (eV/(Å²·amu)), ``modes`` (``[n_modes, n, 3]`` mass-weighted unit vectors)
      and ``residuals`` (``‖D v − λ v‖`` per mode, eV/(Å²·amu): small means converged).

    Raises:
      ValueError: ``n_modes`` or ``krylov`` out of range.
    """
    if rotations is None:
        rotations = _rotations_default(system)
    dim = 3 * system.n_atoms
    krylov = min(int(krylov), dim)
    if not 1 <= n_modes <= krylov:
        raise ValueError(f"lowest_modes: need 1 <= n_modes <= krylov (= {krylov}), got "
                         f"n_modes={n_modes}")
    return _lowest_jit(potential, bool(rotations), int(n_modes), krylov)(
        params, system, jax.random.key(seed))


def _lowest_jit(potential, rotations, n_modes, krylov):
    key = ("lowest", potential.energy, rotations, n_modes, krylov)
    if key in _JITS:
        return _JITS[key]

    @jax.jit
    def run(params, system, rng):
        op, q = _hvp_operator(potential, params, system, rotations)
        v0 = jax.random.normal(rng, (3 * system.n_atoms,), system.positions.dtype)
        v0 = v0 - q @ (q.T @ v0)
        basis, alpha, beta = _lanczos(op, v0, krylov, lambda w: w - q @ (q.T @ w))
        t = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
        theta, s = jnp.linalg.eigh(t)
        # Ritz pairs for the zero-eigenvalue (external) subspace cannot appear: v0 ⟂ it.
        vecs = (basis.T @ s[:, :n_modes]).T
        lam = theta[:n_modes]
        res = jnp.linalg.norm(jax.vmap(op)(vecs) - lam[:, None] * vecs, axis=1)
        return {"frequencies": _to_cm(lam), "eigenvalues": lam,
                "modes": vecs.reshape(n_modes, system.n_atoms, 3), "residuals": res}

    _JITS[key] = run
    return run
