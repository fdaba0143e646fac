"""Damped r⁻⁶ (+ r⁻⁸) dispersion: Grimme's D3 and a fitted-C6 term, with a long-range tail.

Both potentials sum a pair energy over the edges of a full neighbour list,
``E = ½ Σ_edges e(r)``, with

- Becke–Johnson (rational) damping ``e = −s6 C6/(r⁶ + R⁶) − s8 C8/(r⁸ + R⁸)``,
  ``R = a1 √(C8/C6) + a2``;
- zero damping (D3 only) ``e = −Σ_n s_n C_n f_n(r)/rⁿ``,
  ``f_n = 1/(1 + 6 (r/(s_{r,n} R0))^(−α_n))``, α6 = α, α8 = α + 2.

:func:`d3` takes C6 from Grimme's coordination-number-dependent reference values,
``C6_ij = Σ_ab w_i^a w_j^b C6_ref(Z_i, a, Z_j, b)`` with Gaussian weights
``w_i^a ∝ exp(−4 (CN_i − CN_ref^a)²)`` and ``CN_i = Σ_j 1/(1 + exp(−16 (R_cov,ij/r_ij − 1)))``;
the tables are read at run time from the installed ``dftd3`` package
(:mod:`jaxpot.potentials.d3_tables`). :func:`dispersion` has per-element (geometric-mean
combined) or per-pair C6 (and optionally C8) as trainable parameters.

Cutoffs follow the project convention: with ``shift=True`` (default) each pair energy (and each
coordination-number count) is shifted to zero at its cutoff, so E is continuous; ``shift=False``
truncates as ``dftd3`` does. ``tail=True`` adds the analytic correction for the undamped
r⁻⁶ (and r⁻⁸) interaction beyond the cutoff for a uniform density, in 3D-periodic cells only
(:func:`tail_energy`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from jaxpot.potential import Potential, register
from jaxpot.potentials.d3_tables import MAX_ELEMENT, d3_damping_params, d3_tables
from jaxpot.system import System
from jaxpot.units import Bohr, Hartree

__all__ = ["d3", "dispersion", "tail_energy", "bj_pair_energy", "d3_coordination_numbers"]

_CN_STEEPNESS = 16.0  # k1 of D3's counting function
_WEIGHT_WIDTH = 4.0  # k3 of D3's Gaussian reference weights
_HI = jax.lax.Precision.HIGHEST  # no TF32 for float32 contractions on GPUs
DEFAULT_CUTOFF = 60.0 * Bohr
"""Two-body cutoff of ``dftd3`` (60 bohr ≈ 31.75 Å)."""
DEFAULT_CN_CUTOFF = 40.0 * Bohr
"""Coordination-number cutoff of ``dftd3`` (40 bohr ≈ 21.17 Å)."""


# ----------------------------------------------------------------------------- shared kernels
def bj_pair_energy(r, c6, c8, a1, a2, s6=1.0, s8=1.0):
    """Becke–Johnson damped pair energy ``−s6 C6/(r⁶+R⁶) − s8 C8/(r⁸+R⁸)``.

    ``R = a1 √(C8/C6) + a2`` (``R = a2`` where C8 is 0). Any consistent units (e.g. Å and
    eV·Å⁶, or bohr and hartree·bohr⁶); elementwise over arrays.
    """
    ratio = jnp.where(c6 > 0, c8 / jnp.where(c6 > 0, c6, 1.0), 0.0)
    return _bj(r, c6, ratio, {"s6": s6, "s8": s8, "a1": a1, "a2": a2})


def _zero_pair_energy(r, c6, c8, r0, p):
    def damp(order, scale, alpha):
        return 1.0 / (1.0 + 6.0 * (r / (scale * r0)) ** (-alpha))

    r6 = r ** 6
    return -(p["s6"] * c6 * damp(6, p["rs6"], p["alp"]) / r6
             + p["s8"] * c8 * damp(8, p["rs8"], p["alp"] + 2.0) / (r6 * r * r))


def tail_energy(c6_sum, volume, cutoff, c8_sum=0.0):
    """Energy of the undamped ``−C6/r⁶ − C8/r⁸`` beyond ``cutoff`` for a uniform density.

    ``E = −(2π / 3V r_c³) Σ_ij C6_ij − (2π / 5V r_c⁵) Σ_ij C8_ij``, where the double sums
    run over all atoms of the cell (``i = j`` included). Units: those of C6 and the lengths.
    The pressure of this term is ``E/V`` (it scales as 1/V at fixed C6).
    """
    return -2.0 * math.pi / volume * (c6_sum / (3.0 * cutoff ** 3) + c8_sum / (5.0 * cutoff ** 5))


def _edges(system: System, cutoff: float):
    """Receivers, senders (clamped), distances ``r`` (Å) and the mask of real edges < cutoff."""
    n = system.positions.shape[0]
    vec = system.edge_vectors()
    r2 = jnp.sum(vec * vec, axis=-1)
    inside = system.edge_mask & (r2 < cutoff * cutoff)
    r = jnp.sqrt(jnp.where(inside, r2, cutoff * cutoff))
    return jnp.minimum(system.receivers, n - 1), jnp.minimum(system.senders, n - 1), r, inside


def _is_bulk(system: System):
    return jnp.all(system.pbc) & (system.volume > 0)


def _per_atom(edge_energy, receivers, inside, n):
    return 0.5 * jax.ops.segment_sum(jnp.where(inside, edge_energy, 0.0), receivers,
                                     num_segments=n)


def _check_cutoff(name: str, value: float, what: str = "cutoff") -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: {what} must be a positive number of Å, got {value}")
    return value


def _species_index(species, where: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Atomic numbers (sorted, unique) and a ``[119]`` map Z → row (−1 if absent)."""
    zs = tuple(sorted({_atomic_number(s, where) for s in species}))
    index = np.full(119, -1, np.int32)
    index[list(zs)] = np.arange(len(zs), dtype=np.int32)
    return zs, index


