"""Exact electrostatics: Ewald, smooth PME and direct Coulomb sums of point or Gaussian charges.

Public API (stable; other modules build on it):

- :class:`CoulombSettings` and :func:`coulomb_settings`: the method and its parameters, chosen
  on the host from a target accuracy (static: hashable, no arrays).
- :func:`coulomb_energy` ``(system, charges, settings, *, widths=None) -> eV``: a pure, jittable
  function of the charges, differentiable with respect to positions, cell (stress by the strain
  derivative) and charges (``jax.grad`` w.r.t. ``charges`` gives the electrostatic potential
  ``φ_i = ∂E/∂q_i`` in V).
- :func:`charge_energy_fn` ``(settings, widths=None) -> fn(system, charges)``: the same as a
  closure with a ``cutoff`` attribute (the :data:`jaxpot.potentials.qeq.CoulombFn` protocol).
- :func:`atomic_coulomb_energies`: per-atom shares ``½ q_i φ_i`` that sum to the energy.
- :func:`coulomb`: the registered :class:`~jaxpot.Potential` with per-species charges.

Conventions: charges in e, energies in eV with the Coulomb constant
:data:`jaxpot.units.coulomb_constant` = 14.399645 eV·Å. Periodic sums use tinfoil (conducting)
boundary conditions; a charged cell gets the uniform neutralising background; an optional
Yeh–Berkowitz correction (``slab_axis``) removes the interaction of a slab with its periodic
images along a vacuum direction. A Gaussian charge of width ``σ_i`` (density
``q exp(−r²/2σ²)/(2πσ²)^{3/2}``) makes the pair energy ``q_i q_j erf(r/γ_ij)/r`` with
``γ_ij = sqrt(2(σ_i² + σ_j²))`` and adds the self energy ``q_i²/(2√π σ_i)``, so the energy is
finite at short distance. In the periodic sums the difference from point charges,
``−q_i q_j erfc(r/γ_ij)/r``, is summed over the real-space edges, so ``γ_ij`` must be small
against the cutoff (``erfc(cutoff/γ)`` is what is left out).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols

import jaxpot.potentials.ewald as _ewald
import jaxpot.potentials.pme as _pme
from jaxpot import units
from jaxpot.potential import Potential, register
from jaxpot.system import System

__all__ = ["CoulombSettings", "coulomb_settings", "coulomb_energy", "charge_energy_fn",
           "atomic_coulomb_energies", "coulomb", "species_table", "METHODS"]

METHODS = ("ewald", "pme", "direct", "auto")
DEFAULT_ACCURACY = {"ewald": 1e-10, "pme": 1e-6}
AUTO_PME_ATOMS = 1000  # "auto": Ewald up to this many atom slots, smooth PME above


@dataclasses.dataclass(frozen=True)
class CoulombSettings:
    """Static parameters of an electrostatic sum (made by :func:`coulomb_settings`).

    Attributes:
      method: ``"ewald"``, ``"pme"``, ``"direct"`` or ``"auto"`` (Ewald for at most
        ``AUTO_PME_ATOMS`` atom slots, PME above; both periodic).
      periodic: True for a lattice sum, False for the direct sum over all pairs, None to decide
        per structure from ``system.pbc`` (any periodic direction: lattice sum).
      accuracy: relative accuracy the parameters were chosen for.
      cutoff: real-space cutoff, Å (edges must be built for at least this).
      alpha: Ewald splitting parameter, Å⁻¹ (the Gaussian width is ``1/(√2 α)``).
      kcut: reciprocal cutoff of the Ewald sum, Å⁻¹.
      kmax: half-widths of the static integer k box (Ewald).
      mesh: PME mesh points per lattice direction.
      order: PME B-spline order.
      max_lengths: the longest lattice vectors (Å) the k box and the mesh were made for; a
        longer cell gives NaN with Ewald and a coarser (less accurate) mesh with PME.
      slab_axis: None, or the Cartesian axis (0, 1, 2) of the vacuum for the Yeh–Berkowitz
        correction.
      dtype: None (the dtype of the inputs) or ``"float64"`` to evaluate this term in double
        precision (needs ``jax_enable_x64``) and return the inputs' dtype.
    """

    method: str = "ewald"
    periodic: bool | None = None
    accuracy: float = 1e-10
    cutoff: float = 9.0
    alpha: float = 0.0
    kcut: float = 0.0
    kmax: tuple[int, int, int] = (0, 0, 0)
    mesh: tuple[int, int, int] = (0, 0, 0)
    order: int = 6
    max_lengths: tuple[float, float, float] = (24.0, 24.0, 24.0)
    slab_axis: int | None = None
    dtype: str | None = None


def _check_options(method, cutoff, order, slab_axis, dtype):
    if method not in METHODS:
        raise ValueError(f"coulomb: method must be one of {list(METHODS)}, got {method!r}")
    if not float(cutoff) > 0:
        raise ValueError(f"coulomb: cutoff must be > 0 Å, got {cutoff!r}")
    if int(order) != order or order < 4 or order > 10 or order % 2:
        raise ValueError(f"coulomb: PME order must be an even integer in 4..10, got {order!r}")
    if slab_axis not in (None, 0, 1, 2):
        raise ValueError(f"coulomb: slab_axis must be None, 0, 1 or 2, got {slab_axis!r}")
    if dtype not in (None, "float64", "float32"):
        raise ValueError(f"coulomb: dtype must be None, 'float32' or 'float64', got {dtype!r}")


def coulomb_settings(method: str = "ewald", *, accuracy: float | None = None,
                     cutoff: float = 9.0, max_lengths=24.0, order: int = 6,
                     periodic: bool | None = None, slab_axis: int | None = None,
                     dtype: str | None = None) -> CoulombSettings:
    """Choose the parameters of an electrostatic sum on the host.

    Args:
      method: ``"ewald"`` (exact to ``accuracy``; cost ∝ atoms × k-vectors), ``"pme"`` (smooth
        particle-mesh Ewald; cost ∝ atoms + mesh), ``"direct"`` (all pairs, non-periodic only)
        or ``"auto"``.
      accuracy: target relative accuracy ``ε`` (default 1e-10 for Ewald, which gives
        Madelung constants to ~1e-10, and 1e-6 for PME). The errors are relative to the energy
        scale of the charges, ``k_e α Σ q_i²/√π``; a neutral cell whose total energy is much
        smaller than that gets a larger relative error in its total.
      cutoff: real-space cutoff in Å; ``α = sqrt(−ln ε)/cutoff``.
      max_lengths: the longest lattice vectors (Å; one number or three) the static k box or
        mesh must serve. Cells with longer vectors give NaN (Ewald).
      order: PME B-spline order (even).
      periodic: True, False, or None to decide from ``system.pbc`` per structure.
      slab_axis: optional vacuum axis for the Yeh–Berkowitz slab correction.
      dtype: None or ``"float64"`` (evaluate this term in double precision).

    Raises:
      ValueError: an unknown method, a non-positive cutoff or length, an accuracy outside
        (0, 1), an odd or out-of-range PME order, or a bad slab axis.
    """
    _check_options(method, cutoff, order, slab_axis, dtype)
    if method == "direct":
        return CoulombSettings(method="direct", periodic=False, cutoff=float(cutoff),
                               dtype=dtype)
    pme = method == "pme"
    acc = float(accuracy if accuracy is not None
                else DEFAULT_ACCURACY["pme" if pme else "ewald"])
    alpha, kcut = _ewald.ewald_parameters(acc, cutoff)
    lengths = tuple(float(x) for x in np.broadcast_to(np.asarray(max_lengths, float), (3,)))
    kmax = _ewald.kmax_for(kcut, lengths) if method in ("ewald", "auto") else (0, 0, 0)
    pme_acc = acc if pme else DEFAULT_ACCURACY["pme"]
    mesh = _pme.mesh_for(alpha, lengths, int(order), pme_acc) if method != "ewald" else (0, 0, 0)
    return CoulombSettings(method=method, periodic=periodic, accuracy=acc,
                           cutoff=float(cutoff), alpha=alpha, kcut=kcut, kmax=kmax,
                           mesh=mesh, order=int(order), max_lengths=lengths,
                           slab_axis=slab_axis, dtype=dtype)


def _pair_kernel(r, gamma):
    """``erf(r/γ)/r`` (``1/r`` for point charges, ``gamma`` None)."""
    if gamma is None:
        return 1.0 / r
    return jax.scipy.special.erf(r / gamma) / r


def gaussian_self_energy(charges, widths):
    """``Σ q_i²/(2√π σ_i)`` in e²/Å: each Gaussian charge's interaction with itself."""
    if widths is None:
        return 0.0
    return jnp.sum(charges * charges / (2.0 * jnp.sqrt(jnp.pi) * widths))


