"""Physics assertions for potentials, used by jaxpot's own tests and offered to users.

Every function takes ``(potential_or_energy_fn, params, system, ...)``, computes what the
property predicts, and raises :class:`AssertionError` with a message that names the quantity,
the size of the violation and the tolerance. Each one also guards against passing vacuously: it
fails when the forces are all (nearly) zero or when the perturbation it relies on does not change
anything, because a check that cannot fail proves nothing.

``potential_or_energy_fn`` is a :class:`jaxpot.Potential` or a plain
``energy_fn(params, system) -> scalar eV``. A transformed structure (rotated, translated,
permuted, replicated, strained) needs edges: with a ``Potential`` (or an explicit ``cutoff=``)
they are rebuilt on the host with :meth:`jaxpot.System.with_edges`; with a bare energy function
and no cutoff the edges of ``system`` are carried along exactly (remapped, with image shifts
corrected), which is equally correct as long as ``system`` had all pairs within the cutoff.

Tolerances follow the project's convention (STYLE.md §8): in float64, invariances hold to
``rtol = atol = 1e-10``; in float32 to ``rtol = 1e-5, atol = 1e-6`` (pass ``rtol=1e-4`` on a
GPU). Differences are compared against ``atol + rtol * scale`` where ``scale`` is the largest
magnitude of the reference quantity (an energy in eV, a force array in eV/Å). Finite-difference
checks need float64 (``jax.config.update("jax_enable_x64", True)``).

Example:
  >>> import jax, numpy as np
  >>> jax.config.update("jax_enable_x64", True)
  >>> from ase.build import bulk
  >>> from jaxpot import System, potentials, testing
  >>> atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
  >>> atoms.rattle(0.05, seed=1)
  >>> pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=6.0)
  >>> system = System.from_ase(atoms, cutoff=pot.cutoff)
  >>> params = pot.init(jax.random.key(0), system)
  >>> testing.assert_rotation_reflection_invariance(pot, params, system)
  >>> testing.assert_forces_match_finite_differences(pot, params, system)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot import neighbors as _nb
from jaxpot import units
from jaxpot.md.blocks import NeighborKeeper, run_checked
from jaxpot.potential import Potential, energy_forces_stress
from jaxpot.system import System

__all__ = [
    "assert_rotation_reflection_invariance",
    "assert_translation_invariance",
    "assert_permutation_invariance",
    "assert_forces_match_finite_differences",
    "assert_stress_matches_finite_differences",
    "assert_padding_invariance",
    "assert_supercell_extensivity",
    "assert_cutoff_smoothness",
    "assert_nve_conservation",
    "default_tolerances",
    "random_rotation",
]

EnergyFn = Callable[[Any, System], jax.Array]

# A check is only meaningful when the forces are much larger than the tolerance it uses.
_NONTRIVIAL_FACTOR = 100.0


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def default_tolerances(dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for invariance checks in ``dtype`` (STYLE.md §8).

    Args:
      dtype: float dtype of the positions.

    Returns:
      ``(1e-10, 1e-10)`` for float64, ``(1e-5, 1e-6)`` otherwise.
    """
    if jnp.dtype(dtype) == jnp.float64:
        return 1e-10, 1e-10
    return 1e-5, 1e-6


def random_rotation(seed: int = 0, *, reflect: bool = False) -> np.ndarray:
    """A random proper rotation matrix (Haar measure), optionally times −1 (an improper one).

    Args:
      seed: NumPy seed.
      reflect: return ``−R`` (rotation combined with inversion, determinant −1).

    Returns:
      ``[3, 3]`` float64 orthogonal matrix.
    """
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return -q if reflect else q


def _resolve(potential_or_fn, cutoff: float | None) -> tuple[EnergyFn, float | None]:
    if isinstance(potential_or_fn, Potential):
        return potential_or_fn.energy, (potential_or_fn.cutoff if cutoff is None else cutoff)
    if not callable(potential_or_fn):
        raise TypeError(
            f"expected a jaxpot.Potential or an energy_fn(params, system), got {potential_or_fn!r}"
        )
    return potential_or_fn, cutoff


def _tolerances(system: System, rtol, atol) -> tuple[float, float]:
    r, a = default_tolerances(system.positions.dtype)
    return (r if rtol is None else float(rtol)), (a if atol is None else float(atol))


def _np(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _real(system: System) -> np.ndarray:
    mask = np.asarray(system.atom_mask, bool)
    if not mask[: int(mask.sum())].all():
        raise ValueError("jaxpot.testing expects real atoms first and padding last")
    return mask


def _assert_finite(name: str, value) -> None:
    v = _np(value)
    if not np.all(np.isfinite(v)):
        bad = np.argwhere(~np.isfinite(v))
        raise AssertionError(f"{name} is not finite (first bad index {bad[0].tolist()})")


def _assert_close(name: str, actual, expected, rtol: float, atol: float, hint: str = "") -> None:
    a, e = _np(actual), _np(expected)
    _assert_finite(name, a)
    _assert_finite(f"reference {name}", e)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} differs from the reference {e.shape}")
    diff = np.abs(a - e)
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    bound = atol + rtol * scale
    worst = float(np.max(diff)) if diff.size else 0.0
    if not worst <= bound:
        where = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
        at = f" at index {tuple(int(i) for i in where)}" if where else ""
        raise AssertionError(
            f"{name}: max |difference| {worst:.3e}{at} exceeds {bound:.3e} "
            f"(atol={atol:g} + rtol={rtol:g} x scale {scale:.3e}); "
            f"got {a.ravel()[:6] if a.ndim else a}, expected {e.ravel()[:6] if e.ndim else e}"
            + (f". {hint}" if hint else "")
        )


def _assert_nontrivial_forces(forces, mask, atol: float, what: str) -> float:
    f = _np(forces)[mask]
    fmax = float(np.max(np.abs(f))) if f.size else 0.0
    need = _NONTRIVIAL_FACTOR * atol
    if not fmax > need:
        raise AssertionError(
            f"{what} would pass vacuously: the largest force is {fmax:.3e} eV/Å (needs > "
            f"{need:.1e}); rattle the structure or choose one whose forces are not all zero"
        )
    return fmax