def _atomic_number(symbol, where: str) -> int:
    if isinstance(symbol, str):
        if symbol not in atomic_numbers:
            raise ValueError(f"{where}: unknown element {symbol!r}")
        return atomic_numbers[symbol]
    z = int(symbol)
    if not 1 <= z <= 118:
        raise ValueError(f"{where}: atomic number {symbol!r} outside 1..118")
    return z


def _bj(r, c6, ratio, p):
    """BJ pair energy from C6 and the ratio C8/C6 (``p``: s6, s8, a1, a2)."""
    safe = jnp.where(ratio > 0, ratio, 1.0)
    radius = p["a1"] * jnp.where(ratio > 0, jnp.sqrt(safe), 0.0) + p["a2"]
    r2 = r * r
    r6, rad2 = r2 * r2 * r2, radius * radius
    rad6 = rad2 * rad2 * rad2
    return -c6 * (p["s6"] / (r6 + rad6) + p["s8"] * ratio / (r6 * r2 + rad6 * rad2))


# ----------------------------------------------------------------------------- D3
def d3_coordination_numbers(system: System, rcov, cn_cutoff: float, *, shift: bool = True):
    """D3 coordination numbers ``CN_i = Σ_j 1/(1 + exp(−16 (R_i + R_j)/r_ij + 16))``.

    Args:
      system: one structure with edges up to at least ``cn_cutoff``.
      rcov: ``[n_atoms]`` D3 covalent radii of the atoms (Å).
      cn_cutoff: Å; pairs at or beyond it do not count.
      shift: subtract each pair's count at the cutoff (continuous CN).

    Returns:
      ``[n_atoms]`` coordination numbers; 0 on padding atoms.
    """
    receivers, senders, r, inside = _edges(system, cn_cutoff)
    rc = rcov[receivers] + rcov[senders]

    def count(d):
        return 1.0 / (1.0 + jnp.exp(-_CN_STEEPNESS * (rc / d - 1.0)))

    c = count(r) - (count(jnp.asarray(cn_cutoff, r.dtype)) if shift else 0.0)
    return jax.ops.segment_sum(jnp.where(inside, c, 0.0), receivers,
                               num_segments=system.positions.shape[0])