def _gamma(widths, i, j):
    if widths is None:
        return None
    return jnp.sqrt(2.0 * (widths[i] ** 2 + widths[j] ** 2))


def direct_energy(system: System, charges, widths=None) -> jax.Array:
    """``½ Σ_{i≠j} q_i q_j erf(r_ij/γ_ij)/r_ij`` (+ Gaussian self energies), e²/Å, all pairs.

    Non-periodic: the stored positions are used as they are (no images). O(n²) memory.
    """
    mask = system.atom_mask
    n = mask.shape[0]
    x = system.positions
    pair = mask[:, None] & mask[None, :] & ~jnp.eye(n, dtype=bool)
    d = x[:, None, :] - x[None, :, :]
    r = jnp.sqrt(jnp.where(pair, jnp.sum(d * d, -1), 1.0))
    gamma = None if widths is None else jnp.sqrt(
        2.0 * (widths[:, None] ** 2 + widths[None, :] ** 2))
    pairs = jnp.where(pair, charges[:, None] * charges[None, :] * _pair_kernel(r, gamma), 0.0)
    return 0.5 * jnp.sum(pairs) + gaussian_self_energy(charges, widths)


def real_space_energy(system: System, charges, alpha: float, cutoff: float,
                      widths=None) -> jax.Array:
    """``½ Σ_edges q_i q_j [erfc(α r) − erfc(r/γ_ij)]/r`` over edges shorter than ``cutoff``.

    The ``erfc(r/γ)`` term is present only for Gaussian charges. e²/Å.
    """
    n = charges.shape[0]
    vec = system.edge_vectors()
    r2 = jnp.sum(vec * vec, -1)
    inside = system.edge_mask & (r2 < cutoff * cutoff)
    r = jnp.sqrt(jnp.where(inside, r2, cutoff * cutoff))
    i = jnp.minimum(system.receivers, n - 1)
    j = jnp.minimum(system.senders, n - 1)
    kernel = jax.scipy.special.erfc(alpha * r)
    gamma = _gamma(widths, i, j)
    if gamma is not None:
        kernel = kernel - jax.scipy.special.erfc(r / gamma)
    return 0.5 * jnp.sum(jnp.where(inside, charges[i] * charges[j] * kernel / r, 0.0))


