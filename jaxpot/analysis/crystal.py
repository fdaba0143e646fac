"""Crystal properties: equation of state, elastic constants, vacancy and surface energies.

Units: energies eV, volumes Å³, lengths Å, elastic constants and moduli GPa (``jaxpot.units``),
surface energies eV/Å² (and J/m²). Stress has ASE's sign (``σ = (1/V) ∂E/∂ε``, negative under
compression), so elastic constants of a stable crystal are positive.

* :func:`elastic_tensor`: the Voigt ``6×6`` tensor ``C_ij = ∂σ_i/∂ε_j`` (stress order xx, yy,
  zz, yz, xz, xy; engineering shear strains), exact by forward-mode differentiation of the
  stress of the homogeneously strained cell (the clamped-ion tensor), and with
  ``relaxed=True`` the relaxed-ion tensor ``C = C⁰ − (1/V) Λᵀ H⁺ Λ`` (``H`` the Hessian in
  the atomic displacements, translations projected out; ``Λ = ∂²E/∂u∂ε``): what a
  finite-difference stress–strain calculation with the atoms relaxed at each strain gives, to
  first order. Derivatives are taken at the given cell: relax it first (zero stress) for the
  elastic constants of the equilibrium crystal.
* :func:`moduli`: Voigt, Reuss and Hill bulk and shear moduli from ``C``.
* :func:`equation_of_state`: an energy–volume scan (isotropic scaling, internal coordinates
  relaxed with FIRE, :func:`jaxpot.md.relax.relax`, unless ``relax=False``) and
  :func:`birch_murnaghan`, a linear least-squares fit (the third-order Birch–Murnaghan
  energy is a cubic polynomial in ``V^{-2/3}``), giving ``E0``, ``V0``, ``B`` (GPa) and ``B′``.
* :func:`vacancy_formation_energy` and :func:`surface_energy`: relaxed defect energies.

Structures come as ``ase.Atoms`` (host side) or, for :func:`elastic_tensor`, as a
:class:`~jaxpot.System` whose edges cover the cutoff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot import units
from jaxpot.md.relax import relax as relax_structure
from jaxpot.potential import Potential, check_species, energy_forces_stress
from jaxpot.system import System

__all__ = ["voigt_strain", "elastic_tensor", "moduli", "birch_murnaghan", "bm_energy",
           "equation_of_state", "vacancy_formation_energy", "surface_energy", "J_PER_M2"]

_HI = jax.lax.Precision.HIGHEST
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))

J_PER_M2 = units._e * 1e20
"""J/m² per eV/Å²."""


def voigt_strain(e: jax.Array) -> jax.Array:
    """The symmetric ``[3, 3]`` strain of Voigt ``[6]`` engineering strains (xx, yy, zz, 2yz,
    2xz, 2xy)."""
    xx, yy, zz, yz, xz, xy = (e[i] for i in range(6))
    return jnp.array([[xx, xy / 2, xz / 2], [xy / 2, yy, yz / 2], [xz / 2, yz / 2, zz]])


def _voigt_stress(s: jax.Array) -> jax.Array:
    return jnp.stack([s[i, j] for i, j in _VOIGT])


def _deformed(system: System, u: jax.Array, e6: jax.Array) -> System:
    f = jnp.eye(3, dtype=system.positions.dtype) + voigt_strain(e6)
    return system.replace(positions=jnp.matmul(system.positions + u, f, precision=_HI),
                          cell=jnp.matmul(system.cell, f, precision=_HI))


def _elastic_parts(potential: Potential, params, system: System):
    """Clamped ``C⁰ [6, 6]``, ``∂σ/∂u [6, 3n]``, ``Λ = ∂(∇_u E)/∂ε [3n, 6]``, ``H [3n, 3n]``.

    One forward-mode Jacobian (``3n + 6`` tangents) of one backward pass that returns the
    Voigt stress and ``∇_u E = (∂E/∂x′) Fᵀ`` of the deformed structure ``x′ = (x + u) F``.
    """
    efs = energy_forces_stress(potential)
    n = system.n_atoms
    dtype = system.positions.dtype

    def both(z):
        u, e6 = z[:3 * n].reshape(n, 3), z[3 * n:]
        _, f, s = efs(params, _deformed(system, u, e6))
        deform = jnp.eye(3, dtype=dtype) + voigt_strain(e6)
        return jnp.concatenate([_voigt_stress(s), jnp.matmul(-f, deform.T, precision=_HI)
                                .reshape(-1)])

    jac = jax.jacfwd(both)(jnp.zeros(3 * n + 6, dtype))
    return jac[:6, 3 * n:], jac[:6, :3 * n], jac[6:, 3 * n:], jac[6:, :3 * n]


def _relaxed_correction(ds_du, lam, h, mask, tol):
    """``−(∂σ/∂u) H⁺ Λ``: H inverted on the complement of translations and padding."""
    m3 = jnp.repeat(mask, 3)
    n3 = h.shape[0]
    t = jnp.stack([jnp.where(m3 & (jnp.arange(n3) % 3 == a), 1.0, 0.0) for a in range(3)], 1)
    t = t / jnp.sqrt(jnp.maximum(jnp.sum(t, 0, keepdims=True), 1.0))
    pad = jnp.diag(jnp.where(m3, 0.0, 1.0))
    p = jnp.eye(n3, dtype=h.dtype) - t @ t.T - pad
    w, v = jnp.linalg.eigh(p @ h @ p)
    scale = jnp.max(jnp.abs(w))
    inv = jnp.where(jnp.abs(w) > tol * scale, 1.0 / jnp.where(w == 0, 1.0, w), 0.0)
    h_plus = (v * inv) @ v.T
    return -(ds_du * m3[None, :]) @ h_plus @ (lam * m3[:, None]), w


_JITS: dict = {}


def _elastic_jit(potential: Potential):
    """The jitted core of :func:`elastic_tensor`, cached by the potential's energy function."""
    key = potential.energy
    if key not in _JITS:
        def core(params, system, tol):
            c0, ds_du, lam, h = _elastic_parts(potential, params, system)
            corr, w = _relaxed_correction(ds_du, lam, h, system.atom_mask, tol)
            stress = _voigt_stress(energy_forces_stress(potential)(params, system)[2])
            return c0, corr, w, stress

        if len(_JITS) > 16:
            _JITS.clear()
        _JITS[key] = jax.jit(core)
    return _JITS[key]


