"""Effective medium theory (EMT): ASE's ``ase.calculators.emt.EMT`` as a jitted jaxpot potential.

The physics follows Jacobsen, Stoltze and Nørskov, Surf. Sci. 366, 394 (1996), in the form that
ASE implements (same parameters, same logistic cutoff, same energy zero), so that energies,
forces and stress agree with ASE's calculator to rounding. For an atom ``i`` with neighbours
``j`` at distances ``r`` (edge ``i`` = receiver, ``j`` = sender):

- cutoff weight ``w(r) = 1 / (1 + exp(a (r − r_c)))``, only for ``r < r_list``;
- density ``σ1_i = Σ_j χ_ij w exp(−η2_j (r − β s0_j))`` with ``χ_ij = n0_j / n0_i``;
- neutral-sphere radius ``s_i = −ln(σ1_i / 12γ1_i) / (β η2_i)``;
- cohesive part ``E0_i (1 + λ_i s_i) e^{−λ_i s_i} + 6 V0_i e^{−κ_i s_i}``;
- pair correction ``½ Σ_j [−V0_i/(2γ2_i) χ_ij w e^{−κ_j (r/β − s0_j)}
  − V0_j/(2γ2_j) w e^{−κ_i (r/β − s0_i)} / χ_ij]``;
- and ``−E0_i``, so that an isolated atom has energy ``−E0`` and the fcc crystal at its
  equilibrium spacing about 0.

The cutoff ``r_c`` (mean of the third and fourth fcc neighbour distances), its slope ``a``
(weight 1e-4 at the fourth neighbour) and the neighbour-list radius ``r_list = r_c + 0.5 Å``
come from the largest ``s0`` in ASE's whole parameter table (ASE's default); with
``asap_cutoff=True`` they come from the largest ``s0`` among the given elements and
``r_list = 1.045 r_c``, as ASE's ``EMT(asap_cutoff=True)`` does.

Forces are ``−∇E`` by autodiff and stress the strain derivative (:mod:`jaxpot.potential`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from ase.units import Bohr

from jaxpot.potential import Potential, register
from jaxpot.system import System

__all__ = ["EMT_PARAMETERS", "BETA", "emt", "emt_cutoffs", "emt_atomic_energies"]

EMT_PARAMETERS: dict[str, tuple[float, ...]] = {
    # E0 (eV), s0 (bohr), V0 (eV), eta2, kappa, lambda (1/bohr), n0 (1/bohr^3): ASE's table.
    "Al": (-3.28, 3.00, 1.493, 1.240, 2.000, 1.169, 0.00700),
    "Cu": (-3.51, 2.67, 2.476, 1.652, 2.740, 1.906, 0.00910),
    "Ag": (-2.96, 3.01, 2.132, 1.652, 2.790, 1.892, 0.00547),
    "Au": (-3.80, 3.00, 2.321, 1.674, 2.873, 2.182, 0.00703),
    "Ni": (-4.44, 2.60, 3.673, 1.669, 2.757, 1.948, 0.01030),
    "Pd": (-3.90, 2.87, 2.773, 1.818, 3.107, 2.155, 0.00688),
    "Pt": (-5.85, 2.90, 4.067, 1.812, 3.145, 2.192, 0.00802),
    "H": (-3.21, 1.31, 0.132, 2.652, 2.790, 3.892, 0.00547),
    "C": (-3.50, 1.81, 0.332, 1.652, 2.790, 1.892, 0.01322),
    "N": (-5.10, 1.88, 0.132, 1.652, 2.790, 1.892, 0.01222),
    "O": (-4.60, 1.95, 0.332, 1.652, 2.790, 1.892, 0.00850),
}
"""Element → ``(E0 eV, s0 bohr, V0 eV, η2 1/bohr, κ 1/bohr, λ 1/bohr, n0 1/bohr³)``, the
values of ASE's EMT (H, C, N, O are ASE's "just for fun" values, not for serious use)."""

BETA = 1.809
"""``(16π/3)^(1/3) / √2`` with ASE's historical rounding (fcc: nearest neighbour = β s0)."""

