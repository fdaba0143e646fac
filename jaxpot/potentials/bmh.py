"""Born–Mayer–Huggins pair potential (LAMMPS ``pair_style born`` convention).

For a pair of elements ``(a, b)`` at distance ``r < cutoff``::

    φ_ab(r) = A exp((σ − r)/ρ) − C/r⁶ + D/r⁸

with ``A`` in eV, ``ρ`` and ``σ`` in Å, ``C`` in eV·Å⁶ and ``D`` in eV·Å⁸, exactly as LAMMPS'
``pair_coeff i j A rho sigma C D`` (so a Fumi–Tosi ``r⁻⁸`` attraction has ``D < 0``). With
``shift=True`` each pair term is shifted to zero at the cutoff (``pair_modify shift yes``).
Combined with :func:`jaxpot.potentials.coulomb.coulomb` it is LAMMPS' ``born/coul/long``.

The coefficients are the potential's parameters (``{"A", "rho", "sigma", "C", "D"}``, each an
``[n_elements, n_elements]`` symmetric table), so they can be fitted by gradient descent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols

from jaxpot.potential import Potential, register
from jaxpot.system import System

__all__ = ["born_mayer_huggins", "bmh_pair_energy", "COEFFS"]

COEFFS = ("A", "rho", "sigma", "C", "D")


def bmh_pair_energy(r, A, rho, sigma, C, D):  # noqa: N803 (the physics names)
    """``A exp((σ − r)/ρ) − C/r⁶ + D/r⁸`` in eV (elementwise)."""
    r2 = r * r
    r6 = r2 * r2 * r2
    return A * jnp.exp((sigma - r) / rho) - C / r6 + D / (r6 * r2)


def _parse_pairs(pairs: dict):
    """``{"Na-Cl": [A, rho, sigma, C, D], ...}`` → element list and coefficient tables."""
    if not isinstance(pairs, dict) or not pairs:
        raise ValueError("born_mayer_huggins: pairs must be a non-empty dict "
                         "{'Na-Cl': [A, rho, sigma, C, D], ...}")
    parsed = {}
    for key, coeffs in pairs.items():
        names = key.split("-") if isinstance(key, str) else list(key)
        if len(names) != 2 or any(n not in chemical_symbols[1:] for n in names):
            raise ValueError(f"born_mayer_huggins: pair {key!r} is not 'El1-El2' of two "
                             "element symbols")
        values = np.asarray(coeffs, dtype=float)
        if values.shape != (5,) or not np.all(np.isfinite(values)):
            raise ValueError(f"born_mayer_huggins: pair {key!r} needs five finite numbers "
                             f"[A, rho, sigma, C, D], got {coeffs!r}")
        if values[1] <= 0:
            raise ValueError(f"born_mayer_huggins: pair {key!r} has rho = {values[1]} <= 0")
        parsed[tuple(sorted(names, key=chemical_symbols.index))] = values
    elements = sorted({n for p in parsed for n in p}, key=chemical_symbols.index)
    missing = [f"{a}-{b}" for i, a in enumerate(elements) for b in elements[i:]
               if (a, b) not in parsed]
    if missing:
        raise ValueError(f"born_mayer_huggins: no coefficients for pair(s) {missing}")
    n = len(elements)
    tables = np.zeros((5, n, n))
    for (a, b), values in parsed.items():
        i, j = elements.index(a), elements.index(b)
        tables[:, i, j] = tables[:, j, i] = values
    return elements, tables, {f"{a}-{b}": v.tolist() for (a, b), v in parsed.items()}


def _edge_energies(params, system: System, index, cutoff: float, shift: bool):
    n = system.positions.shape[0]
    vec = system.edge_vectors()
    r2 = jnp.sum(vec * vec, -1)
    inside = system.edge_mask & (r2 < cutoff * cutoff)
    r = jnp.sqrt(jnp.where(inside, r2, cutoff * cutoff))
    zi = system.species[jnp.minimum(system.receivers, n - 1)]
    zj = system.species[jnp.minimum(system.senders, n - 1)]
    a, b = index[zi], index[zj]
    coeffs = [params[k][a, b] for k in COEFFS]
    e = bmh_pair_energy(r, *coeffs)
    if shift:
        e = e - bmh_pair_energy(jnp.asarray(cutoff, r.dtype), *coeffs)
    return jnp.where(inside, 0.5 * e, 0.0)


@register("born_mayer_huggins")
def born_mayer_huggins(pairs: dict, cutoff: float, *, shift: bool = False) -> Potential:
    """Born–Mayer–Huggins pair potential with per-element-pair coefficients.

    Args:
      pairs: ``{"El1-El2": [A eV, rho Å, sigma Å, C eV·Å⁶, D eV·Å⁸]}`` for every pair of the
        elements named (LAMMPS ``pair_coeff`` order).
      cutoff: Å.
      shift: shift each pair term to zero at the cutoff.

    Example:
      >>> pot = born_mayer_huggins({"Na-Na": [0.26, 0.317, 2.34, 1.05, -0.50],
      ...                           "Na-Cl": [0.21, 0.317, 2.755, 6.99, -8.68],
      ...                           "Cl-Cl": [0.16, 0.317, 3.17, 72.4, -145.4]}, cutoff=9.0)
      >>> pot.species
      (11, 17)
    """
    if not float(cutoff) > 0:
        raise ValueError(f"born_mayer_huggins: cutoff must be > 0 Å, got {cutoff!r}")
    elements, tables, clean = _parse_pairs(pairs)
    numbers = [chemical_symbols.index(e) for e in elements]
    index_np = np.zeros(119, np.int32)
    index_np[numbers] = np.arange(len(numbers))
    cutoff, shift = float(cutoff), bool(shift)

    def init(key, system):
        dt = system.positions.dtype
        return {k: jnp.asarray(t, dt) for k, t in zip(COEFFS, tables, strict=True)}

    def atomic(params, system):
        e = _edge_energies(params, system, jnp.asarray(index_np), cutoff, shift)
        n = system.positions.shape[0]
        per_atom = jax.ops.segment_sum(e, system.receivers, num_segments=n + 1)[:n]
        return {"energy": jnp.where(system.atom_mask, per_atom, 0.0)}

    def energy(params, system):
        return jnp.sum(_edge_energies(params, system, jnp.asarray(index_np), cutoff, shift))

    config = {"name": "born_mayer_huggins",
              "kwargs": {"pairs": clean, "cutoff": cutoff, "shift": shift}}
    return Potential(init=init, energy=energy, cutoff=cutoff, config=config, atomic=atomic,
                     outputs=("energy",), species=tuple(numbers))