def elastic_tensor(potential: Potential, params, system: System, *, relaxed: bool = True,
                   tol: float = 1e-8) -> dict:
    """The elastic tensor of a periodic structure from exact strain derivatives.

    Args:
      potential, params: the potential and its parameters.
      system: one periodic structure with edges covering ``potential.cutoff`` (padding
        allowed). Derivatives are taken at its cell; relax the cell first for the
        equilibrium constants.
      relaxed: include the internal-relaxation (relaxed-ion) correction.
      tol: eigenvalues of the projected Hessian below ``tol ×`` the largest are treated as
        zero modes (the translations).

    Returns:
      dict with ``C`` (``[6, 6]`` GPa, relaxed-ion if ``relaxed`` else clamped-ion),
      ``C_clamped`` (GPa), ``stress`` (Voigt ``[6]`` GPa, the residual stress at this cell)
      and ``min_hessian_eigenvalue`` (eV/Å², besides the zero modes; negative means the
      structure is not at a minimum and the relaxed-ion tensor is meaningless).

    Raises:
      ValueError: a structure that is not periodic in all three directions.
    """
    if not bool(np.all(np.asarray(system.pbc))):
        raise ValueError("elastic_tensor: the structure must be periodic along x, y and z "
                         f"(pbc={np.asarray(system.pbc).tolist()})")
    check_species(potential, np.asarray(system.species)[np.asarray(system.atom_mask)],
                  where="elastic_tensor")
    c0, corr, w, stress = _elastic_jit(potential)(params, system, tol)
    w = np.asarray(w)
    nonzero = w[np.abs(w) > tol * np.max(np.abs(w))]
    out = {"C_clamped": np.asarray(c0) / units.GPa,
           "C": np.asarray(c0 + corr if relaxed else c0) / units.GPa,
           "stress": np.asarray(stress) / units.GPa,
           "min_hessian_eigenvalue": float(nonzero.min()) if nonzero.size else 0.0}
    return out


