"""Nudged elastic band: minimum-energy paths and barriers, all images in one jitted optimiser.

Units: positions Å, energies eV, forces eV/Å, spring constant eV/Å².

The band is an array ``[n_images, n_atoms, 3]`` whose end points stay fixed. Energies and forces
of all images come from one ``vmap`` of the potential over a batch of structures; the NEB force
and a FIRE optimiser (Bitzek et al., PRL 97, 170201 (2006)) run inside ``jax.jit`` for many steps
between host checks. The NEB force follows Henkelman & Jónsson, J. Chem. Phys. 113, 9978 (2000)
(the "improved tangent": the tangent points to the higher neighbour, energy-weighted at
extrema), with the spring force ``k (|R_{i+1} − R_i| − |R_i − R_{i−1}|) τ̂`` along the tangent
and the true force perpendicular to it; the climbing image (Henkelman, Uberuaga & Jónsson, J.
Chem. Phys. 113, 9901 (2000)) feels ``F − 2 (F·τ̂) τ̂`` and no spring. This is ASE's
``NEB(method="improvedtangent")``.

Edges: each image gets its edges for ``cutoff + skin`` on the host, padded to one shape; the
jitted steps reuse them, and the host rebuilds them whenever an atom has moved more than
``skin/2`` since (edges longer than the cutoff contribute exactly zero, so the energies do not
depend on the skin).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.potential import Potential, energy_and_forces
from jaxpot.system import System, pad_arrays, stack_arrays

__all__ = ["NEBResult", "interpolate", "neb"]


@dataclasses.dataclass
class NEBResult:
    """A relaxed band.

    Attributes:
      positions: ``[n_images, n_atoms, 3]`` Å (real atoms).
      energies: ``[n_images]`` eV.
      barrier: ``max(energies) − energies[0]``, eV (forward barrier).
      reverse_barrier: ``max(energies) − energies[-1]``, eV.
      path: ``[n_images]`` cumulative distance along the band, Å (``√Σ|ΔR|²`` over atoms).
      fmax: largest NEB force component on a moving image at the end, eV/Å.
      converged: ``fmax`` reached the requested value.
      steps: optimiser steps taken.
      climbing_image: index of the climbing image (None without climbing).
    """

    positions: np.ndarray
    energies: np.ndarray
    barrier: float
    reverse_barrier: float
    path: np.ndarray
    fmax: float
    converged: bool
    steps: int
    climbing_image: int | None


def interpolate(initial: System, final: System, n_images: int, *, mic: bool = False
                ) -> np.ndarray:
    """Linear interpolation ``[n_images, n_atoms, 3]`` (Å) between two structures, end points
    included; ``mic``: take the minimum image of each atom's displacement in periodic cells."""
    a = np.asarray(initial.positions, np.float64)
    b = np.asarray(final.positions, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"interpolate: the end points have {a.shape} and {b.shape} positions")
    d = b - a
    if mic:
        cell = np.asarray(initial.cell, np.float64)
        frac = np.linalg.solve(cell.T, d.T).T
        frac -= np.asarray(initial.pbc, bool) * np.round(frac)
        d = frac @ cell
    t = np.linspace(0.0, 1.0, int(n_images))[:, None, None]
    return a[None] + t * d[None]


def _tangents(x, e):
    """Improved tangents ``[n_moving, n, 3]`` (unit) for the interior images."""
    fwd = x[2:] - x[1:-1]
    bwd = x[1:-1] - x[:-2]
    e_prev, e_mid, e_next = e[:-2], e[1:-1], e[2:]
    up = (e_next > e_mid) & (e_mid > e_prev)
    down = (e_next < e_mid) & (e_mid < e_prev)
    d_next, d_prev = e_next - e_mid, e_prev - e_mid
    big = jnp.maximum(jnp.abs(d_next), jnp.abs(d_prev))
    small = jnp.minimum(jnp.abs(d_next), jnp.abs(d_prev))
    w_f = jnp.where(d_next > d_prev, big, small)[:, None, None]
    w_b = jnp.where(d_next > d_prev, small, big)[:, None, None]
    mixed = w_f * fwd + w_b * bwd
    t = jnp.where(up[:, None, None], fwd, jnp.where(down[:, None, None], bwd, mixed))
    norm = jnp.sqrt(jnp.sum(t * t, axis=(1, 2), keepdims=True))
    return t / jnp.where(norm > 0, norm, 1.0)


