"""Structure from frames: radial distribution functions, coordination numbers, S(q).

Shapes and units: positions ``[n_frames, n_atoms, 3]`` Å (a single ``[n_atoms, 3]`` frame is
accepted), cells ``[n_frames, 3, 3]`` or ``[3, 3]`` with rows as lattice vectors (Å), distances
Å, number densities Å⁻³, wave numbers Å⁻¹.

**Minimum image.** Pair distances use the minimum image by rounding fractional coordinates. That
is exact for every pair closer than half the smallest perpendicular width ``h_min`` of the cell,
triclinic or not (a vector shorter than ``h/2`` has every fractional coordinate in
``(−½, ½)``), and no pair has two images that close; so :func:`rdf` requires
``r_max ≤ h_min / 2`` along the periodic directions and refuses larger ``r_max``.

**Normalisation.** As ASE's ``get_rdf`` (and LAMMPS' ``compute rdf``): for centres of element
``a`` and neighbours of element ``b``,
``g_ab(r) = ⟨n_ab(r)⟩ / (N_a · (N_b / V) · 4π/3 (r₂³ − r₁³))``, averaged over frames with each
frame's own volume; ``g_ab = g_ba``. Bins are half-open ``[r₁, r₂)`` (ASE counts ``(r₁, r₂]``;
the two differ only for distances exactly on a bin edge).

The histogram runs in JAX (pairs in row blocks, ``segment_sum`` into ``[T, T, n_bins]`` counts),
on device, and :func:`rdf_observer` records it inside ``md.simulate``'s fused loop.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["RDF", "rdf", "rdf_arrays", "rdf_observer", "rdf_from_log", "coordination_number",
           "first_minimum", "structure_factor_from_rdf", "structure_factor", "frames_of"]

_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass
class RDF:
    """Partial radial distribution functions.

    Attributes:
      r: ``[n_bins]`` bin centres, Å.
      edges: ``[n_bins + 1]`` bin edges, Å.
      g: ``[T, T, n_bins]`` partial g(r) of element pairs (``elements[a]`` centres,
        ``elements[b]`` neighbours), dimensionless.
      total: ``[n_bins]`` the total g(r) (all atoms as one species) ``= Σ c_a c_b g_ab``.
      elements: ``[T]`` atomic numbers.
      counts: ``[T]`` atoms of each element.
      density: ``[T]`` mean number density of each element, Å⁻³.
      n_frames: frames averaged.
    """

    r: np.ndarray
    edges: np.ndarray
    g: np.ndarray
    total: np.ndarray
    elements: np.ndarray
    counts: np.ndarray
    density: np.ndarray
    n_frames: int

    def pair(self, a, b) -> np.ndarray:
        """g(r) of centres ``a`` and neighbours ``b`` (atomic numbers or symbols), ``[n_bins]``."""
        from ase.data import atomic_numbers

        za, zb = (atomic_numbers[x] if isinstance(x, str) else int(x) for x in (a, b))
        idx = {int(z): i for i, z in enumerate(self.elements)}
        for z in (za, zb):
            if z not in idx:
                raise ValueError(f"RDF.pair: element {z} not in this RDF ({self.elements})")
        return self.g[idx[za], idx[zb]]


def _min_width(cell: np.ndarray, pbc: np.ndarray) -> float:
    """Smallest perpendicular width of the cell over the periodic directions, Å."""
    vol = abs(np.linalg.det(cell))
    widths = [vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3]))
              for i in range(3) if pbc[i]]
    return min(widths) if widths else np.inf


def _pair_counts(positions, cell, pbc, types, mask, r_max, n_bins, n_types, block=256):
    """``[T, T, n_bins]`` ordered pair counts (i ≠ j, real atoms) within ``r_max`` (traced)."""
    n = positions.shape[0]
    dr = r_max / n_bins
    pbcf = jnp.asarray(pbc, positions.dtype)
    # a zero row (non-periodic direction) becomes a unit vector: any non-singular basis works
    empty = jnp.sum(cell * cell, axis=1, keepdims=True) == 0
    basis = jnp.where(empty, jnp.eye(3, dtype=cell.dtype), cell)
    frac = jnp.matmul(positions, jnp.linalg.inv(basis), precision=_HI)
    rows = -(-n // block) * block
    pad = rows - n
    idx = jnp.arange(rows)
    frac_rows = jnp.pad(frac, ((0, pad), (0, 0)))
    t_rows = jnp.pad(types, (0, pad))
    m_rows = jnp.pad(mask, (0, pad))

    def one_block(args):
        ids, f_i, t_i, m_i = args
        d = frac[None, :, :] - f_i[:, None, :]
        d = d - pbcf * jnp.round(d)
        # explicit products, not a matmul: XLA on CPU (jax 0.10) returned NaN for some
        # entries of the jitted matmul of this rounded difference at Precision.HIGHEST
        v = d[..., 0, None] * basis[0] + d[..., 1, None] * basis[1] + d[..., 2, None] * basis[2]
        r = jnp.sqrt(jnp.sum(v * v, axis=-1))
        k = jnp.floor(r / dr).astype(jnp.int32)
        ok = (m_i[:, None] & mask[None, :] & (ids[:, None] != jnp.arange(n)[None, :])
              & (r < r_max) & (k < n_bins))
        seg = (t_i[:, None] * n_types + types[None, :]) * n_bins + jnp.minimum(k, n_bins - 1)
        seg = jnp.where(ok, seg, n_types * n_types * n_bins)
        return jax.ops.segment_sum(jnp.ones_like(r, jnp.int32).ravel(), seg.ravel(),
                                   num_segments=n_types * n_types * n_bins + 1)[:-1]

    chunks = (idx.reshape(-1, block), frac_rows.reshape(-1, block, 3), t_rows.reshape(-1, block),
              m_rows.reshape(-1, block))
    counts = jax.lax.map(one_block, chunks).sum(axis=0)
    return counts.reshape(n_types, n_types, n_bins)


_counts_jit = jax.jit(_pair_counts, static_argnums=(2, 5, 6, 7, 8))
"""One compiled histogram per (pbc, r_max, n_bins, n_types, shapes), reused across calls."""


def _normalise(counts, volume, n_per_type, edges):
    """``g [T, T, n_bins]`` from ordered pair counts of one frame (traced or NumPy)."""
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    na = n_per_type[:, None, None]
    nb = n_per_type[None, :, None]
    ideal = na * nb / volume * shell[None, None, :]
    return counts / jnp.where(ideal > 0, ideal, 1.0)


def _types_of(numbers, elements):
    lookup = {int(z): i for i, z in enumerate(elements)}
    return np.array([lookup[int(z)] for z in numbers], np.int32)


def _check_rmax(cells, pbc, r_max, where):
    for k, c in enumerate(cells):
        h = _min_width(c, pbc)
        if r_max > 0.5 * h + 1e-12:
            raise ValueError(f"{where}: r_max = {r_max} Å exceeds half the cell's smallest "
                             f"perpendicular width ({h:.4f} Å) in frame {k}; the minimum image "
                             f"is only exact up to {0.5 * h:.4f} Å (use a larger cell or a "
                             f"smaller r_max)")


def rdf_arrays(positions, cells, numbers, *, r_max: float, n_bins: int, pbc=True,
               volume: float | None = None, mask=None) -> RDF:
    """Partial and total g(r) of frames given as arrays.

    Args:
      positions: ``[n_frames, n_atoms, 3]`` or ``[n_atoms, 3]`` Å (wrapped or not).
      cells: ``[n_frames, 3, 3]`` or ``[3, 3]`` Å, rows are lattice vectors.
      numbers: ``[n_atoms]`` atomic numbers (padding entries may be anything if ``mask``).
      r_max: largest distance, Å (at most half the smallest cell width, periodic directions).
      n_bins: number of bins of width ``r_max / n_bins``.
      pbc: bool or three bools.
      volume: Å³, required when not fully periodic (the normalising volume).
      mask: optional ``[n_atoms]`` bool of real atoms (padding excluded everywhere).

    Returns:
      An :class:`RDF`.

    Raises:
      ValueError: shapes that do not match, a bad ``r_max`` / ``n_bins``, no volume for a
        non-periodic structure, or ``r_max`` past the minimum-image range.
    """
    x = np.asarray(positions, np.float64)
    x = x[None] if x.ndim == 2 else x
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"rdf: positions must be [n_frames, n_atoms, 3], got {x.shape}")
    c = np.asarray(cells, np.float64)
    c = np.broadcast_to(c, (x.shape[0], 3, 3)) if c.shape == (3, 3) else c
    if c.shape != (x.shape[0], 3, 3):
        raise ValueError(f"rdf: cells must be [3, 3] or [n_frames={x.shape[0]}, 3, 3], "
                         f"got {c.shape}")
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    numbers = np.asarray(numbers).reshape(-1)
    if numbers.shape[0] != x.shape[1]:
        raise ValueError(f"rdf: {numbers.shape[0]} atomic numbers for {x.shape[1]} atoms")
    mask = np.ones(x.shape[1], bool) if mask is None else np.asarray(mask, bool)
    if not (r_max > 0 and int(n_bins) >= 1):
        raise ValueError(f"rdf: need r_max > 0 and n_bins ≥ 1, got {r_max}, {n_bins}")
    if not pbc.all() and volume is None:
        raise ValueError("rdf: a structure that is not periodic in all directions needs "
                         "volume= (the normalising volume, Å³)")
    _check_rmax(c, pbc, r_max, "rdf")
    elements = np.unique(numbers[mask])
    types = _types_of(np.where(mask, numbers, elements[0]), elements)
    n_per = np.array([np.sum(mask & (types == t)) for t in range(len(elements))], np.float64)
    edges = np.linspace(0.0, r_max, int(n_bins) + 1)
    args = (tuple(bool(b) for b in pbc), float(r_max), int(n_bins), len(elements))
    types_j, mask_j = jnp.asarray(types), jnp.asarray(mask)

    def fn(p, cc):
        return _counts_jit(p, cc, args[0], types_j, mask_j, *args[1:])
    vols = np.full(x.shape[0], float(volume)) if volume is not None else \
        np.abs(np.linalg.det(c))
    g = np.zeros((len(elements), len(elements), int(n_bins)))
    for k in range(x.shape[0]):
        counts = np.asarray(fn(jnp.asarray(x[k]), jnp.asarray(c[k])), np.float64)
        g += np.asarray(_normalise(counts, vols[k], n_per, edges))
    return _result(g / x.shape[0], edges, elements, n_per, vols.mean(), x.shape[0])


def _result(g, edges, elements, n_per, volume, n_frames) -> RDF:
    conc = n_per / n_per.sum()
    total = np.einsum("a,b,abk->k", conc, conc, g)
    return RDF(r=0.5 * (edges[1:] + edges[:-1]), edges=edges, g=g, total=total,
               elements=np.asarray(elements), counts=n_per.astype(int),
               density=n_per / volume, n_frames=int(n_frames))


def frames_of(source) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(positions [F, n, 3], cells [F, 3, 3], numbers [n], pbc [3])`` from a trajectory.

    Args:
      source: a :class:`jaxpot.md.Trajectory`, an :class:`jaxpot.md.MDResult`, an
        ``ase.Atoms``, a sequence of ``ase.Atoms`` (same atoms in each), or a path that
        ``ase.io.read(path, ":")`` reads (extxyz, ASE trajectory...).
    """
    import ase
    import ase.io

    if hasattr(source, "trajectory") and hasattr(source, "log"):
        source = source.trajectory
    if hasattr(source, "positions") and hasattr(source, "cells"):
        if len(source) == 0:
            raise ValueError("frames_of: the trajectory has no frames (run md.simulate with "
                             "trajectory_every=...)")
        return (np.asarray(source.positions), np.asarray(source.cells),
                np.asarray(source.numbers), np.asarray(source.pbc, bool))
    if isinstance(source, ase.Atoms):
        source = [source]
    elif isinstance(source, str | os.PathLike) or not isinstance(source, Sequence):
        source = ase.io.read(source, ":")
    frames = list(source)
    if not frames:
        raise ValueError("frames_of: no frames")
    numbers = frames[0].numbers
    for k, a in enumerate(frames):
        if len(a) != len(numbers) or not np.array_equal(a.numbers, numbers):
            raise ValueError(f"frames_of: frame {k} has different atoms than frame 0")
    return (np.stack([a.positions for a in frames]), np.stack([np.asarray(a.cell) for a in frames]),
            np.asarray(numbers), np.asarray(frames[0].pbc, bool))