def _d3_constants(zs: tuple[int, ...]) -> dict:
    """The D3 tables restricted to the elements ``zs``, as NumPy arrays (atomic units)."""
    t = d3_tables()
    rows = np.asarray(zs) - 1
    index = np.full(119, -1, np.int32)
    index[list(zs)] = np.arange(len(zs), dtype=np.int32)
    n_ref = t.n_ref[rows]
    return {"index": index, "c6": t.c6[np.ix_(rows, rows)], "cn": t.cn[rows],
            "valid": np.arange(t.cn.shape[1])[None, :] < n_ref[:, None],
            "r4r2": t.r4r2[rows], "rcov": t.rcov[rows] * Bohr, "r0": t.r0[np.ix_(rows, rows)]}


def _d3_weights(k: dict, row, cn, mask):
    """Gaussian reference weights ``[n_atoms, 7]`` (a softmax: stable for any CN)."""
    ref_cn = jnp.asarray(k["cn"], cn.dtype)[row]
    logits = jnp.where(jnp.asarray(k["valid"])[row], -_WEIGHT_WIDTH * (cn[:, None] - ref_cn) ** 2,
                       -1e30)
    return jnp.where(mask[:, None], jax.nn.softmax(logits, axis=-1), 0.0)


def _d3_tail(k, u, w, row, r4r2, system, cutoff, p):
    """Per-atom tail energies (hartree) of the undamped D3 pair sum beyond ``cutoff``."""
    n_species = k["c6"].shape[0]
    weights6 = jax.ops.segment_sum(w, row, num_segments=n_species)  # [S, 7]
    weights8 = jax.ops.segment_sum(w * r4r2[:, None], row, num_segments=n_species)
    c6_sum = jnp.einsum("itb,tb->i", u, weights6, precision=_HI)
    c8_sum = 3.0 * r4r2 * jnp.einsum("itb,tb->i", u, weights8, precision=_HI)
    bulk = _is_bulk(system)
    volume = jnp.where(bulk, system.volume, 1.0) / Bohr ** 3
    e = tail_energy(p["s6"] * c6_sum, volume, cutoff / Bohr, p["s8"] * c8_sum)
    return jnp.where(bulk & system.atom_mask, e, 0.0)


def _d3_atomic(k: dict, opts: dict, p: dict, system: System):
    """Per-atom D3 energies in eV (two-body, plus the tail if asked)."""
    n = system.positions.shape[0]
    mask = system.atom_mask
    row = jnp.where(mask, jnp.asarray(k["index"])[system.species], 0)
    dtype = system.positions.dtype  # the tables follow the structure (float32 or float64)
    r4r2 = jnp.asarray(k["r4r2"], dtype)[row]
    cn = d3_coordination_numbers(system, jnp.asarray(k["rcov"], dtype)[row], opts["cn_cutoff"],
                                 shift=opts["shift"])
    w = _d3_weights(k, row, cn, mask)
    c6_table = jnp.asarray(k["c6"], dtype)
    u = jnp.einsum("ia,itab->itb", w, c6_table[row], precision=_HI)  # [n, S, 7]
    receivers, senders, r, inside = _edges(system, opts["cutoff"])
    c6 = jnp.sum(u[receivers, row[senders]] * w[senders], axis=-1)
    ratio = 3.0 * r4r2[receivers] * r4r2[senders]
    if opts["damping"] == "bj":
        def pair(d):
            return _bj(d, c6, ratio, p)
    else:
        r0 = jnp.asarray(k["r0"], dtype)[row[receivers], row[senders]]

        def pair(d):
            return _zero_pair_energy(d, c6, c6 * ratio, r0, p)
    e = pair(r / Bohr)
    if opts["shift"]:
        e = e - pair(jnp.asarray(opts["cutoff"] / Bohr, r.dtype))
    atomic = _per_atom(e, receivers, inside, n)
    if opts["tail"]:
        atomic = atomic + _d3_tail(k, u, w, row, r4r2, system, opts["cutoff"], p)
    return Hartree * atomic