def moduli(c) -> dict:
    """Voigt, Reuss and Hill bulk and shear moduli of a Voigt ``[6, 6]`` tensor (same units).

    Returns:
      dict with ``K_V``, ``K_R``, ``K_VRH``, ``G_V``, ``G_R``, ``G_VRH`` and the compliance
      ``S`` (``C⁻¹``).

    Raises:
      ValueError: a tensor that is not ``6×6`` or is singular.
    """
    c = np.asarray(c, np.float64)
    if c.shape != (6, 6):
        raise ValueError(f"moduli: need a 6x6 Voigt tensor, got shape {c.shape}")
    try:
        s = np.linalg.inv(c)
    except np.linalg.LinAlgError:
        raise ValueError("moduli: the elastic tensor is singular") from None
    kv = (c[0, 0] + c[1, 1] + c[2, 2] + 2 * (c[0, 1] + c[1, 2] + c[0, 2])) / 9
    gv = (c[0, 0] + c[1, 1] + c[2, 2] - c[0, 1] - c[1, 2] - c[0, 2]
          + 3 * (c[3, 3] + c[4, 4] + c[5, 5])) / 15
    kr = 1 / (s[0, 0] + s[1, 1] + s[2, 2] + 2 * (s[0, 1] + s[1, 2] + s[0, 2]))
    gr = 15 / (4 * (s[0, 0] + s[1, 1] + s[2, 2]) - 4 * (s[0, 1] + s[1, 2] + s[0, 2])
               + 3 * (s[3, 3] + s[4, 4] + s[5, 5]))
    return {"K_V": kv, "K_R": kr, "K_VRH": (kv + kr) / 2, "G_V": gv, "G_R": gr,
            "G_VRH": (gv + gr) / 2, "S": s}


def bm_energy(volumes, e0: float, v0: float, b: float, bp: float):
    """Third-order Birch–Murnaghan energy (eV) at ``volumes`` (Å³); ``b`` in eV/Å³."""
    x = (v0 / np.asarray(volumes, np.float64)) ** (2.0 / 3.0) - 1.0
    return e0 + 9.0 * v0 * b / 16.0 * (x ** 3 * bp + x ** 2 * (6.0 - 4.0 * (x + 1.0)))