def rdf(source, *, r_max: float, n_bins: int, volume: float | None = None) -> RDF:
    """g(r) of every element pair, averaged over the frames of ``source`` (see
    :func:`frames_of` for what it may be, and :func:`rdf_arrays` for the arguments)."""
    x, c, z, pbc = frames_of(source)
    return rdf_arrays(x, c, z, r_max=r_max, n_bins=n_bins, pbc=pbc, volume=volume)


def rdf_observer(system, *, r_max: float, n_bins: int, name: str = "rdf"):
    """An observer for ``md.simulate(observers=[...])`` that records g(r) at each log point.

    The pair histogram runs on the device inside the fused loop; the log gets
    ``log[name]`` ``[n_log, T, T, n_bins]`` (partial g(r) of the log point's frame, normalised
    with its cell's volume); :func:`rdf_from_log` averages it into an :class:`RDF`.

    Args:
      system: the :class:`~jaxpot.System` that will be simulated (elements, padding mask,
        cell, pbc; must be fully periodic).
      r_max: Å, at most half the cell's smallest width (checked here for the starting cell;
        a cell that shrinks under NPT must keep it).
      n_bins: number of bins.
      name: the log column.

    Returns:
      ``observer(state, output) -> {name: g}``.
    """
    numbers = np.asarray(system.species)
    mask = np.asarray(system.atom_mask, bool)
    pbc = np.asarray(system.pbc, bool)
    if not pbc.all():
        raise ValueError("rdf_observer: the system must be periodic in all directions")
    _check_rmax(np.asarray(system.cell, np.float64)[None], pbc, r_max, "rdf_observer")
    elements = np.unique(numbers[mask])
    types = _types_of(np.where(mask, numbers, elements[0]), elements)
    n_per = np.array([np.sum(mask & (types == t)) for t in range(len(elements))], np.float64)
    edges = np.linspace(0.0, r_max, int(n_bins) + 1)

    def observer(state, output):
        sysm = state.system
        counts = _pair_counts(sysm.positions, sysm.cell, pbc, jnp.asarray(types),
                              jnp.asarray(mask), float(r_max), int(n_bins), len(elements))
        vol = jnp.abs(jnp.linalg.det(sysm.cell))
        return {name: _normalise(counts.astype(sysm.positions.dtype), vol,
                                 jnp.asarray(n_per, sysm.positions.dtype),
                                 jnp.asarray(edges, sysm.positions.dtype))}

    observer.meta = {"edges": edges, "elements": elements, "counts": n_per,
                     "volume": float(abs(np.linalg.det(np.asarray(system.cell, np.float64))))}
    return observer