_KEYS = ("E0", "s0", "V0", "eta2", "kappa", "lambda", "n0")


def _elements(elements) -> tuple[str, ...]:
    """Sorted unique symbols from symbols or atomic numbers; refuses elements EMT lacks."""
    if elements is None:
        return tuple(sorted(EMT_PARAMETERS, key=lambda s: atomic_numbers[s]))
    if isinstance(elements, str | int | np.integer):
        elements = [elements]
    symbols = set()
    for e in elements:
        if isinstance(e, str):
            sym = e
        elif isinstance(e, int | np.integer) and 0 < int(e) < len(chemical_symbols):
            sym = chemical_symbols[int(e)]
        else:
            raise TypeError(f"emt: elements must be symbols or atomic numbers, got {e!r}")
        if sym not in EMT_PARAMETERS:
            raise ValueError(f"emt: no EMT parameters for element {sym!r}; EMT covers "
                             f"{', '.join(EMT_PARAMETERS)}")
        symbols.add(sym)
    if not symbols:
        raise ValueError("emt: the element list is empty")
    return tuple(sorted(symbols, key=lambda s: atomic_numbers[s]))


def emt_cutoffs(elements=None, *, asap_cutoff: bool = False) -> tuple[float, float, float]:
    """``(r_c Å, r_list Å, a 1/Å)``: midpoint and slope of the logistic cutoff, list radius.

    Args:
      elements: symbols or atomic numbers (only used with ``asap_cutoff=True``).
      asap_cutoff: take the largest ``s0`` among ``elements`` instead of the whole table.
    """
    table = _elements(elements) if asap_cutoff else tuple(EMT_PARAMETERS)
    r1nn = BETA * max(EMT_PARAMETERS[s][1] for s in table) * Bohr
    rc = r1nn * 0.5 * (math.sqrt(3.0) + 2.0)
    acut = math.log(1.0 / 1e-4 - 1.0) / (2.0 * r1nn - rc)
    return rc, (rc * 1.045 if asap_cutoff else rc + 0.5), acut


def _table(elements) -> dict[str, np.ndarray]:
    """Per-element parameters in Å/eV units, ``[n_elements]`` each."""
    raw = np.array([EMT_PARAMETERS[s] for s in elements], np.float64)
    scale = np.array([1.0, Bohr, 1.0, 1 / Bohr, 1 / Bohr, 1 / Bohr, Bohr**-3])
    return {k: raw[:, c] * scale[c] for c, k in enumerate(_KEYS)}


def _gammas(p, rc, acut):
    """γ1, γ2 of each element: the fcc neighbour sums (1st–3rd shells) with the cutoff."""
    n = jnp.array([12.0, 6.0, 24.0], p["s0"].dtype)
    r = BETA * p["s0"][:, None] * jnp.sqrt(jnp.array([1.0, 2.0, 3.0], p["s0"].dtype))
    x = n * (1.0 / (1.0 + jnp.exp(acut * (r - rc)))) / 12.0
    d = r - BETA * p["s0"][:, None]
    gamma1 = jnp.sum(x * jnp.exp(-p["eta2"][:, None] * d), axis=-1)
    gamma2 = jnp.sum(x * jnp.exp(-p["kappa"][:, None] / BETA * d), axis=-1)
    return gamma1, gamma2