def birch_murnaghan(volumes, energies) -> dict:
    """Fit the third-order Birch–Murnaghan equation of state.

    ``E(V)`` is a cubic polynomial in ``t = V^{-2/3}``, so the fit is linear least squares;
    ``V0`` is the minimum of the cubic, ``B = V d²E/dV²`` and ``B′ = dB/dP`` there.

    Args:
      volumes: ``[k]`` Å³ (k ≥ 5 recommended; at least 4), energies: ``[k]`` eV.

    Returns:
      dict with ``E0`` (eV), ``V0`` (Å³), ``B`` (GPa), ``B_prime`` and ``rms`` (eV, residual).

    Raises:
      ValueError: fewer than 4 points, mismatched lengths, or no minimum inside the data.
    """
    v = np.asarray(volumes, np.float64)
    e = np.asarray(energies, np.float64)
    if v.shape != e.shape or v.ndim != 1 or v.size < 4:
        raise ValueError(f"birch_murnaghan: need >= 4 matching volumes and energies, got "
                         f"{v.shape} and {e.shape}")
    t = v ** (-2.0 / 3.0)
    coef = np.polyfit(t, e, 3)
    d1, d2, d3 = np.polyder(coef, 1), np.polyder(coef, 2), np.polyder(coef, 3)
    roots = [r.real for r in np.roots(d1) if abs(r.imag) < 1e-12 and np.polyval(d2, r.real) > 0]
    roots = [r for r in roots if t.min() <= r <= t.max()]
    if not roots:
        raise ValueError("birch_murnaghan: the fitted E(V) has no minimum inside the scanned "
                         "volumes; scan around the equilibrium volume")
    t0 = roots[0]
    v0 = t0 ** -1.5
    # E(V) = P(t), t = V^{-2/3}: dt/dV = -2/3 t/V, d²t/dV² = 10/9 t/V²
    tv, tvv, tvvv = -2 / 3 * t0 / v0, 10 / 9 * t0 / v0 ** 2, -80 / 27 * t0 / v0 ** 3
    p1, p2, p3 = (np.polyval(d, t0) for d in (d1, d2, d3))
    e2 = p2 * tv ** 2 + p1 * tvv
    e3 = p3 * tv ** 3 + 3 * p2 * tv * tvv + p1 * tvvv
    b = v0 * e2
    bp = -1.0 - v0 * e3 / e2  # B' = dB/dP = -(1 + V E'''/E'') at V0
    rms = float(np.sqrt(np.mean((np.polyval(coef, t) - e) ** 2)))
    return {"E0": float(np.polyval(coef, t0)), "V0": float(v0), "B": float(b / units.GPa),
            "B_prime": float(bp), "rms": rms}


def _energy_jit(potential: Potential):
    key = ("energy", potential.energy)
    if key not in _JITS:
        _JITS[key] = jax.jit(potential.energy)
    return _JITS[key]


def _energy(potential, params, atoms, *, relax: bool, fmax: float, max_steps: int,
            n_atoms: int | None = None):
    """Energy (eV) of ``atoms``, positions relaxed at fixed cell with ASE's FIRE
    (:func:`jaxpot.md.relax.relax`, whose compiled programs are reused across calls of one
    shape; ``n_atoms`` pads so that a defect cell shares the perfect cell's programs)."""
    system = System.from_ase(atoms, cutoff=potential.cutoff, n_atoms=n_atoms)
    if not relax:
        return float(_energy_jit(potential)(params, system)), system
    relaxed, info = relax_structure(potential, params, system, cell=False, fmax=fmax,
                                    max_steps=max_steps)
    if not info["converged"]:
        raise ValueError(f"{atoms.get_chemical_formula()}: FIRE did not reach fmax={fmax} eV/Å "
                         f"in {max_steps} steps (fmax {info['fmax']:.2e})")
    return info["energy"], relaxed


def equation_of_state(potential: Potential, params, atoms, *, strain: float = 0.04,
                      points: int = 9, relax: bool = True, fmax: float = 1e-4,
                      max_steps: int = 2000) -> dict:
    """Energy–volume scan with isotropic scaling and a Birch–Murnaghan fit.

    Args:
      potential, params: the potential and its parameters.
      atoms: ``ase.Atoms``, periodic (near its equilibrium volume).
      strain: largest linear scaling ``±strain`` of the cell (volumes ``(1 ± strain)³``).
      points: number of volumes.
      relax: relax the positions at every volume (FIRE at fixed cell); False for Bravais
        lattices, where it changes nothing.
      fmax, max_steps: FIRE convergence (eV/Å) and step limit.

    Returns:
      dict with ``volumes`` (Å³), ``energies`` (eV), the fit (:func:`birch_murnaghan`) and
      ``V0_per_atom``/``E0_per_atom``.

    Raises:
      ValueError: a structure not periodic in 3-D, bad ``strain``/``points``, or a failed
        relaxation or fit.
    """
    if not all(atoms.pbc):
        raise ValueError("equation_of_state: the structure must be periodic in 3-D")
    if not (0 < strain < 0.3) or points < 5:
        raise ValueError(f"equation_of_state: need 0 < strain < 0.3 and points >= 5, got "
                         f"strain={strain}, points={points}")
    check_species(potential, atoms.numbers, where=atoms.get_chemical_formula())
    scales = np.linspace(1 - strain, 1 + strain, points)
    vols, ens = [], []
    for s in scales:
        a = atoms.copy()
        a.set_cell(atoms.cell[:] * s, scale_atoms=True)
        e, _ = _energy(potential, params, a, relax=relax, fmax=fmax, max_steps=max_steps)
        vols.append(a.get_volume())
        ens.append(e)
    fit = birch_murnaghan(vols, ens)
    n = len(atoms)
    return {"volumes": np.asarray(vols), "energies": np.asarray(ens), **fit,
            "V0_per_atom": fit["V0"] / n, "E0_per_atom": fit["E0"] / n}