def rdf_from_log(values, observer, *, skip: int = 0) -> RDF:
    """Average the log column of :func:`rdf_observer` (``[n_log, T, T, n_bins]``) into an
    :class:`RDF`, dropping the first ``skip`` log points (equilibration)."""
    g = np.asarray(values, np.float64)[skip:]
    if g.ndim != 4 or g.shape[0] == 0:
        raise ValueError(f"rdf_from_log: expected [n_log, T, T, n_bins] with at least one row "
                         f"after skip={skip}, got {np.shape(values)}")
    m = observer.meta
    return _result(g.mean(axis=0), m["edges"], m["elements"], m["counts"], m["volume"],
                   g.shape[0])


def first_minimum(r, g) -> float:
    """Position (Å) of the first minimum of ``g`` after its highest peak (bin centre)."""
    r, g = np.asarray(r), np.asarray(g)
    peak = int(np.argmax(g))
    rising = np.flatnonzero(np.diff(g[peak:]) > 0)
    if rising.size == 0:
        raise ValueError("first_minimum: g(r) has no minimum after its first peak within r_max")
    return float(r[peak + rising[0]])


def coordination_number(result: RDF, a=None, b=None, *, r_cut: float | None = None) -> float:
    """Mean number of ``b`` neighbours of an ``a`` atom within ``r_cut``:
    ``4π ρ_b ∫₀^{r_cut} g_ab(r) r² dr``, summed over whole bins ``[r₁, r₂)`` with ``r₂ ≤ r_cut``
    (exactly the histogram count).

    Args:
      result: an :class:`RDF`.
      a, b: elements (atomic numbers or symbols); None for all atoms (the total g(r)).
      r_cut: Å; default the first minimum of g(r) after its main peak.
    """
    if (a is None) != (b is None):
        raise ValueError("coordination_number: give both elements a and b, or neither")
    if a is None:
        g, rho = result.total, float(np.sum(result.density))
    else:
        from ase.data import atomic_numbers

        zb = atomic_numbers[b] if isinstance(b, str) else int(b)
        g = result.pair(a, b)
        rho = float(result.density[list(result.elements).index(zb)])
    r_cut = first_minimum(result.r, g) if r_cut is None else float(r_cut)
    e = result.edges
    shell = 4.0 / 3.0 * np.pi * (e[1:] ** 3 - e[:-1] ** 3)
    keep = e[1:] <= r_cut + 1e-12
    return float(rho * np.sum((g * shell)[keep]))


