"""Transport from trajectories: unwrapping, MSD, diffusion coefficients, VACF and the VDOS.

Shapes and units: positions ``[n_frames, n_atoms, 3]`` Å, cells ``[n_frames, 3, 3]`` or
``[3, 3]`` Å (rows are lattice vectors), times fs, velocities Å/fs, MSD Å², diffusion
coefficients Å²/fs (×0.1 for cm²/s), frequencies THz and cm⁻¹. Host-side NumPy.

- :func:`unwrap`: positions continuous in time from wrapped frames, by taking the minimum image
  of every frame-to-frame displacement in fractional coordinates (valid when no atom moves more
  than half a cell width between saved frames; works for changing cells).
  ``md.simulate`` already returns unwrapped positions; frames read from files usually are not.
- :func:`msd`: ``⟨|r(t₀+t) − r(t₀)|²⟩`` over atoms and all time origins, by FFT (O(F log F)).
- :func:`diffusion_coefficient`: ``D = slope/6`` of a least-squares line through the MSD over a
  fit window (the linear regime), with the error bar from the spread of D over ``n_blocks``
  independent stretches of the trajectory (each with its own time origins).
- :func:`vacf`, :func:`vibrational_dos`, :func:`green_kubo_diffusion`: the velocity
  autocorrelation ``⟨v(t₀)·v(t₀+t)⟩``, its cosine transform (the vibrational density of states,
  normalised to unit area) and ``D = ⅓ ∫ C(t) dt`` as a cross-check of the Einstein relation.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxpot import units

__all__ = ["unwrap", "msd", "Diffusion", "diffusion_coefficient", "velocities_of", "vacf",
           "vibrational_dos", "green_kubo_diffusion", "CM2_PER_S"]

CM2_PER_S = 0.1
"""1 Å²/fs in cm²/s."""


def _frames(positions, what: str) -> np.ndarray:
    x = np.asarray(positions, np.float64)
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] < 2:
        raise ValueError(f"{what}: positions must be [n_frames ≥ 2, n_atoms, 3], got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: non-finite positions")
    return x


def unwrap(positions, cells, pbc=True) -> np.ndarray:
    """Unwrapped positions ``[n_frames, n_atoms, 3]`` Å from wrapped frames.

    Args:
      positions: ``[n_frames, n_atoms, 3]`` Å.
      cells: ``[3, 3]`` or ``[n_frames, 3, 3]`` Å.
      pbc: bool or three bools; non-periodic directions are left as they are.

    The fractional displacement between consecutive frames is wrapped into ``[−½, ½)`` and
    accumulated, then converted with each frame's cell, so an atom must not move more than half
    a cell width between saved frames.
    """
    x = _frames(positions, "unwrap")
    c = np.asarray(cells, np.float64)
    c = np.broadcast_to(c, (x.shape[0], 3, 3)) if c.shape == (3, 3) else c
    if c.shape != (x.shape[0], 3, 3):
        raise ValueError(f"unwrap: cells must be [3, 3] or [{x.shape[0]}, 3, 3], got {c.shape}")
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    frac = np.einsum("fni,fij->fnj", x, np.linalg.inv(c))
    step = np.diff(frac, axis=0)
    step = step - pbc * np.round(step)
    frac_u = np.concatenate([frac[:1], frac[:1] + np.cumsum(step, axis=0)])
    return np.einsum("fni,fij->fnj", frac_u, c)


def _autocorr_fft(a: np.ndarray) -> np.ndarray:
    """``Σ_t0 a(t0)·a(t0+t)`` for ``a`` ``[F, ...]`` summed over trailing axes, ``[F]``."""
    f = a.shape[0]
    size = 1 << int(np.ceil(np.log2(2 * f)))
    ft = np.fft.rfft(a, size, axis=0)
    s = np.fft.irfft(ft * np.conj(ft), size, axis=0)[:f]
    return s.reshape(f, -1).sum(axis=1)


def msd(positions, *, mask=None, remove_drift: bool = True) -> np.ndarray:
    """Mean squared displacement ``[n_frames]`` Å² at lags ``0, 1, …`` frames.

    Args:
      positions: ``[n_frames, n_atoms, 3]`` **unwrapped** Å, equally spaced in time.
      mask: optional ``[n_atoms]`` bool: the atoms averaged over (one element, say).
      remove_drift: subtract the centre-of-mass-free drift (mean displacement of all atoms,
        equal masses) of each frame first.

    Every lag averages over all ``F − lag`` time origins and the selected atoms (the FFT form of
    ``Σ_t0 |r(t0+t) − r(t0)|²``, exact, not sampled).
    """
    x = _frames(positions, "msd")
    if remove_drift:
        x = x - (x - x[:1]).mean(axis=1, keepdims=True)
    if mask is not None:
        x = x[:, np.asarray(mask, bool)]
    f = x.shape[0]
    sq = np.sum(x * x, axis=(1, 2))  # per frame, summed over atoms
    s2 = _autocorr_fft(x)
    # Σ_t0 (|r(t0)|² + |r(t0+t)|²): running sums from both ends
    total = 2.0 * sq.sum()
    s1 = np.empty(f)
    acc = total
    for m in range(f):
        s1[m] = acc
        acc -= sq[m] + sq[f - 1 - m]
    return (s1 - 2.0 * s2) / (f - np.arange(f)) / x.shape[1]


@dataclasses.dataclass
class Diffusion:
    """A diffusion coefficient from the MSD.

    Attributes:
      D: Å²/fs (``D * CM2_PER_S`` in cm²/s) from the whole trajectory.
      error: standard error of ``D`` from ``n_blocks`` independent stretches, Å²/fs.
      blocks: ``[n_blocks]`` D of each stretch, Å²/fs.
      fit: ``(t_start, t_end)`` fs, the window of the straight-line fit.
      intercept: Å², of the whole-trajectory fit.
    """

    D: float
    error: float
    blocks: np.ndarray
    fit: tuple[float, float]
    intercept: float


def _slope(t, y, fit):
    keep = (t >= fit[0]) & (t <= fit[1])
    if keep.sum() < 2:
        raise ValueError(f"diffusion_coefficient: the fit window {fit} fs holds fewer than two "
                         f"MSD points (lags span 0–{t[-1]:.4g} fs)")
    a, b = np.polyfit(t[keep], y[keep], 1)
    return a, b


def diffusion_coefficient(positions, dt_fs: float, *, fit: tuple[float, float] | None = None,
                          n_blocks: int = 5, mask=None, dims: int = 3) -> Diffusion:
    """Self-diffusion coefficient from the Einstein relation ``MSD(t) ≈ 2·dims·D·t + c``.

    Args:
      positions: ``[n_frames, n_atoms, 3]`` unwrapped Å (see :func:`unwrap`).
      dt_fs: time between frames, fs.
      fit: the linear-regime window in fs, ``(t_start, t_end)``; default from 20 % to 50 % of
        one block's length (past the ballistic regime, before the noisy long lags).
      n_blocks: independent stretches for the error bar (≥ 2).
      mask: optional ``[n_atoms]`` bool of the atoms to average.
      dims: 3 for bulk (``D = slope/6``).

    Returns:
      A :class:`Diffusion`.
    """
    x = _frames(positions, "diffusion_coefficient")
    if n_blocks < 2 or x.shape[0] // n_blocks < 4:
        raise ValueError(f"diffusion_coefficient: need n_blocks ≥ 2 blocks of ≥ 4 frames, got "
                         f"{n_blocks} blocks of {x.shape[0] // max(n_blocks, 1)} frames")
    length = x.shape[0] // n_blocks
    if fit is None:
        fit = (0.2 * (length - 1) * dt_fs, 0.5 * (length - 1) * dt_fs)
    fit = (float(fit[0]), float(fit[1]))
    t_all = np.arange(x.shape[0]) * dt_fs
    a, b = _slope(t_all, msd(x, mask=mask), fit)
    per = []
    for k in range(n_blocks):
        seg = x[k * length:(k + 1) * length]
        per.append(_slope(t_all[:length], msd(seg, mask=mask), fit)[0] / (2 * dims))
    per = np.asarray(per)
    return Diffusion(D=float(a / (2 * dims)), error=float(per.std(ddof=1) / np.sqrt(n_blocks)),
                     blocks=per, fit=fit, intercept=float(b))


def velocities_of(trajectory) -> np.ndarray:
    """``[n_frames, n_atoms, 3]`` velocities in Å/fs from a :class:`jaxpot.md.Trajectory` (or
    an ``MDResult``): momenta (amu·Å/t) over masses, converted with ``units.fs``."""
    if hasattr(trajectory, "trajectory") and hasattr(trajectory, "log"):
        trajectory = trajectory.trajectory
    p = np.asarray(trajectory.momenta, np.float64)
    m = np.asarray(trajectory.masses, np.float64)
    return p / m[None, :, None] * units.fs


def vacf(velocities, *, mask=None, normalize: bool = False) -> np.ndarray:
    """Velocity autocorrelation ``C(t) = ⟨v(t₀)·v(t₀+t)⟩`` ``[n_frames]`` (Å/fs)², averaged over
    atoms and all time origins (FFT); ``normalize``: divide by ``C(0)``."""
    v = _frames(velocities, "vacf")
    if mask is not None:
        v = v[:, np.asarray(mask, bool)]
    f = v.shape[0]
    c = _autocorr_fft(v) / (f - np.arange(f)) / v.shape[1]
    return c / c[0] if normalize else c


def green_kubo_diffusion(c, dt_fs: float, *, dims: int = 3) -> np.ndarray:
    """Running Green–Kubo integral ``D(t) = (1/dims) ∫₀ᵗ C(s) ds`` (trapezoid) ``[n]`` Å²/fs,
    from an unnormalised :func:`vacf`; read D where it plateaus."""
    c = np.asarray(c, np.float64)
    return np.concatenate([[0.0], np.cumsum(0.5 * (c[1:] + c[:-1]) * dt_fs)]) / dims


def vibrational_dos(c, dt_fs: float, *, window: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vibrational density of states from a VACF: ``G(ν) ∝ ∫ C(t) cos(2πνt) dt``.

    Args:
      c: ``[n]`` VACF (normalised or not) at lags ``k·dt_fs``.
      dt_fs: lag spacing, fs.
      window: multiply by a Hann window (half, from its peak at t = 0) against truncation
        ripples.

    Returns:
      ``(nu_thz [m], wavenumber_cm [m], dos [m])`` with ``dos`` normalised to unit area over ν
      in THz (1/THz).
    """
    c = np.asarray(c, np.float64)
    n = c.size
    w = 0.5 * (1 + np.cos(np.pi * np.arange(n) / n)) if window else np.ones(n)
    even = np.concatenate([c * w, (c * w)[-2:0:-1]])  # even extension: a cosine transform
    spec = np.fft.rfft(even).real * dt_fs
    nu = np.fft.rfftfreq(even.size, d=dt_fs * 1e-15) / 1e12  # THz
    spec = np.clip(spec, 0.0, None)
    area = np.trapezoid(spec, nu) if hasattr(np, "trapezoid") else np.trapz(spec, nu)
    dos = spec / area if area > 0 else spec
    return nu, nu * 1e12 / 2.99792458e10, dos