def vacancy_formation_energy(potential: Potential, params, atoms, *, index: int = 0,
                             fmax: float = 1e-4, max_steps: int = 3000) -> dict:
    """``E_f = E(N−1, relaxed) − (N−1)/N · E(N)`` at fixed cell (eV).

    Args:
      atoms: perfect periodic supercell (large enough that the vacancy does not see its
        images within the cutoff); positions are relaxed before removing the atom too.
      index: the atom removed.

    Returns:
      dict with ``E_f`` (eV), ``E_unrelaxed`` (eV, before relaxing the defect cell),
      ``E_bulk`` and ``E_defect`` (eV).
    """
    n = len(atoms)
    if not 0 <= index < n:
        raise ValueError(f"vacancy_formation_energy: index {index} out of range for {n} atoms")
    e_bulk, bulk_sys = _energy(potential, params, atoms, relax=True, fmax=fmax,
                               max_steps=max_steps)
    perfect = bulk_sys.to_ase()
    del perfect[index]
    e_unrel, _ = _energy(potential, params, perfect, relax=False, fmax=fmax, max_steps=0,
                         n_atoms=n)
    e_def, _ = _energy(potential, params, perfect, relax=True, fmax=fmax, max_steps=max_steps,
                       n_atoms=n)
    ref = (n - 1) / n * e_bulk
    return {"E_f": e_def - ref, "E_unrelaxed": e_unrel - ref, "E_bulk": e_bulk,
            "E_defect": e_def}


def surface_energy(potential: Potential, params, slab, bulk_energy_per_atom: float, *,
                   relax: bool = True, fmax: float = 1e-4, max_steps: int = 3000) -> dict:
    """``γ = (E_slab − N e_bulk) / 2A`` of a slab with two equal free surfaces normal to z.

    Args:
      slab: ``ase.Atoms`` periodic in x and y, with vacuum along z (``pbc`` may be True in z
        if the vacuum is wider than the cutoff); the area ``A = |a₁ × a₂|``.
      bulk_energy_per_atom: eV, of the same potential (e.g. ``E0_per_atom`` of
        :func:`equation_of_state`).
      relax: relax the slab's positions (FIRE).

    Returns:
      dict with ``gamma`` (eV/Å²), ``gamma_J_m2`` (J/m²), ``E_slab`` (eV), ``area`` (Å²).
    """
    cell = np.asarray(slab.cell[:])
    area = float(np.linalg.norm(np.cross(cell[0], cell[1])))
    if area <= 0 or not (slab.pbc[0] and slab.pbc[1]):
        raise ValueError("surface_energy: the slab must be periodic in x and y with a "
                         "non-degenerate surface cell")
    e, _ = _energy(potential, params, slab, relax=relax, fmax=fmax, max_steps=max_steps)
    gamma = (e - len(slab) * bulk_energy_per_atom) / (2 * area)
    return {"gamma": gamma, "gamma_J_m2": gamma * J_PER_M2, "E_slab": e, "area": area}