def structure_factor_from_rdf(result: RDF, q, *, window: bool = True) -> np.ndarray:
    """``S(q) = 1 + 4πρ ∫ (g(r) − (N−1)/N) r² sin(qr)/(qr) dr`` from the total g(r), ``[n_q]``.

    The ``(N−1)/N`` is the finite-size limit of g(r) normalised with ``N²/V`` (as here and in
    ASE): an atom has ``N − 1`` partners, so an ideal gas of N atoms has ``g = (N−1)/N``.

    Args:
      result: an :class:`RDF` (total g, total density).
      q: ``[n_q]`` wave numbers, Å⁻¹ (> 0).
      window: multiply by Lorch's window ``sin(πr/R)/(πr/R)`` to damp the truncation ripples.
    """
    q = np.asarray(q, np.float64)
    r, dr = result.r, np.diff(result.edges)
    rho = float(np.sum(result.density))
    n = float(np.sum(result.counts))
    w = np.sinc(r / result.edges[-1]) if window else 1.0
    kernel = np.sinc(np.outer(q, r) / np.pi)
    h = result.total - (n - 1.0) / n
    return 1.0 + 4.0 * np.pi * rho * (kernel * (h * r * r * w * dr)).sum(-1)


def structure_factor(source, *, q_max: float, n_bins: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``S(q) = ⟨|Σ_j exp(i q·r_j)|²⟩ / N`` over the reciprocal vectors of the cell, in shells.

    Args:
      source: frames as for :func:`frames_of` (fully periodic).
      q_max: largest ``|q|``, Å⁻¹.
      n_bins: shells of equal width in ``(0, q_max]``.

    Returns:
      ``(q [n], S [n])``: shell centres (Å⁻¹) and S averaged over the vectors in each shell and
      over frames, for the shells that contain vectors (q = 0 excluded).
    """
    x, c, _, pbc = frames_of(source)
    if not pbc.all():
        raise ValueError("structure_factor: the frames must be periodic in all directions")
    recip = 2.0 * np.pi * np.linalg.inv(c[0]).T
    m = int(np.ceil(q_max / min(np.linalg.norm(recip, axis=1)))) + 1
    grid = np.stack(np.meshgrid(*[np.arange(-m, m + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[np.any(grid != 0, axis=1)]

    @jax.jit
    def frame_sq(pos, cell):
        qv = jnp.matmul(grid.astype(pos.dtype), 2 * jnp.pi * jnp.linalg.inv(cell).T,
                        precision=_HI)
        phase = jnp.matmul(qv, pos.T, precision=_HI)
        s = jnp.abs(jnp.sum(jnp.exp(1j * phase), axis=1)) ** 2 / pos.shape[0]
        return jnp.linalg.norm(qv, axis=1), s

    edges = np.linspace(0.0, q_max, n_bins + 1)
    tot, cnt = np.zeros(n_bins), np.zeros(n_bins)
    for k in range(x.shape[0]):
        qn, s = (np.asarray(a) for a in frame_sq(jnp.asarray(x[k]), jnp.asarray(c[k])))
        keep = qn <= q_max
        idx = np.minimum(np.searchsorted(edges, qn[keep], side="left") - 1, n_bins - 1)
        np.add.at(tot, idx, s[keep])
        np.add.at(cnt, idx, 1.0)
    ok = cnt > 0
    return 0.5 * (edges[1:] + edges[:-1])[ok], tot[ok] / cnt[ok]