def _neb_forces(x, e, f, k_spring, climb_index, movable):
    """NEB forces on the interior images ``[n_moving, n, 3]`` (climb_index −1: none)."""
    tau = _tangents(x, e)
    f_in = f[1:-1]
    along = jnp.sum(f_in * tau, axis=(1, 2), keepdims=True)
    dist_f = jnp.sqrt(jnp.sum((x[2:] - x[1:-1]) ** 2, axis=(1, 2)))
    dist_b = jnp.sqrt(jnp.sum((x[1:-1] - x[:-2]) ** 2, axis=(1, 2)))
    spring = (k_spring * (dist_f - dist_b))[:, None, None] * tau
    neb = f_in - along * tau + spring
    climbing = (jnp.arange(f_in.shape[0]) + 1 == climb_index)[:, None, None]
    out = jnp.where(climbing, f_in - 2.0 * along * tau, neb)
    return out * movable[None, :, None]


def _batch_edges(x, template: System, cutoff, n_edges=None):
    """Structures of every image with edges for ``cutoff``, padded to one shape (host)."""
    a = template._real_arrays("neb", edges=False)
    from jaxpot.system import find_edges

    padded = []
    for k in range(x.shape[0]):
        r, s, sh = find_edges(x[k], a["cell"], a["pbc"], cutoff, where=f"NEB image {k}")
        padded.append((r, s, sh))
    n_e = max(n_edges or 0, max(len(p[0]) for p in padded))
    arrays = [pad_arrays(x[k], a["numbers"], cell=a["cell"], pbc=a["pbc"], masses=a["masses"],
                         receivers=r, senders=s, shifts=sh, n_edges=n_e,
                         dtype=template.positions.dtype)
              for k, (r, s, sh) in enumerate(padded)]
    return System.from_padded(stack_arrays(arrays)), n_e


@partial(jax.jit, static_argnums=(0, 1))
def _fire_chunk(ef, n_steps, params, batch, x, v, dt, alpha, n_pos, k_spring, climb, movable,
                dt_max):
    """``n_steps`` FIRE steps on the interior images (end points fixed)."""
    def forces(xx):
        e, f = jax.vmap(ef, in_axes=(None, 0))(params, batch.replace(positions=xx))
        return e, f

    def step(carry, _):
        x, v, dt, alpha, n_pos = carry
        e, f = forces(x)
        c_idx = jnp.where(climb, jnp.argmax(e[1:-1]) + 1, -1)
        fn = _neb_forces(x, e, f, k_spring, c_idx, movable)
        power = jnp.sum(fn * v[1:-1])
        fnorm = jnp.sqrt(jnp.sum(fn * fn))
        vnorm = jnp.sqrt(jnp.sum(v[1:-1] ** 2))
        vin = (1 - alpha) * v[1:-1] + alpha * vnorm * fn / jnp.where(fnorm > 0, fnorm, 1.0)
        ok = power > 0
        n_pos = jnp.where(ok, n_pos + 1, 0)
        grow = ok & (n_pos > 5)
        dt = jnp.where(grow, jnp.minimum(dt * 1.1, dt_max), jnp.where(ok, dt, dt * 0.5))
        alpha = jnp.where(grow, alpha * 0.99, jnp.where(ok, alpha, 0.1))
        vin = jnp.where(ok, vin, 0.0)
        vin = vin + dt * fn  # unit masses: Euler-Cromer
        x = x.at[1:-1].add(dt * vin)
        v = v.at[1:-1].set(vin)
        return (x, v, dt, alpha, n_pos), jnp.max(jnp.abs(fn))

    (x, v, dt, alpha, n_pos), fmax = jax.lax.scan(step, (x, v, dt, alpha, n_pos), None,
                                                  length=n_steps)
    e, f = forces(x)
    c_idx = jnp.where(climb, jnp.argmax(e[1:-1]) + 1, -1)
    fn = _neb_forces(x, e, f, k_spring, c_idx, movable)
    return x, v, dt, alpha, n_pos, e, jnp.max(jnp.abs(fn)), c_idx


_EF: dict = {}


def _forces_fn(potential: Potential):
    """One ``energy_and_forces`` function per energy function, so that repeated NEB runs of the
    same model reuse the compiled optimiser (the function is a static argument of the jit)."""
    key = id(potential.energy)
    if key not in _EF or _EF[key][0] is not potential.energy:
        if len(_EF) > 16:
            _EF.clear()
        _EF[key] = (potential.energy, energy_and_forces(potential))
    return _EF[key][1]