@register("d3")
def d3(functional: str | None = "pbe", *, damping: str = "bj",
       cutoff: float = DEFAULT_CUTOFF, cn_cutoff: float = DEFAULT_CN_CUTOFF,
       shift: bool = True, tail: bool = False, species=None,
       params: dict | None = None) -> Potential:
    """Grimme's DFT-D3 two-body dispersion with coordination-number-dependent C6.

    The reference tables and the functional's damping parameters are read at run time from
    the installed ``dftd3`` package (see :mod:`jaxpot.potentials.d3_tables`); jaxpot ships
    none of them. With ``shift=False`` and the same cutoffs the energy, forces and stress equal
    ``dftd3``'s two-body D3 (no three-body term).

    Args:
      functional: name in ``dftd3``'s parameter database (``"pbe"``, ``"b3lyp"``, ...), or
        None to give every damping parameter in ``params``.
      damping: ``"bj"`` (rational, Becke–Johnson) or ``"zero"``.
      cutoff: two-body cutoff, Å (default 60 bohr, as ``dftd3``).
      cn_cutoff: coordination-number cutoff, Å (default 40 bohr, as ``dftd3``).
      shift: shift pair energies and CN counts to zero at their cutoffs (continuous E);
        False truncates as ``dftd3`` does.
      tail: add the analytic r⁻⁶/r⁻⁸ tail beyond ``cutoff`` (3D-periodic cells only).
      species: optional atomic numbers or symbols to restrict the tables to (smaller
        constants); default: every element with D3 data (1..103).
      params: damping parameters overriding the functional's, in ``dftd3``'s units:
        ``s6, s8, a1, a2`` (``a2`` in bohr) for bj; ``s6, s8, rs6, rs8, alp`` for zero.

    Returns:
      A non-local :class:`~jaxpot.Potential` (C6 depends on neighbours' neighbours) with the
      damping parameters as its params and per-atom energies.

    Raises:
      ImportError: ``dftd3`` is not installed.
      ValueError: unknown damping or functional, missing parameters, bad cutoffs.
    """
    damping = str(damping).lower()
    keys = _D3_KEYS.get(damping)
    if keys is None:
        raise ValueError(f"d3: damping must be 'bj' or 'zero', got {damping!r}")
    base = d3_damping_params(functional, damping) if functional is not None else {}
    merged = {**base, **{k: float(v) for k, v in (params or {}).items()}}
    unknown, missing = set(merged) - set(keys), set(keys) - set(merged)
    if unknown or missing:
        raise ValueError(f"d3({damping}): parameters {sorted(missing)} missing and "
                         f"{sorted(unknown)} unknown; expected {list(keys)}")
    cutoff, cn_cutoff = _check_cutoff("d3", cutoff), _check_cutoff("d3", cn_cutoff, "cn_cutoff")
    zs = (tuple(range(1, MAX_ELEMENT + 1)) if species is None
          else _species_index(species, "d3: species")[0])
    if zs[-1] > MAX_ELEMENT:
        raise ValueError(f"d3: no D3 data for {chemical_symbols[zs[-1]]} (Z > 103)")
    k = _d3_constants(zs)
    opts = {"cutoff": cutoff, "cn_cutoff": cn_cutoff, "shift": bool(shift),
            "tail": bool(tail), "damping": damping}

    def init(key, system):
        dt = None if system is None else system.positions.dtype
        return {name: jnp.asarray(merged[name], dt) for name in keys}

    def atomic(p, system):
        return {"energy": _d3_atomic(k, opts, p, system)}

    def energy(p, system):
        return jnp.sum(_d3_atomic(k, opts, p, system))

    config = {"name": "d3", "kwargs": {
        "functional": functional, "damping": damping, "cutoff": cutoff, "cn_cutoff": cn_cutoff,
        "shift": bool(shift), "tail": bool(tail),
        "species": None if species is None else list(zs), "params": params and dict(merged)}}
    return Potential(init, energy, max(cutoff, cn_cutoff), config, atomic=atomic,
                     outputs=("energy",), local=False, species=zs)