def emt_atomic_energies(params: dict, system: System, index: jax.Array, cutoffs) -> jax.Array:
    """Per-atom EMT energies ``[n_atoms]`` eV (0 on padding atoms).

    Args:
      params: ``{"E0", "s0", "V0", "eta2", "kappa", "lambda", "n0"}``, each ``[n_elements]``
        in eV and Å units.
      system: one unbatched structure whose edges reach at least ``r_list``.
      index: ``[119]`` int32, atomic number → row of ``params`` (padding: any row).
      cutoffs: ``(r_c, r_list, a)`` from :func:`emt_cutoffs`.
    """
    rc, r_list, acut = cutoffs
    dtype = system.positions.dtype
    p = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    gamma1, gamma2 = _gammas(p, rc, acut)
    n = system.positions.shape[0]
    elem = index[system.species]
    ci = jnp.minimum(system.receivers, n - 1)
    nj = jnp.minimum(system.senders, n - 1)
    ei, ej = elem[ci], elem[nj]
    vec = system.edge_vectors()
    r2 = jnp.sum(vec * vec, axis=-1)
    inside = system.edge_mask & (system.receivers < n) & (r2 < r_list * r_list)
    r = jnp.sqrt(jnp.where(inside, r2, r_list * r_list))
    w = jnp.where(inside, 1.0 / (1.0 + jnp.exp(acut * (r - rc))), 0.0)
    chi = p["n0"][ej] / p["n0"][ei]
    ds1 = jnp.exp(-p["eta2"][ej] * (r - BETA * p["s0"][ej])) * chi * w
    sigma1 = jax.ops.segment_sum(ds1, system.receivers, num_segments=n)
    has = sigma1 > 0
    sigma_safe = jnp.where(has, sigma1, 1.0)
    e_a = elem
    s = -jnp.log(sigma_safe / (12.0 * gamma1[e_a])) / (BETA * p["eta2"][e_a])
    ls = p["lambda"][e_a] * s
    cohesive = (p["E0"][e_a] * (1.0 + ls) * jnp.exp(-ls)
                + 6.0 * p["V0"][e_a] * jnp.exp(-p["kappa"][e_a] * s))
    es = -0.5 * p["V0"][ei] / gamma2[ei] * jnp.exp(-p["kappa"][ej] * (r / BETA - p["s0"][ej]))
    eo = -0.5 * p["V0"][ej] / gamma2[ej] * jnp.exp(-p["kappa"][ei] * (r / BETA - p["s0"][ei]))
    pair = 0.5 * jax.ops.segment_sum(w * (es * chi + eo / chi), system.receivers,
                                     num_segments=n)
    energies = jnp.where(has, cohesive, 0.0) + pair - p["E0"][e_a]
    return jnp.where(system.atom_mask, energies, 0.0)


@register("emt")
def emt(elements=None, *, asap_cutoff: bool = False) -> Potential:
    """ASE's effective medium theory for Al, Cu, Ag, Au, Ni, Pd, Pt (and ASE's H, C, N, O).

    Args:
      elements: the elements the structures will contain (symbols or atomic numbers); None
        means every element EMT covers. Structures with other elements are refused by
        :func:`jaxpot.potential.check_species`. With the default cutoff the result does not
        depend on this list (as in ASE); with ``asap_cutoff=True`` the cutoff does.
      asap_cutoff: ASE's ``EMT(asap_cutoff=True)``: the cutoff from the largest atom among
        ``elements`` rather than from the whole table.

    Returns:
      A :class:`~jaxpot.Potential` with ``cutoff = r_list`` (build edges at least that long),
      per-atom energies, and params ``{"E0", "s0", "V0", "eta2", "kappa", "lambda", "n0"}``
      (``[n_elements]`` each, eV and Å; the cutoff stays fixed).

    Example:
      >>> pot = emt(["Cu"])
      >>> round(pot.cutoff, 4)
      5.8767
    """
    symbols = _elements(elements)
    cutoffs = emt_cutoffs(symbols, asap_cutoff=asap_cutoff)
    table = _table(symbols)
    lookup = np.zeros(119, np.int32)
    for row, sym in enumerate(symbols):
        lookup[atomic_numbers[sym]] = row

    def init(key, system):
        return {k: jnp.asarray(v) for k, v in table.items()}

    def atomic(params, system):
        return {"energy": emt_atomic_energies(params, system, jnp.asarray(lookup), cutoffs)}

    def energy(params, system):
        return jnp.sum(atomic(params, system)["energy"])

    config = {"name": "emt", "kwargs": {"elements": None if elements is None else list(symbols),
                                        "asap_cutoff": bool(asap_cutoff)}}
    return Potential(init, energy, float(cutoffs[1]), config, atomic=atomic,
                     outputs=("energy",),
                     species=tuple(atomic_numbers[s] for s in symbols))