def slab_correction(positions, charges, volume, length, axis: int) -> jax.Array:
    """Yeh–Berkowitz correction with Ballenegger's terms for a charged slab, e²/Å.

    ``(2π/V) [M² − Q Σ q_i z_i² − Q² L²/12]`` with ``M = Σ q_i z_i`` along ``axis`` and ``L``
    the cell length along it (Yeh & Berkowitz, J. Chem. Phys. 111, 3155 (1999); Ballenegger,
    Arnold & Cerdà, J. Chem. Phys. 131, 094107 (2009)), as LAMMPS' ``kspace_modify slab``.
    """
    z = positions[:, axis]
    m = jnp.sum(charges * z)
    total = jnp.sum(charges)
    return 2.0 * jnp.pi / volume * (m * m - total * jnp.sum(charges * z * z)
                                    - total * total * length * length / 12.0)


def _use_pme(settings: CoulombSettings, n_atoms: int) -> bool:
    return settings.method == "pme" or (settings.method == "auto" and n_atoms > AUTO_PME_ATOMS)


def periodic_energy(system: System, charges, settings: CoulombSettings,
                    widths=None) -> jax.Array:
    """The lattice sum (real + reciprocal + self + background [+ slab]), e²/Å.

    NaN when the cell has a lattice vector longer than ``settings.max_lengths`` (Ewald).
    """
    cell, flat = _ewald.safe_cell(system.cell)
    alpha = settings.alpha
    real = real_space_energy(system, charges, alpha, settings.cutoff, widths)
    if _use_pme(settings, charges.shape[0]):
        recip = _pme.pme_energy(system.positions, charges, cell, alpha, settings.mesh,
                                settings.order)
        fits = jnp.asarray(True)
    else:
        grid = _ewald.half_kgrid(settings.kmax)
        recip = _ewald.reciprocal_energy(system.positions, charges, cell, alpha, settings.kcut,
                                         grid)
        fits = flat | _ewald.cell_fits(system.cell, settings.max_lengths)
    volume = jnp.abs(jnp.linalg.det(cell))
    total = jnp.sum(charges)
    self_e = -alpha / jnp.sqrt(jnp.pi) * jnp.sum(charges * charges)
    background = -jnp.pi / (2.0 * volume * alpha * alpha) * total * total
    e = real + recip + self_e + background + gaussian_self_energy(charges, widths)
    if settings.slab_axis is not None:
        a = settings.slab_axis
        e = e + slab_correction(system.positions, charges, volume,
                                jnp.sqrt(jnp.sum(cell[a] * cell[a])), a)
    return e * jnp.where(fits, 1.0, jnp.nan)