_D3_KEYS = {"bj": ("s6", "s8", "a1", "a2"), "zero": ("s6", "s8", "rs6", "rs8", "alp")}


# ----------------------------------------------------------------------------- fitted C6
def _coefficients(values, zs, name: str):
    """A per-element ``[S]`` or per-pair ``[S, S]`` array from a list or a dict."""
    where = f"dispersion: {name}"
    if isinstance(values, dict):
        pairs = {k: v for k, v in values.items() if isinstance(k, str) and "-" in k}
        if pairs and len(pairs) != len(values):
            raise ValueError(f"{where}: mix of per-element and 'A-B' pair keys")
        if not pairs:
            by_z = {_atomic_number(k, where): float(v) for k, v in values.items()}
            missing = [chemical_symbols[z] for z in zs if z not in by_z]
            if missing:
                raise ValueError(f"{where}: no value for element(s) {missing}")
            return np.array([by_z[z] for z in zs])
        out = np.full((len(zs), len(zs)), np.nan)
        pos = {z: i for i, z in enumerate(zs)}
        for key, v in pairs.items():
            a, b = (_atomic_number(s.strip(), where) for s in key.split("-", 1))
            if a not in pos or b not in pos:
                raise ValueError(f"{where}: pair {key!r} has an element outside {list(zs)}")
            out[pos[a], pos[b]] = out[pos[b], pos[a]] = float(v)
        if np.isnan(out).any():
            i, j = np.argwhere(np.isnan(out))[0]
            raise ValueError(f"{where}: no value for pair {chemical_symbols[zs[i]]}-"
                             f"{chemical_symbols[zs[j]]}")
        return out
    arr = np.asarray(values, np.float64)
    if arr.shape not in ((len(zs),), (len(zs), len(zs))):
        raise ValueError(f"{where}: expected {len(zs)} values (one per element of species) or a "
                         f"{len(zs)}x{len(zs)} pair matrix, got shape {arr.shape}")
    if arr.ndim == 2 and not np.allclose(arr, arr.T):
        raise ValueError(f"{where}: the pair matrix must be symmetric")
    return arr


def _species_of(c6, species, where: str) -> tuple[int, ...]:
    if species is not None:
        return _species_index(species, where)[0]
    if not isinstance(c6, dict):
        raise ValueError(f"{where}: give species=[...] when c6 is a list or matrix")
    names = [s for k in c6 for s in (k.split("-", 1) if isinstance(k, str) else [k])]
    return _species_index([n.strip() if isinstance(n, str) else n for n in names], where)[0]


def _pair_matrix(values):
    """``[S, S]`` pair coefficients: per-element values combine by the geometric mean."""
    if values.ndim == 2:
        return 0.5 * (values + values.T)
    prod = values[:, None] * values[None, :]
    return jnp.where(prod > 0, jnp.sqrt(jnp.where(prod > 0, prod, 1.0)), 0.0)


def _fitted_atomic(index, opts, params, system: System):
    n = system.positions.shape[0]
    mask = system.atom_mask
    row = jnp.where(mask, jnp.asarray(index)[system.species], 0)
    c6m = _pair_matrix(params["c6"])
    c8m = _pair_matrix(params["c8"]) if "c8" in params else jnp.zeros_like(c6m)
    receivers, senders, r, inside = _edges(system, opts["cutoff"])
    ri, rj = row[receivers], row[senders]
    c6, c8 = c6m[ri, rj], c8m[ri, rj]
    p = {"s6": opts["s6"], "s8": opts["s8"], "a1": params["a1"], "a2": params["a2"]}

    def pair(d):
        return _bj(d, c6, jnp.where(c6 > 0, c8 / jnp.where(c6 > 0, c6, 1.0), 0.0), p)

    e = pair(r)
    if opts["shift"]:
        e = e - pair(jnp.asarray(opts["cutoff"], r.dtype))
    atomic = _per_atom(e, receivers, inside, n)
    if opts["tail"]:
        counts = jax.ops.segment_sum(mask.astype(r.dtype), row, num_segments=c6m.shape[0])
        bulk = _is_bulk(system)
        volume = jnp.where(bulk, system.volume, 1.0)
        c6_sum = jnp.matmul(c6m, counts, precision=_HI)[row]
        c8_sum = jnp.matmul(c8m, counts, precision=_HI)[row]
        tail = tail_energy(opts["s6"] * c6_sum, volume, opts["cutoff"], opts["s8"] * c8_sum)
        atomic = atomic + jnp.where(bulk & mask, tail, 0.0)
    return atomic