def _make_jitted(energy_fn: EnergyFn):
    def raw(params, system):
        return jax.value_and_grad(lambda x: energy_fn(params, system.replace(positions=x)))(
            system.positions
        )

    return (jax.jit(energy_fn), jax.jit(energy_forces_stress(energy_fn)), jax.jit(raw))


_cached_jitted = functools.lru_cache(maxsize=128)(_make_jitted)


def _jitted(energy_fn: EnergyFn):
    """Jitted ``energy``, ``(E, F, σ)`` and ``(E, ∂E/∂x)`` of one energy function.

    Cached per function so that repeated checks on the same shapes compile once.
    """
    try:
        return _cached_jitted(energy_fn)
    except TypeError:  # an unhashable callable
        return _make_jitted(energy_fn)


def _efs(energy_fn: EnergyFn, params, system: System):
    """Energy, masked forces and (for a non-zero volume) stress, via jaxpot.potential."""
    return _jitted(energy_fn)[1](params, system)


def _raw_gradient(energy_fn: EnergyFn, params, system: System):
    """Energy and ∂E/∂x for *every* slot, padding included (no masking)."""
    return _jitted(energy_fn)[2](params, system)


def _rebuilt(system: System, cutoff: float | None) -> System:
    """``system`` with edges rebuilt for ``cutoff`` (host); its own edges when cutoff is None.

    Keeping the edges is exact for rigid motions: edge vectors move with positions and cell.
    """
    return system if cutoff is None else system.with_edges(float(cutoff))


def _has_volume(system: System) -> bool:
    return bool(np.all(np.asarray(system.pbc, bool))) and abs(np.linalg.det(_np(system.cell))) > 0


def _as_float64(tree):
    if not jax.config.jax_enable_x64:
        raise ValueError(
            "finite-difference checks need float64: call "
            "jax.config.update('jax_enable_x64', True) before building arrays"
        )

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


# ---------------------------------------------------------------------------------------------
# Symmetries
# ---------------------------------------------------------------------------------------------