def _cast(settings, system, charges, widths):
    if settings.dtype is None:
        return system, charges, widths
    dt = jnp.dtype(settings.dtype)
    system = system.replace(positions=system.positions.astype(dt), cell=system.cell.astype(dt),
                            shifts=system.shifts.astype(dt))
    return system, charges.astype(dt), None if widths is None else widths.astype(dt)


def coulomb_energy(system: System, charges, settings: CoulombSettings, *,
                   widths=None) -> jax.Array:
    """Electrostatic energy of point (or Gaussian) charges, eV.

    Args:
      system: one unbatched structure; for periodic sums its edges must reach
        ``settings.cutoff``.
      charges: ``[n_atoms]`` e (values on padding atoms are ignored).
      settings: from :func:`coulomb_settings` (static).
      widths: optional ``[n_atoms]`` Gaussian widths σ in Å (> 0 on real atoms).

    Returns:
      Scalar energy in eV in the dtype of ``system.positions``.
    """
    out_dtype = system.positions.dtype
    system, charges, widths = _cast(settings, system, charges, widths)
    mask = system.atom_mask
    q = jnp.where(mask, jnp.asarray(charges, system.positions.dtype), 0.0)
    if widths is not None:
        widths = jnp.where(mask, jnp.asarray(widths, q.dtype), 1.0)
    if settings.method == "direct" or settings.periodic is False:
        e = direct_energy(system, q, widths)
    elif settings.periodic:
        e = periodic_energy(system, q, settings, widths)
    else:
        e = jax.lax.cond(jnp.any(system.pbc),
                         lambda s, c: periodic_energy(s, c, settings, widths),
                         lambda s, c: direct_energy(s, c, widths), system, q)
    return (units.coulomb_constant * e).astype(out_dtype)


def charge_energy_fn(settings: CoulombSettings, widths=None):
    """``fn(system, charges) -> eV`` (:func:`coulomb_energy` with fixed settings and widths).

    ``widths`` may be None, an ``[n_atoms]`` array, or a callable ``system -> [n_atoms]``
    (per-species widths looked up from ``system.species``). The function has a ``cutoff``
    attribute: the edge length it needs (0 for the direct sum).
    """

    def fn(system, charges):
        w = widths(system) if callable(widths) else widths
        return coulomb_energy(system, charges, settings, widths=w)

    fn.cutoff = 0.0 if settings.method == "direct" or settings.periodic is False \
        else settings.cutoff
    fn.settings = settings
    return fn


def atomic_coulomb_energies(system: System, charges, settings: CoulombSettings, *,
                            widths=None) -> jax.Array:
    """Per-atom shares ``½ q_i ∂E/∂q_i`` (eV, ``[n_atoms]``); they sum to the energy.

    Exact because every term is a homogeneous quadratic form of the charges.
    """
    q = jnp.where(system.atom_mask, charges, 0.0)
    phi = jax.grad(lambda c: coulomb_energy(system, c, settings, widths=widths))(q)
    return 0.5 * q * phi


def species_table(values, what: str) -> tuple[np.ndarray, tuple[int, ...], dict]:
    """``{element: value}`` → ``([119] table, atomic numbers, {symbol: float})``.

    Keys may be symbols (``"Na"``) or atomic numbers; unknown elements raise ``ValueError``.
    """
    if not isinstance(values, dict) or not values:
        raise ValueError(f"coulomb: {what} must be a non-empty {{element: value}} dict, "
                         f"got {values!r}")
    table = np.zeros(119)
    clean = {}
    for key, value in values.items():
        z = _atomic_number(key, what)
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"coulomb: {what} of {key!r} must be a number, got {value!r}") \
                from None
        if not np.isfinite(v):
            raise ValueError(f"coulomb: {what} of {key!r} is not finite ({v})")
        table[z] = v
        clean[chemical_symbols[z]] = v
    return table, tuple(sorted(_atomic_number(k, what) for k in values)), clean