@register("dispersion")
def dispersion(c6, *, c8=None, species=None, damping: str = "bj", a1: float = 0.0,
               a2: float = 3.0, s6: float = 1.0, s8: float = 1.0, cutoff: float = 12.0,
               shift: bool = True, tail: bool = False) -> Potential:
    """A Becke–Johnson damped r⁻⁶ (+ r⁻⁸) pair term with fitted C6 (and C8).

    ``E = ½ Σ_edges [−s6 C6_ij/(r⁶ + R⁶) − s8 C8_ij/(r⁸ + R⁸)]`` with
    ``R = a1 √(C8_ij/C6_ij) + a2`` (``R = a2`` without C8).

    Args:
      c6: eV·Å⁶. Per element, ``{"C": 15.0, "H": 2.5}`` (pairs combine by the geometric mean
        ``√(C6_i C6_j)``), per pair, ``{"C-C": 15.0, "C-H": 6.0, "H-H": 2.5}`` (every pair of
        the elements given), or a list / symmetric matrix in the order of ``species``.
      c8: eV·Å⁸, same forms as ``c6``; None for no r⁻⁸ term.
      species: atomic numbers or symbols (needed when ``c6`` is a list or matrix).
      damping: only ``"bj"`` (zero damping needs D3's R0 table; use :func:`d3`).
      a1: scales √(C8/C6) in the damping radius. a2: Å.
      s6, s8: fixed global scales.
      cutoff: Å.
      shift: shift each pair energy to zero at the cutoff (continuous E).
      tail: add the analytic tail beyond ``cutoff`` (3D-periodic cells only).

    Returns:
      A :class:`~jaxpot.Potential` whose params ``{"c6", "c8"?, "a1", "a2"}`` are trainable.

    Raises:
      ValueError: unknown damping, missing or malformed coefficients, bad cutoff.
    """
    if damping != "bj":
        raise ValueError(f"dispersion: damping must be 'bj', got {damping!r} "
                         f"(for zero damping use d3)")
    cutoff = _check_cutoff("dispersion", cutoff)
    zs = _species_of(c6, species, "dispersion")
    c6_values = _coefficients(c6, zs, "c6")
    c8_values = None if c8 is None else _coefficients(c8, zs, "c8")
    if c8_values is not None and c8_values.ndim != c6_values.ndim:
        raise ValueError("dispersion: c6 and c8 must both be per element or both per pair")
    _, index = _species_index(zs, "dispersion")
    opts = {"cutoff": cutoff, "shift": bool(shift), "tail": bool(tail), "s6": float(s6),
            "s8": float(s8)}

    def init(key, system):
        dt = None if system is None else system.positions.dtype
        p = {"c6": jnp.asarray(c6_values, dt), "a1": jnp.asarray(float(a1), dt),
             "a2": jnp.asarray(float(a2), dt)}
        if c8_values is not None:
            p["c8"] = jnp.asarray(c8_values, dt)
        return p

    def atomic(params, system):
        return {"energy": _fitted_atomic(index, opts, params, system)}

    def energy(params, system):
        return jnp.sum(_fitted_atomic(index, opts, params, system))

    config = {"name": "dispersion", "kwargs": {
        "c6": c6_values.tolist(), "c8": None if c8_values is None else c8_values.tolist(),
        "species": list(zs), "damping": "bj", "a1": float(a1), "a2": float(a2),
        "s6": float(s6), "s8": float(s8), "cutoff": cutoff, "shift": bool(shift),
        "tail": bool(tail)}}
    return Potential(init, energy, cutoff, config, atomic=atomic, outputs=("energy",),
                     local=not tail, species=zs)