def assert_rotation_reflection_invariance(
    potential_or_energy_fn: Potential | EnergyFn,
    params,
    system: System,
    *,
    seed: int = 0,
    reflect: bool = True,
    check_stress: bool | None = None,
    cutoff: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert E is invariant and forces and stress are equivariant under O(3).

    With ``R = −Q`` for a random rotation ``Q`` (so both a rotation and the inversion are
    tested), the structure ``positions @ R.T``, ``cell @ R.T`` must give the same energy,
    forces ``F @ R.T`` and stress ``R σ R.T``.

    Args:
      potential_or_energy_fn: a :class:`jaxpot.Potential` or ``energy_fn(params, system)``.
      params: its parameters.
      system: one unbatched structure with edges; forces must not all vanish.
      seed: seed of the random rotation.
      reflect: include the inversion (``R = −Q``, det −1); ``False`` tests SO(3) only, for
        deliberately chiral models.
      check_stress: compare stress too (default: when the system is periodic in 3D).
      cutoff: Å; edges of the rotated structure are rebuilt for it (default: the potential's
        cutoff; with a bare energy function the edges are carried along).
      rtol, atol: tolerances (default :func:`default_tolerances`).

    Raises:
      AssertionError: energy, forces or stress differ beyond tolerance, or the forces are ~0.
    """
    energy_fn, cutoff = _resolve(potential_or_energy_fn, cutoff)
    rtol, atol = _tolerances(system, rtol, atol)
    mask = _real(system)
    rot = random_rotation(seed, reflect=reflect)
    r = jnp.asarray(rot, system.positions.dtype)
    moved = system.replace(positions=_mm(system.positions, r.T), cell=_mm(system.cell, r.T))
    moved = _rebuilt(moved, cutoff)
    if check_stress is None:
        check_stress = _has_volume(system)

    e0, f0, s0 = _efs(energy_fn, params, system)
    e1, f1, s1 = _efs(energy_fn, params, moved)
    _assert_nontrivial_forces(f0, mask, atol, "rotation check")
    what = "rotation+inversion" if reflect else "rotation"
    _assert_close(f"energy after {what} (eV)", e1, e0, rtol, atol * max(1, mask.sum()))
    _assert_close(f"forces after {what} (eV/Å), expected F @ R.T", _np(f1)[mask],
                  (_np(f0) @ rot.T)[mask], rtol, atol)
    if check_stress:
        s0n = _np(s0)
        if not np.max(np.abs(s0n)) > 0:
            raise AssertionError("rotation check: the stress is exactly zero; nothing to compare")
        _assert_close(f"stress after {what} (eV/Å³), expected R σ R.T", s1, rot @ s0n @ rot.T,
                      rtol, atol)


def assert_translation_invariance(
    potential_or_energy_fn: Potential | EnergyFn,
    params,
    system: System,
    *,
    seed: int = 0,
    distance: float = 1.7,
    check_images: bool = True,
    cutoff: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert a rigid translation changes neither E nor F, and that the net force ΣF vanishes.

    For periodic directions it also moves each atom by a random integer combination of the
    periodic lattice vectors (an image of itself): nothing may change.

    Args:
      potential_or_energy_fn: a :class:`jaxpot.Potential` or ``energy_fn(params, system)``.
      params: its parameters.
      system: one unbatched structure with edges (periodic, isolated or mixed).
      seed: seed of the random translation direction and image shifts.
      distance: length of the translation, Å (deliberately not a lattice vector).
      check_images: also test per-atom lattice-vector moves along periodic directions.
      cutoff: Å for rebuilding edges (default: the potential's; see the module docstring).
      rtol, atol: tolerances (default :func:`default_tolerances`).

    Raises:
      AssertionError: E or F change, ΣF ≠ 0, or the forces are ~0.
    """
    energy_fn, cutoff = _resolve(potential_or_energy_fn, cutoff)
    rtol, atol = _tolerances(system, rtol, atol)
    mask = _real(system)
    rng = np.random.default_rng(seed)
    t = rng.normal(size=3)
    t = distance * t / np.linalg.norm(t)
    maskj = jnp.asarray(mask)[:, None]
    shift = jnp.where(maskj, jnp.asarray(t, system.positions.dtype)[None, :], 0.0)
    moved = _rebuilt(system.replace(positions=system.positions + shift), cutoff)

    e0, f0, _ = _efs(energy_fn, params, system)
    fmax = _assert_nontrivial_forces(f0, mask, atol, "translation check")
    n = int(mask.sum())
    net = _np(f0)[mask].sum(axis=0)
    bound = atol * n + rtol * fmax * n
    if not np.max(np.abs(net)) <= bound:
        raise AssertionError(
            f"net force ΣF = {net.tolist()} eV/Å is not zero (allowed {bound:.3e}); the energy "
            "depends on absolute positions (an external field?)"
        )
    e1, f1, _ = _efs(energy_fn, params, moved)
    _assert_close("energy after a rigid translation (eV)", e1, e0, rtol, atol * max(1, n))
    _assert_close("forces after a rigid translation (eV/Å)", _np(f1)[mask], _np(f0)[mask],
                  rtol, atol)

    pbc = np.asarray(system.pbc, bool)
    if check_images and pbc.any():
        images = rng.integers(-1, 2, size=(system.n_atoms, 3)) * pbc[None, :]
        images[~mask] = 0
        if not images.any():
            images[0, int(np.argmax(pbc))] = 1
        img = jnp.asarray(images, system.positions.dtype)
        imaged = system.replace(positions=system.positions + _mm(img, system.cell))
        if cutoff is None:
            n_pad = system.n_atoms
            r = np.minimum(np.asarray(system.receivers), n_pad - 1)
            s = np.minimum(np.asarray(system.senders), n_pad - 1)
            new_shifts = _np(system.shifts) + images[r] - images[s]
            new_shifts[~np.asarray(system.edge_mask)] = 0.0
            imaged = imaged.replace(shifts=jnp.asarray(new_shifts, system.shifts.dtype))
        else:
            imaged = imaged.with_edges(float(cutoff))
        e2, f2, _ = _efs(energy_fn, params, imaged)
        _assert_close("energy after moving atoms to periodic images (eV)", e2, e0, rtol,
                      atol * max(1, n))
        _assert_close("forces after moving atoms to periodic images (eV/Å)", _np(f2)[mask],
                      _np(f0)[mask], rtol, atol)


def assert_permutation_invariance(
    potential_or_energy_fn: Potential | EnergyFn,
    params,
    system: System,
    *,
    seed: int = 0,
    within_species: bool = False,
    cutoff: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert relabelling atoms (each keeps its species and mass) leaves E unchanged and F follows.

    A random permutation ``p`` of the real atoms is applied (``positions[p]``, ``species[p]``,
    ``masses[p]``); the new forces must equal ``F[p]``. Exchanging two like atoms is a special
    case, so this is the invariance under exchange of identical particles.

    Args:
      potential_or_energy_fn: a :class:`jaxpot.Potential` or ``energy_fn(params, system)``.
      params: its parameters.
      system: one unbatched structure with edges and at least two real atoms.
      seed: seed of the permutation.
      within_species: only exchange atoms of the same species (the species array is then
        unchanged; use it for models that keep per-slot state other than the species).
      cutoff: Å for rebuilding edges (default: the potential's; see the module docstring).
      rtol, atol: tolerances (default :func:`default_tolerances`).

    Raises:
      AssertionError: E changes, forces do not follow the permutation, or the forces are ~0.
    """
    energy_fn, cutoff = _resolve(potential_or_energy_fn, cutoff)
    rtol, atol = _tolerances(system, rtol, atol)
    mask = _real(system)
    n = int(mask.sum())
    if n < 2:
        raise ValueError("permutation check needs at least two real atoms")
    rng = np.random.default_rng(seed)
    species = np.asarray(system.species)[:n]
    groups = [np.nonzero(species == z)[0] for z in np.unique(species)] if within_species \
        else [np.arange(n)]
    if max(g.size for g in groups) < 2:
        raise ValueError("permutation check: no two atoms of the same species to exchange")
    perm = np.arange(n)
    while np.all(perm == np.arange(n)):
        for g in groups:
            perm[g] = rng.permutation(g)
    full = np.concatenate([perm, np.arange(n, system.n_atoms)])
    inverse = np.argsort(full)
    moved = system.replace(
        positions=system.positions[full], species=system.species[full],
        masses=system.masses[full],
    )
    if cutoff is None:
        emask = np.asarray(system.edge_mask)
        inv_ext = np.append(inverse, system.n_atoms)  # the sentinel maps to itself
        moved = moved.replace(
            senders=jnp.asarray(np.where(emask, inv_ext[np.asarray(system.senders)],
                                         system.n_atoms), jnp.int32),
            receivers=jnp.asarray(np.where(emask, inv_ext[np.asarray(system.receivers)],
                                           system.n_atoms), jnp.int32),
        )
    else:
        moved = moved.with_edges(float(cutoff))

    e0, f0, _ = _efs(energy_fn, params, system)
    _assert_nontrivial_forces(f0, mask, atol, "permutation check")
    f0p = _np(f0)[full]
    if np.max(np.abs(f0p - _np(f0))[:n]) <= atol:
        raise AssertionError("permutation check: the permutation does not change the force "
                             "array, so it cannot show that forces follow it")
    e1, f1, _ = _efs(energy_fn, params, moved)
    _assert_close("energy after permuting atoms (eV)", e1, e0, rtol, atol * max(1, n))
    _assert_close("forces after permuting atoms (eV/Å), expected F[perm]", _np(f1)[:n],
                  f0p[:n], rtol, atol)


# ---------------------------------------------------------------------------------------------
# Derivatives
# ---------------------------------------------------------------------------------------------


def assert_forces_match_finite_differences(
    potential_or_energy_fn: Potential | EnergyFn,
    params,
    system: System,
    *,
    forces_fn: Callable[[Any, System], jax.Array] | None = None,
    h: float = 1e-4,
    n_directions: int = 4,
    n_single_atom: int = 4,
    tol: float = 1e-6,
    seed: int = 0,
    skin: float = 0.1,
    cutoff: float | None = None,
) -> None:
    """Assert forces equal −∇E by central finite differences (in float64).

    For random unit directions ``v`` (over all real atoms, and on single atoms; zero on padding)
    ``fd = (E(x + h v) − E(x − h v)) / 2h`` must satisfy
    ``|fd + F·v| <= tol · max(1, |F·v|)`` (eV/Å).

    Args:
      potential_or_energy_fn: a :class:`jaxpot.Potential` or ``energy_fn(params, system)``.
      params: its parameters (cast to float64).
      system: one unbatched structure (cast to float64); forces must not all vanish.
      forces_fn: ``(params, system) -> [n_atoms, 3]`` forces to test (default
        ``jaxpot.forces`` of the energy, i.e. autodiff); pass your own for models that predict
        forces directly or for a hand-written gradient.
      h: displacement, Å.
      n_directions: random directions spread over all real atoms.
      n_single_atom: random directions on one random atom each.
      tol: tolerance on ``|fd + F·v|``, eV/Å.
      seed: seed of the directions.
      skin: Å; edges are built once for ``cutoff + skin`` so that displaced structures keep
        every pair (potentials must ignore edges beyond their cutoff).
      cutoff: Å (default: the potential's; with a bare energy function the given edges are used).

    Raises:
      AssertionError: a directional derivative disagrees, or all ``|F·v|`` are tiny.
      ValueError: float64 is not enabled.
    """
    energy_fn, cutoff = _resolve(potential_or_energy_fn, cutoff)
    system = _as_float64(system)
    params = _as_float64(params)
    mask = _real(system)
    base = system if cutoff is None else system.with_edges(float(cutoff) + skin)
    if forces_fn is None:
        forces_fn = _masked_forces(energy_fn)
    f = _np(forces_fn(params, base))
    _assert_finite("forces", f)
    rng = np.random.default_rng(seed)
    n = int(mask.sum())
    dirs = []
    for _ in range(n_directions):
        v = np.zeros((system.n_atoms, 3))
        v[:n] = rng.normal(size=(n, 3))
        dirs.append(v / np.linalg.norm(v))
    for _ in range(n_single_atom):
        v = np.zeros((system.n_atoms, 3))
        u = rng.normal(size=3)
        v[rng.integers(n)] = u / np.linalg.norm(u)
        dirs.append(v)

    jit_energy = _jitted(energy_fn)[0]

    def energy(x):
        return jit_energy(params, base.replace(positions=x))

    x0 = base.positions
    worst_fv = 0.0
    for k, v in enumerate(dirs):
        dv = jnp.asarray(h * v)
        fd = (float(energy(x0 + dv)) - float(energy(x0 - dv))) / (2 * h)
        fv = float(np.sum(f * v))
        worst_fv = max(worst_fv, abs(fv))
        err = abs(fd + fv)
        bound = tol * max(1.0, abs(fv))
        if not err <= bound:
            kind = "all atoms" if k < n_directions else f"atom {int(np.argmax(np.abs(v).sum(1)))}"
            raise AssertionError(
                f"forces do not match finite differences along direction {k} ({kind}): "
                f"-dE/dv by central differences (h={h:g} Å) is {-fd:.10e} eV/Å but F·v is "
                f"{fv:.10e} (|error| {err:.3e} > {bound:.3e}); forces are not -∇E"
            )
    if not worst_fv > 10 * tol:
        raise AssertionError(
            f"finite-difference check would pass vacuously: every |F·v| is below {10 * tol:g} "
            "eV/Å; rattle the structure"
        )


def _masked_forces(energy_fn: EnergyFn):
    def fn(params, system):
        _, g = _raw_gradient(energy_fn, params, system)
        return jnp.where(system.atom_mask[:, None], -g, 0.0)

    return fn


def _mm(a, b):
    """``a @ b`` at full precision (GPUs default to TF32 for float32 products)."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _strain(system: System, strain) -> System:
    deform = jnp.eye(3, dtype=system.positions.dtype) + strain
    return system.replace(positions=_mm(system.positions, deform), cell=_mm(system.cell, deform))


def assert_stress_matches_finite_differences(
    potential_or_energy_fn: Potential | EnergyFn,
    params,
    system: System,
    *,
    stress_fn: Callable[[Any, System], jax.Array] | None = None,
    h: float = 1e-5,
    n_random: int = 2,
    tol: float = 1e-6,
    seed: int = 0,
    skin: float = 0.1,
    cutoff: float | None = None,
) -> None:
    """Assert the stress is the strain derivative of E, by central finite strains (float64).

    The structure is deformed as ``x (I + ε)``, ``cell (I + ε)`` for symmetric strains
    ``ε = ±h D`` (the six Voigt components and a few random symmetric ``D``); then
    ``(E(+hD) − E(−hD)) / 2h`` must equal ``V Σ_ab σ_ab D_ab`` within
    ``tol · max(1, |V σ:D|)`` (eV). This pins the sign convention: σ = (1/V) ∂E/∂ε, negative
    under compression, pressure = −tr σ / 3 (ASE's).

    Args:
      potential_or_energy_fn: a :class:`jaxpot.Potential` or ``energy_fn(params, system)``.
      params: its parameters (cast to float64).
      system: one unbatched structure, periodic in all three directions.
      stress_fn: ``(params, system) -> [3, 3]`` stress in eV/Å³ to test (default
        ``jaxpot.stress`` of the energy).
      h: strain magnitude (dimensionless).
      n_random: random symmetric strain directions in addition to the six Voigt ones.
      tol: tolerance, eV.
      seed: seed of the random strains.
      skin: Å added to the cutoff for edges built once and reused for the strained structures.
      cutoff: Å (default: the potential's; with a bare energy function the given edges are used).

    Raises:
      AssertionError: the stress disagrees with finite strains, is not symmetric, or is zero.
      ValueError: the system is not 3D periodic, or float64 is not enabled.
    """
    energy_fn, cutoff = _resolve(potential_or_energy_fn, cutoff)
    system = _as_float64(system)
    params = _as_float64(params)
    if not _has_volume(system):
        raise ValueError("stress needs a structure periodic in all three directions")
    base = system if cutoff is None else system.with_edges(float(cutoff) + skin)
    if stress_fn is None:
        sigma = _np(energy_forces_stress(energy_fn)(params, base)[2])
    else:
        sigma = _np(stress_fn(params, base))
    _assert_finite("stress", sigma)
    if not np.max(np.abs(sigma)) > 0:
        raise AssertionError("stress check would pass vacuously: the stress is exactly zero")
    _assert_close("stress symmetry (eV/Å³)", sigma.T, sigma, 1e-10, 1e-12)
    volume = abs(np.linalg.det(_np(base.cell)))
    rng = np.random.default_rng(seed)
    dirs = []
    for a in range(3):
        for b in range(a, 3):
            d = np.zeros((3, 3))
            d[a, b] = d[b, a] = 1.0
            dirs.append((f"ε_{'xyz'[a]}{'xyz'[b]}", d))
    for k in range(n_random):
        m = rng.normal(size=(3, 3))
        dirs.append((f"random strain {k}", 0.5 * (m + m.T)))
    jit_energy = _jitted(energy_fn)[0]

    def energy(eps):
        return jit_energy(params, _strain(base, eps))

    worst = 0.0
    for name, d in dirs:
        dj = jnp.asarray(h * d)
        fd = (float(energy(dj)) - float(energy(-dj))) / (2 * h)
        analytic = volume * float(np.sum(sigma * d))
        worst = max(worst, abs(fd))
        err = abs(fd - analytic)
        bound = tol * max(1.0, abs(analytic))
        if not err <= bound:
            raise AssertionError(
                f"stress does not match finite strains along {name}: dE/dε by central "
                f"differences (h={h:g}) is {fd:.10e} eV but V σ:D is {analytic:.10e} "
                f"(|error| {err:.3e} > {bound:.3e}); the stress is not (1/V) ∂E/∂ε"
            )
    if not worst > 10 * tol:
        raise AssertionError("stress check would pass vacuously: straining changes E by less "
                             f"than {10 * tol:g} eV per unit strain")


# ---------------------------------------------------------------------------------------------
# Padding, extensivity, cutoff
# ---------------------------------------------------------------------------------------------


def assert_padding_invariance(
    potential_or_energy_fn: Potential | EnergyFn,
    params,
    system: System,
    *,
    extra_atoms: int = 3,
    extra_edges: int = 7,
    adversarial: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert extra padding slots leave E and the real atoms' forces unchanged.

    The structure is padded with ``extra_atoms`` atom slots and ``extra_edges`` edge slots.
    The gradient with respect to the padding positions is taken *without* masking and must be
    exactly zero (and finite). With ``adversarial=True`` a second copy puts every padding atom
    on top of the first real atom with its species, and gives padding edges non-zero image
    shifts: a potential that trusts anything but ``atom_mask`` / ``edge_mask`` changes (or
    produces NaNs).

    Args:
      potential_or_energy_fn: a :class:`jaxpot.Potential` or ``energy_fn(params, system)``.
      params: its parameters.
      system: one unbatched structure with edges, real atoms first.
      extra_atoms, extra_edges: padding slots to add (both must be ≥ 1).
      adversarial: also test the poisoned padding described above.
      rtol, atol: tolerances (default :func:`default_tolerances`).

    Raises:
      AssertionError: E or the real forces change, a padding gradient is non-zero or NaN, or
        the forces are ~0.
    """
    energy_fn, _ = _resolve(potential_or_energy_fn, None)
    rtol, atol = _tolerances(system, rtol, atol)
    if extra_atoms < 1 or extra_edges < 1:
        raise ValueError("padding check needs extra_atoms >= 1 and extra_edges >= 1")
    mask = _real(system)
    n = int(mask.sum())
    e0, g0 = _raw_gradient(energy_fn, params, system)
    _assert_nontrivial_forces(-g0, mask, atol, "padding check")
    base = system.pad(system.n_atoms + extra_atoms, system.n_edges + extra_edges)
    variants = [("zero padding", base)]
    if adversarial:
        n_pad = base.n_atoms
        pad_rows = jnp.arange(n_pad) >= n
        poisoned = base.replace(
            positions=jnp.where(pad_rows[:, None], base.positions[0][None, :], base.positions),
            species=jnp.where(pad_rows, base.species[0], base.species),
            masses=jnp.where(pad_rows, base.masses[0], base.masses),
            shifts=jnp.where(base.edge_mask[:, None], base.shifts, 1.0),
        )
        variants.append(("padding atoms on top of atom 0, padding edges with shifts", poisoned))
    for label, padded in variants:
        e1, g1 = _raw_gradient(energy_fn, params, padded)
        _assert_close(f"energy with {label} (eV)", e1, e0, rtol, atol * max(1, n))
        _assert_close(f"forces of real atoms with {label} (eV/Å)", -_np(g1)[:n], -_np(g0)[:n],
                      rtol, atol)
        pad_grad = _np(g1)[n:]
        if not np.all(pad_grad == 0.0):
            raise AssertionError(
                f"with {label}: the gradient with respect to padding positions is not exactly "
                f"zero (max |dE/dx| = {np.nanmax(np.abs(pad_grad)):.3e}, NaN: "
                f"{bool(np.isnan(pad_grad).any())}); padding must be masked before use"
            )


def assert_supercell_extensivity(
    potential_or_energy_fn: Potential | EnergyFn,
    params,
    system: System,
    *,
    reps: Sequence[int] = (2, 2, 2),
    cutoff: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert a ``reps`` supercell has ``prod(reps)`` times the energy, the same forces and stress.

    The supercell is built with ``ase.Atoms.repeat`` (host side) and gets fresh edges for
    ``cutoff``. Repetitions along non-periodic directions are set to 1.

    Args:
      potential_or_energy_fn: a :class:`jaxpot.Potential` or ``energy_fn(params, system)``.
      params: its parameters.
      system: one unbatched structure, periodic along at least one direction.
      reps: repetitions along the three lattice vectors.
      cutoff: Å (default: the potential's; required for a bare energy function).
      rtol, atol: tolerances (default :func:`default_tolerances`).

    Raises:
      AssertionError: energy, forces or stress are not extensive/intensive as they should be,
        or the energy is zero.
      ValueError: no periodic direction, or no cutoff known.
    """
    energy_fn, cutoff = _resolve(potential_or_energy_fn, cutoff)
    rtol, atol = _tolerances(system, rtol, atol)
    if cutoff is None:
        raise ValueError("supercell check needs cutoff= to build the supercell's edges")
    pbc = np.asarray(system.pbc, bool)
    if not pbc.any():
        raise ValueError("supercell check needs a structure periodic along some direction")
    reps = tuple(int(r) if p else 1 for r, p in zip(reps, pbc, strict=True))
    n_rep = int(np.prod(reps))
    if n_rep < 2:
        raise ValueError(f"supercell check needs more than one copy (reps={reps})")
    mask = _real(system)
    n = int(mask.sum())
    big = System.from_ase(system.to_ase().repeat(reps), cutoff=float(cutoff),
                          dtype=system.positions.dtype)
    e0, f0, s0 = _efs(energy_fn, params, system)
    if not abs(float(e0)) > _NONTRIVIAL_FACTOR * atol:
        raise AssertionError(f"supercell check would pass vacuously: E = {float(e0):.3e} eV")
    e1, f1, s1 = _efs(energy_fn, params, big)
    _assert_close(f"energy of the {reps} supercell (eV), expected {n_rep} x E", e1,
                  n_rep * _np(e0), rtol, atol * n * n_rep)
    _assert_close(f"forces in the {reps} supercell (eV/Å), expected tiled F",
                  _np(f1).reshape(n_rep, n, 3), np.broadcast_to(_np(f0)[:n], (n_rep, n, 3)),
                  rtol, atol)
    if _has_volume(system):
        _assert_close(f"stress of the {reps} supercell (eV/Å³)", s1, s0, rtol, atol)


def assert_cutoff_smoothness(
    potential_or_energy_fn: Potential | EnergyFn,
    params,
    system: System | None = None,
    *,
    orders: Sequence[int] = (0, 1),
    species: tuple[int, int] | None = None,
    cutoff: float | None = None,
    width: float = 0.5,
    n_points: int = 64,
    delta: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert the dimer energy and its first derivatives are continuous at the cutoff.

    A dimer is scanned over ``[r_c − width, r_c + width]``. For each derivative order ``k`` in
    ``orders`` (0 = E, 1 = dE/dr, 2 = d²E/dr², ...) the left and right limits at ``r_c``
    (evaluated at ``r_c ∓ δ``) must agree within ``atol + rtol·scale_k + 20 δ·slope_k``, where
    ``scale_k`` is the largest ``|d^kE/dr^k|`` inside the scan and ``slope_k`` its steepest
    change. Beyond ``r_c`` the energy must be constant and every derivative zero. Since the
    energy is constant past the cutoff, continuity of order k means the k-th derivative vanishes
    at ``r_c``: pass ``orders=(0,)`` for a potential that is only shifted (such as
    ``lennard_jones(shift=True)``, whose force jumps), ``(0, 1)`` for smooth cutoffs, ``(0, 1, 2)``
    for cutoffs with continuous curvature.

    Args:
      potential_or_energy_fn: a :class:`jaxpot.Potential` or ``energy_fn(params, system)``.
      params: its parameters.
      system: optional template; the dimer uses the species of its first two real atoms and
        its float dtype.
      orders: derivative orders that must be continuous.
      species: ``(Z1, Z2)`` of the dimer (overrides ``system``).
      cutoff: Å (default: the potential's; required for a bare energy function).
      width: half-width of the scan, Å.
      n_points: grid points on each side.
      delta: distance from ``r_c`` of the one-sided limits (default ``1e-7 r_c`` in float64,
        ``1e-4 r_c`` in float32).
      rtol, atol: jump tolerances (default ``1e-6, 1e-12`` in float64; ``1e-3, 1e-6`` in
        float32).

    Raises:
      AssertionError: a derivative jumps at ``r_c``, the dimer still interacts beyond ``r_c``,
        or it does not interact within the scan at all.
    """
    energy_fn, cutoff = _resolve(potential_or_energy_fn, cutoff)
    if cutoff is None:
        raise ValueError("cutoff smoothness check needs cutoff=")
    rc = float(cutoff)
    if system is not None:
        dtype = system.positions.dtype
        if species is None:
            spc = np.asarray(system.species)[_real(system)]
            species = (int(spc[0]), int(spc[1] if spc.size > 1 else spc[0]))
    else:
        dtype = jnp.zeros(()).dtype
    if species is None:
        raise ValueError("give species=(Z1, Z2) or a template system")
    f64 = jnp.dtype(dtype) == jnp.float64
    rtol = (1e-6 if f64 else 1e-3) if rtol is None else rtol
    atol = (1e-12 if f64 else 1e-6) if atol is None else atol
    delta = ((1e-7 if f64 else 1e-4) * rc) if delta is None else delta
    dimer = System.from_arrays([[0.0, 0.0, 0.0], [rc, 0.0, 0.0]], list(species),
                               cutoff=rc + 2 * width, dtype=dtype)
    if int(np.sum(np.asarray(dimer.edge_mask))) != 2:
        raise AssertionError("internal: the dimer should have two edges")

    def e_of_r(r):
        x = jnp.zeros((2, 3), dtype).at[1, 0].set(r)
        return energy_fn(params, dimer.replace(positions=x))

    derivs = [e_of_r]
    for _ in range(max(orders)):
        derivs.append(jax.grad(derivs[-1]))
    wanted = sorted(set(orders) | {0})
    inner = np.linspace(rc - width, rc - width / n_points, n_points)
    outer = np.linspace(rc + width / n_points, rc + width, n_points)
    grid = np.concatenate([inner, outer, [rc - delta, rc + delta, rc + width]])
    # One compiled function evaluates every order at every point.
    values = jax.jit(jax.vmap(lambda r: jnp.stack([derivs[k](r) for k in wanted])))(
        jnp.asarray(grid, dtype))
    values = _np(values)
    _assert_finite("dimer energy derivatives in the scan", values)
    far = float(values[-1, 0])
    e_in = values[:n_points, 0]
    e_bound = atol + rtol * float(np.max(np.abs(e_in)))
    if not np.max(np.abs(e_in - far)) > 10 * e_bound:
        raise AssertionError(
            f"cutoff check would pass vacuously: the dimer energy varies by less than "
            f"{10 * e_bound:.3e} eV within {width} Å inside r_c={rc}"
        )

    for col, k in enumerate(wanted):
        if k not in orders:
            continue
        gin = values[:n_points, col]
        gout = values[n_points:2 * n_points, col]
        left, right = float(values[2 * n_points, col]), float(values[2 * n_points + 1, col])
        scale = float(np.max(np.abs(gin)))
        slope = float(np.max(np.abs(np.diff(gin)) / np.diff(inner)))
        bound = atol + rtol * scale + 20 * delta * slope
        expected_out = far if k == 0 else 0.0
        beyond = float(np.max(np.abs(gout - expected_out)))
        if not beyond <= bound:
            raise AssertionError(
                f"d^{k}E/dr^{k} of the dimer is not {'constant' if k == 0 else 'zero'} beyond "
                f"the cutoff r_c={rc} Å (deviation {beyond:.3e} > {bound:.3e}): pairs beyond "
                "the cutoff still contribute"
            )
        jump = abs(left - right)
        if not jump <= bound:
            name = "E" if k == 0 else f"d^{k}E/dr^{k}"
            raise AssertionError(
                f"{name} of the dimer jumps at the cutoff r_c={rc} Å: {left:.6e} just inside, "
                f"{right:.6e} just outside (|jump| {jump:.3e} > {bound:.3e}); "
                f"order {k} is not continuous"
            )


# ---------------------------------------------------------------------------------------------
# Energy conservation
# ---------------------------------------------------------------------------------------------


def _velocity_verlet(energy_fn, forces_fn, params, system, cutoff, skin, momenta):
    """A runner ``(dt, n_frames, substeps) -> (total, potential)`` energies in eV.

    Velocity Verlet from ``(system.positions, momenta)``; energies are recorded every
    ``substeps`` steps (``[n_frames + 1]``, including t = 0). ``dt`` and ``substeps`` are
    traced, so halving dt and doubling substeps reuses the compiled loop and compares the two
    runs at the same times.

    Edges: first with a fixed list built for ``cutoff + skin`` (cheap to compile); if some atom
    moved more than ``skin / 2`` the run is redone with a jitted :mod:`jaxpot.neighbors` list
    (rebuilt as needed; on overflow redone with more capacity). Without a cutoff the edges of
    ``system`` are used as they are.
    """
    mask = system.atom_mask[:, None]
    masses = system.masses[:, None]
    if forces_fn is None:
        def ef(s):
            e, g = _raw_gradient(energy_fn, params, s)
            return e, jnp.where(mask, -g, 0.0)
    else:
        def ef(s):
            return energy_fn(params, s), jnp.where(mask, forces_fn(params, s), 0.0)

    def kinetic(p):
        return 0.5 * jnp.sum(jnp.where(mask, p * p / masses, 0.0))

    def make_run(base):
        def attach(nbrs, x):
            s = base.replace(positions=x)
            if nbrs is None:
                return None, s
            nbrs = _nb.update(nbrs, s)
            return nbrs, nbrs.attach(s)

        @jax.jit
        def run(nbrs, dt, substeps, frames):
            x0 = base.positions
            nbrs, s = attach(nbrs, x0)
            e0, f0 = ef(s)

            def step(_, carry):
                x, p, f, e, nb, d2 = carry
                p = p + 0.5 * dt * f
                x = x + dt * jnp.where(mask, p / masses, 0.0)
                nb, s = attach(nb, x)
                e, f = ef(s)
                p = p + 0.5 * dt * f
                d2 = jnp.maximum(d2, jnp.max(jnp.sum((x - x0) ** 2, axis=-1)))
                return x, p, f, e, nb, d2

            def frame(carry, _):
                carry = jax.lax.fori_loop(0, substeps, step, carry)
                return carry, (carry[3] + kinetic(carry[1]), carry[3])

            init = (x0, momenta, f0, e0, nbrs, jnp.zeros((), x0.dtype))
            carry, (tot, pot) = jax.lax.scan(frame, init, frames)
            return (jnp.concatenate([(e0 + kinetic(momenta))[None], tot]),
                    jnp.concatenate([e0[None], pot]), carry[4], jnp.sqrt(carry[5]))

        return run

    fixed = system if cutoff is None else system.with_edges(float(cutoff) + skin)
    run_fixed = make_run(fixed)
    run_listed = make_run(system)

    def runner(dt, n_frames, substeps=1):
        frames = jnp.zeros((n_frames, 0))
        dt = jnp.asarray(dt, system.positions.dtype)
        tot, pot, _, moved = run_fixed(None, dt, substeps, frames)
        if cutoff is None or float(moved) < 0.5 * skin:
            return _np(tot), _np(pot)
        # Overflow → reallocate for the starting structure → redo the whole run.
        keeper = NeighborKeeper(float(cutoff), skin, max_attempts=4, growth=2.0)
        _, (tot, pot, _, _) = run_checked(
            lambda nbrs: run_listed(nbrs, dt, substeps, frames), keeper.allocate(system),
            keeper, neighbors_of=lambda out: out[2], system_of=lambda _: system,
            with_neighbors=lambda _, nbrs: nbrs, where="during the NVE check")
        return _np(tot), _np(pot)

    return runner


def _energies_from_run(out) -> tuple[np.ndarray, np.ndarray | None]:
    log = getattr(out, "log", out)
    if isinstance(log, dict):
        tot = _np(log["total_energy_ev"])
        pot = log.get("potential_energy_ev")
        return tot, (None if pot is None else _np(pot))
    return _np(out), None


def assert_nve_conservation(
    potential_or_energy_fn: Potential | EnergyFn,
    params,
    system: System,
    *,
    run_fn: Callable[[float, int], Any] | None = None,
    forces_fn: Callable[[Any, System], jax.Array] | None = None,
    dt_fs: float = 1.0,
    steps: int = 1000,
    temperature_kelvin: float = 50.0,
    seed: int = 0,
    max_drift_per_atom: float = 1e-4,
    check_dt_scaling: bool = True,
    scaling_range: tuple[float, float] = (3.0, 5.0),
    skin: float = 1.0,
    cutoff: float | None = None,
) -> None:
    """Assert NVE dynamics conserve the total energy, with the O(dt²) error of velocity Verlet.

    The run of ``steps`` steps at ``dt_fs`` must keep ``max_t |E(t) − E(0)| / n_atoms`` below
    ``max_drift_per_atom``. With ``check_dt_scaling`` a second run over the same time at
    ``dt_fs / 2`` (same initial state) must shrink that error by a factor within
    ``scaling_range`` (≈ 4 for a second-order integrator and a smooth potential; a force that
    jumps at the cutoff, or a non-conservative force, spoils it).

    The runs come from ``run_fn(dt_fs, steps)`` when given (returning an ``MDResult``, its
    ``log`` dict with ``"total_energy_ev"`` [and ``"potential_energy_ev"``], or an array of
    total energies in eV; it must start from the same state every call). Otherwise this function
    runs velocity Verlet itself: Maxwell–Boltzmann momenta at ``temperature_kelvin`` (zero total
    momentum), a jitted ``lax.scan`` and a jaxpot neighbour list with a Verlet ``skin``
    (rebuilt as atoms move; on overflow the run is redone with more capacity). jaxpot writes this
    small integrator rather than calling ``jaxpot.md`` so that the check depends only on the
    potential.

    Args:
      potential_or_energy_fn: a :class:`jaxpot.Potential` or ``energy_fn(params, system)``.
      params: its parameters.
      system: one unbatched structure with masses.
      run_fn: optional MD driver, see above.
      forces_fn: ``(params, system) -> forces`` used by the built-in integrator (default −∇E).
      dt_fs: time step, fs.
      steps: number of steps at ``dt_fs``.
      temperature_kelvin: initial temperature, K.
      seed: seed of the initial momenta.
      max_drift_per_atom: bound on ``max |E(t) − E(0)| / n_atoms``, eV.
      check_dt_scaling: also test the dt² scaling.
      scaling_range: accepted ratio ``error(dt) / error(dt/2)``.
      skin: Verlet skin of the built-in neighbour list, Å.
      cutoff: Å (default: the potential's; without one the edges of ``system`` stay fixed,
        correct only for short runs of systems whose edges include a skin).

    Raises:
      AssertionError: the energy drifts, the potential energy does not change (nothing
        happens), or the error does not scale as dt².
    """
    energy_fn, cutoff = _resolve(potential_or_energy_fn, cutoff)
    mask = _real(system)
    n = int(mask.sum())

    if run_fn is None:
        key = jax.random.key(seed)
        kT = temperature_kelvin * units.kB
        m = system.masses[:, None]
        p = jnp.sqrt(m * kT) * jax.random.normal(key, system.positions.shape,
                                                 system.positions.dtype)
        p = jnp.where(system.atom_mask[:, None], p, 0.0)
        total_mass = jnp.sum(jnp.where(system.atom_mask, system.masses, 0.0))
        v_com = jnp.sum(p, axis=0) / total_mass
        p = jnp.where(system.atom_mask[:, None], p - m * v_com[None, :], 0.0)

        runner = _velocity_verlet(energy_fn, forces_fn, params, system, cutoff, skin, p)

        def run(dt_fs_, substeps):
            return runner(dt_fs_ * units.fs, steps, substeps)
    else:
        def run(dt_fs_, substeps):
            tot, pot = _energies_from_run(run_fn(dt_fs_, steps * substeps))
            return tot[::substeps], (None if pot is None else pot[::substeps])

    tot, pot = run(dt_fs, 1)
    _assert_finite("total energy along the NVE run", tot)
    err = float(np.max(np.abs(tot - tot[0])))
    drift = err / n
    if pot is not None:
        swing = float(np.max(np.abs(pot - pot[0])))
        if not swing > 10 * err:
            raise AssertionError(
                f"NVE check: the potential energy changes by only {swing:.3e} eV while the "
                f"total energy changes by {err:.3e} eV; either nothing moves (raise the "
                "temperature) or the total energy is not conserved"
            )
    if not drift <= max_drift_per_atom:
        raise AssertionError(
            f"NVE energy not conserved: max |E(t) - E(0)| / n_atoms = {drift:.3e} eV over "
            f"{steps} steps of {dt_fs} fs exceeds {max_drift_per_atom:.1e} eV"
        )
    if check_dt_scaling:
        tot2, _ = run(dt_fs / 2, 2)
        _assert_finite("total energy along the NVE run at dt/2", tot2)
        err2 = float(np.max(np.abs(tot2 - tot2[0])))
        floor = 1e3 * np.finfo(tot.dtype).eps * max(1.0, float(np.max(np.abs(tot))))
        if not err2 > floor:
            raise AssertionError(
                f"NVE check: the energy error at dt/2 ({err2:.3e} eV) is at rounding level "
                f"({floor:.1e}); use a larger dt_fs or temperature to measure the dt² scaling"
            )
        ratio = err / err2
        lo, hi = scaling_range
        if not lo <= ratio <= hi:
            raise AssertionError(
                f"NVE energy error does not scale as dt²: error {err:.3e} eV at dt={dt_fs} fs "
                f"and {err2:.3e} eV at dt/2, ratio {ratio:.2f} not in [{lo}, {hi}] "
                "(a force discontinuity or non-conservative forces?)"
            )