def _atomic_number(key, what: str) -> int:
    if isinstance(key, str) and key in chemical_symbols[1:]:
        return chemical_symbols.index(key)
    if isinstance(key, (int, np.integer)) and 1 <= int(key) <= 118:
        return int(key)
    if isinstance(key, str) and key.isdigit() and 1 <= int(key) <= 118:
        return int(key)
    raise ValueError(f"coulomb: unknown element {key!r} in {what}")


@register("coulomb")
def coulomb(charges: dict, *, method: str = "auto", accuracy: float | None = None,
            cutoff: float = 9.0, max_lengths=24.0, order: int = 6,
            widths: dict | None = None, periodic: bool | None = None,
            slab_axis: int | None = None, dtype: str | None = None) -> Potential:
    """Electrostatics of fixed per-element charges as a :class:`~jaxpot.Potential`.

    Args:
      charges: ``{element: charge in e}``, e.g. ``{"Na": 1, "Cl": -1}``.
      method: ``"ewald"``, ``"pme"``, ``"direct"`` or ``"auto"`` (see :func:`coulomb_settings`).
      accuracy: target relative accuracy (default 1e-10 Ewald, 1e-6 PME).
      cutoff: real-space cutoff, Å (the potential's edge cutoff).
      max_lengths: the longest lattice vectors (Å) the k box or mesh must serve.
      order: PME B-spline order.
      widths: optional ``{element: σ in Å}`` Gaussian charge widths.
      periodic: True, False, or None (from each structure's ``pbc``).
      slab_axis: optional vacuum axis for the Yeh–Berkowitz correction.
      dtype: None or ``"float64"`` to evaluate this term in double precision.

    Returns:
      A non-local potential with no trainable parameters; per-atom outputs ``"energy"``
      (``½ q_i φ_i``, summing to the energy) and ``"charges"``.

    Example:
      >>> pot = coulomb({"Na": 1, "Cl": -1}, method="ewald", cutoff=6.0, max_lengths=12.0)
      >>> pot.config["kwargs"]["charges"]
      {'Na': 1.0, 'Cl': -1.0}
    """
    table, species, clean = species_table(charges, "charges")
    wtable = None
    wclean = None
    if widths is not None:
        wtable, wspecies, wclean = species_table(widths, "widths")
        if any(wtable[z] <= 0 for z in wspecies):
            raise ValueError(f"coulomb: Gaussian widths must be > 0 Å, got {wclean}")
        missing = sorted(set(species) - set(wspecies))
        if missing:
            raise ValueError(f"coulomb: no Gaussian width for element(s) "
                             f"{[chemical_symbols[z] for z in missing]}")
        wtable = np.where(wtable > 0, wtable, 1.0)
    settings = coulomb_settings(method, accuracy=accuracy, cutoff=cutoff,
                                max_lengths=max_lengths, order=order, periodic=periodic,
                                slab_axis=slab_axis, dtype=dtype)

    def _inputs(system):
        z = jnp.clip(jnp.where(system.atom_mask, system.species, 0), 0, 118)
        dt = system.positions.dtype
        q = jnp.where(system.atom_mask, jnp.asarray(table, dt)[z], 0.0)
        w = None if wtable is None else jnp.asarray(wtable, dt)[z]
        return q, w

    def energy(params, system):
        q, w = _inputs(system)
        return coulomb_energy(system, q, settings, widths=w)

    def atomic(params, system):
        q, w = _inputs(system)
        return {"energy": atomic_coulomb_energies(system, q, settings, widths=w), "charges": q}

    needs_edges = settings.method != "direct" and settings.periodic is not False
    config = {"name": "coulomb", "kwargs": {
        "charges": clean, "method": method, "accuracy": accuracy, "cutoff": float(cutoff),
        "max_lengths": list(settings.max_lengths), "order": int(order), "widths": wclean,
        "periodic": periodic, "slab_axis": slab_axis, "dtype": dtype}}
    return Potential(init=lambda key, system: {}, energy=energy,
                     cutoff=float(cutoff) if needs_edges else 0.0, config=config,
                     atomic=atomic, outputs=("energy", "charges"), local=False,
                     species=species)
