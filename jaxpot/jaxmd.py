"""JAX MD interop, both ways.

**jaxpot → JAX MD.** :func:`to_jax_md` turns a jaxpot :class:`~jaxpot.Potential` and its
parameters into what JAX MD's simulators and minimisers expect: ``energy_fn(R, neighbor=...,
**kwargs)``, a matching ``neighbor_fn`` (``jax_md.partition.neighbor_list``, Dense format, the
model's cutoff, a Verlet skin as ``dr_threshold``), and the ``displacement_fn`` / ``shift_fn``
of ``space.periodic_general`` in real (Cartesian) coordinates. The energy function builds the
jaxpot edges from the neighbour list it is *given* at every call (senders from ``idx``, image
shifts by the minimum-image convention at the current positions), so the naive failure —
closing over one :class:`~jaxpot.System` whose edges were found once and silently freeze while
atoms move — cannot happen: there is no edge list to close over, and calling ``energy_fn``
without ``neighbor=`` raises. A ``box=`` keyword (JAX MD's NPT passes one; columns are
lattice vectors, JAX MD's convention) replaces the cell.

Minimum image is JAX MD's convention: the cell must be wider than twice ``cutoff + skin`` in
every direction (checked on the host). For smaller cells use jaxpot's own drivers, whose lists
carry explicit image shifts.

**JAX MD → jaxpot.** :func:`from_jax_md` wraps a JAX MD energy function
``energy_fn(R, **kwargs)`` (for example ``jax_md.energy.lennard_jones_pair(displacement)`` with
a ``space.periodic_general`` displacement in real coordinates) as a jaxpot ``Potential``: the
energy is ``energy_fn(system.positions, box=system.cell.T)``, so forces come from jaxpot's
usual derivatives. It ignores jaxpot's edges (JAX MD finds its own pairs) and does not know
jaxpot's padding: use it on unpadded systems. The stress is not supported: JAX MD's
``space.transform`` carries a custom derivative that does not follow a change of ``box``, so
jaxpot's strain derivative through the ``box`` keyword disagrees with a finite difference
(measured: 8 % on an argon crystal); use JAX MD's ``quantity.stress`` for that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition, space

from jaxpot.potential import Potential
from jaxpot.system import System

__all__ = ["JaxMDFunctions", "edges_from_neighbor_list", "from_jax_md", "to_jax_md"]

_HI = jax.lax.Precision.HIGHEST


class JaxMDFunctions(NamedTuple):
    """What :func:`to_jax_md` returns (JAX MD's names).

    Attributes:
      energy_fn: ``(R [n, 3] Å, neighbor=NeighborList, box=None) -> energy`` (eV).
      neighbor_fn: JAX MD's ``NeighborListFns`` (``allocate(R)``, ``update(R, nbrs)``).
      displacement_fn, shift_fn: ``space.periodic_general(cell.T, fractional_coordinates=
        False)``.
      box: ``[3, 3]`` JAX MD box (columns are lattice vectors), Å.
      masses: ``[n, 1]`` amu, for ``init_fn(..., mass=masses)``.
    """

    energy_fn: Callable[..., jax.Array]
    neighbor_fn: Any
    displacement_fn: Callable
    shift_fn: Callable
    box: jax.Array
    masses: jax.Array


def edges_from_neighbor_list(positions, cell, idx):
    """jaxpot edges from a JAX MD Dense neighbour list (minimum image).

    Args:
      positions: ``[n, 3]`` Å (wrapped or not).
      cell: ``[3, 3]`` rows are lattice vectors, Å.
      idx: ``[n, k]`` int neighbour indices, ``n`` in empty slots.

    Returns:
      ``(senders [n·k], receivers [n·k], shifts [n·k, 3])`` in jaxpot's convention: the edge
      vector ``x_j − x_i + S·cell`` is the minimum image of ``x_j − x_i``; empty slots point at
      the sentinel ``n`` with zero shift.
    """
    n, k = idx.shape
    senders = idx.reshape(-1).astype(jnp.int32)
    real = senders < n
    receivers = jnp.where(real, jnp.repeat(jnp.arange(n, dtype=jnp.int32), k), n)
    inv = jnp.linalg.inv(cell)
    frac = jnp.matmul(positions, inv, precision=_HI)
    d = frac[jnp.minimum(senders, n - 1)] - frac[jnp.minimum(receivers, n - 1)]
    shifts = jnp.where(real[:, None], -jnp.round(d), 0.0)
    return senders, receivers, shifts.astype(positions.dtype)


def to_jax_md(potential: Potential, params, system: System, *, skin: float = 0.5,
              capacity_multiplier: float = 1.25) -> JaxMDFunctions:
    """A jaxpot model as JAX MD functions (see the module docstring).

    Args:
      potential, params: the model and its parameters.
      system: the structure (unbatched, unpadded, periodic in every direction): species,
        masses and the cell come from it; positions are JAX MD's ``R``.
      skin: Verlet skin, Å (JAX MD's ``dr_threshold``; the list holds pairs within
        ``cutoff + skin``).
      capacity_multiplier: JAX MD's head-room of the neighbour capacity.

    Returns:
      A :class:`JaxMDFunctions`.

    Raises:
      ValueError: a padded or non-periodic system, or a cell narrower than
        ``2 (cutoff + skin)`` (minimum image would miss pairs).

    Example:
      >>> from jax_md import simulate  # doctest: +SKIP
      >>> fns = to_jax_md(pot, params, system)  # doctest: +SKIP
      >>> nbrs = fns.neighbor_fn.allocate(system.positions)  # doctest: +SKIP
      >>> init, apply = simulate.nve(fns.energy_fn, fns.shift_fn, dt)  # doctest: +SKIP
      >>> state = init(key, system.positions, kT, mass=fns.masses, neighbor=nbrs)  # doctest: +SKIP
    """
    cell = _check_system(potential, system, skin)
    box = jnp.asarray(cell.T, system.positions.dtype)
    displacement, shift = space.periodic_general(box, fractional_coordinates=False)
    neighbor_fn = partition.neighbor_list(
        displacement, box, potential.cutoff + skin, dr_threshold=skin,
        capacity_multiplier=capacity_multiplier, disable_cell_list=True,
        fractional_coordinates=False, format=partition.Dense)
    template = system

    def energy_fn(R, neighbor=None, box=None, **kwargs):
        if neighbor is None or not hasattr(neighbor, "idx"):
            raise TypeError("jaxpot energy_fn needs neighbor=<a JAX MD NeighborList> from "
                            "neighbor_fn.allocate/update at these positions; a fixed list "
                            "would freeze the edges")
        cell_now = template.cell if box is None else jnp.asarray(box).T
        senders, receivers, shifts = edges_from_neighbor_list(R, cell_now, neighbor.idx)
        moved = template.replace(positions=R, cell=cell_now, senders=senders,
                                 receivers=receivers, shifts=shifts)
        return potential.energy(params, moved)

    return JaxMDFunctions(energy_fn=energy_fn, neighbor_fn=neighbor_fn,
                          displacement_fn=displacement, shift_fn=shift, box=box,
                          masses=jnp.asarray(system.masses)[:, None])


def _check_system(potential, system: System, skin: float) -> np.ndarray:
    if np.ndim(system.positions) != 2:
        raise ValueError("to_jax_md: give one structure (unbatched)")
    if not np.all(np.asarray(system.atom_mask, bool)):
        raise ValueError("to_jax_md: the structure has padded atoms; JAX MD has no atom mask")
    if not np.all(np.asarray(system.pbc, bool)):
        raise ValueError("to_jax_md: the structure must be periodic along every direction "
                         "(space.periodic_general)")
    cell = np.asarray(system.cell, np.float64)
    width = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
    rc = float(potential.cutoff) + float(skin)
    if np.any(width < 2.0 * rc):
        raise ValueError(f"to_jax_md: the cell is {width.min():.3f} Å wide, less than twice "
                         f"cutoff + skin = {rc:.3f} Å; JAX MD's minimum image would miss pairs "
                         "(repeat the cell, or use jaxpot.md)")
    return cell


def from_jax_md(energy_fn: Callable[..., jax.Array], cutoff: float, *,
                name: str = "jax_md") -> Potential:
    """A JAX MD energy function as a jaxpot :class:`~jaxpot.Potential`.

    Args:
      energy_fn: ``(R [n, 3], box=[3, 3] columns) -> energy`` in eV; build it on
        ``space.periodic_general(box, fractional_coordinates=False)`` so that the ``box``
        keyword reaches its displacement (then jaxpot's stress is right too).
      cutoff: the interaction range, Å (for jaxpot's drivers' lists; the energy ignores them).
      name: the config name.

    Returns:
      A ``Potential`` whose ``energy(params, system)`` is ``energy_fn(positions,
      box=cell.T)``; ``params`` is None.
    """
    def init(key, system):
        return None

    def energy(params, system):
        return energy_fn(system.positions, box=system.cell.T)

    return Potential(init=init, energy=energy, cutoff=float(cutoff),
                     config={"name": name, "cutoff": float(cutoff)})