def neb(potential: Potential, params, images, template: System | None = None, *,
        k_spring: float = 0.1, climb: bool = False, fmax: float = 0.01, max_steps: int = 5000,
        fixed=None, skin: float = 1.0, dt: float = 0.05, dt_max: float = 0.2,
        check_every: int = 100) -> NEBResult:
    """Relax a nudged elastic band.

    Args:
      potential, params: the model.
      images: ``[n_images, n_atoms, 3]`` Å (end points included, already relaxed), or a list of
        :class:`~jaxpot.System` (the first is the template).
      template: the structure (elements, masses, cell, pbc) when ``images`` is an array.
      k_spring: spring constant, eV/Å².
      climb: climbing image (the highest interior image climbs to the saddle).
      fmax: converged when every NEB force component on the interior images is below this,
        eV/Å.
      max_steps: optimiser step cap.
      fixed: optional ``[n_atoms]`` bool of atoms held still (ASE's ``FixAtoms``).
      skin: extra edge length, Å; edges are rebuilt after an atom moves ``skin/2``.
      dt, dt_max: FIRE's initial and largest step (in Å·√(amu/eV) with unit masses).
      check_every: steps per jitted chunk between host checks.

    Returns:
      A :class:`NEBResult`.

    Raises:
      ValueError: fewer than 3 images, or images of different shapes.
    """
    if isinstance(images, list | tuple) and images and isinstance(images[0], System):
        template = images[0] if template is None else template
        x = np.stack([np.asarray(s.positions, np.float64)[np.asarray(s.atom_mask, bool)]
                      for s in images])
    else:
        x = np.asarray(images, np.float64)
    if template is None:
        raise ValueError("neb: give the template System when images is an array")
    if x.ndim != 3 or x.shape[0] < 3:
        raise ValueError(f"neb: need [n_images ≥ 3, n_atoms, 3] images, got {x.shape}")
    movable = np.ones(x.shape[1]) if fixed is None else (~np.asarray(fixed, bool)).astype(float)
    ef = _forces_fn(potential)
    dtype = template.positions.dtype
    state = (jnp.asarray(x, dtype), jnp.zeros(x.shape, dtype), jnp.asarray(dt, dtype),
             jnp.asarray(0.1, dtype), jnp.asarray(0, jnp.int32))
    steps, every, f_now, e, c_idx, fresh = 0, int(check_every), np.inf, None, -1, True
    anchor = np.asarray(x, np.float64)
    batch, n_edges = _batch_edges(anchor, template, potential.cutoff + skin)
    while steps < max_steps and f_now >= fmax:
        chunk = min(every, max_steps - steps)
        out = _fire_chunk(ef, chunk, params, batch, *state, jnp.asarray(k_spring, dtype),
                          bool(climb), jnp.asarray(movable, dtype), jnp.asarray(dt_max, dtype))
        moved = np.linalg.norm(np.asarray(out[0], np.float64) - anchor, axis=-1).max()
        if moved > 0.5 * skin:  # edges may be missing: redo from fresh edges, or shorter
            if not fresh:
                anchor = np.asarray(state[0], np.float64)
                batch, n_edges = _batch_edges(anchor, template, potential.cutoff + skin,
                                              n_edges)
                fresh = True
                continue
            if chunk == 1:
                raise ValueError(f"neb: an atom moved {moved:.3g} Å in one step (more than "
                                 f"skin/2 = {0.5 * skin} Å); lower dt_max or raise skin")
            every = max(1, chunk // 2)
            continue
        state, e, f_now, c_idx = out[:5], out[5], float(out[6]), int(out[7])
        steps += chunk
        fresh = False
    if e is None:
        raise ValueError(f"neb: max_steps must be ≥ 1, got {max_steps}")
    return _result(np.asarray(state[0], np.float64), np.asarray(e, np.float64), f_now, fmax,
                   steps, c_idx if climb else None)


def _result(x, e, f_now, fmax, steps, c_idx) -> NEBResult:
    seg = np.sqrt(np.sum(np.diff(x, axis=0) ** 2, axis=(1, 2)))
    return NEBResult(positions=x, energies=e, barrier=float(e.max() - e[0]),
                     reverse_barrier=float(e.max() - e[-1]),
                     path=np.concatenate([[0.0], np.cumsum(seg)]), fmax=float(f_now),
                     converged=bool(f_now < fmax), steps=int(steps),
                     climbing_image=None if c_idx is None else int(c_idx))
