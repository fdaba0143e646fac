"""Force providers: what an integrator calls for energy, forces, stress and per-atom outputs.

An integrator does not close over ``(potential, params)``; it calls a :class:`ForceProvider`,
a small object holding the potential and its parameters::

    out = provider(system, neighbors, positions, stress=True)
    out.energy, out.forces, out.stress, out.neighbors      # eV, [n, 3] eV/Å, [3, 3] eV/Å³

The provider refreshes the neighbour list at ``positions`` (Verlet skin) before it evaluates the
potential, so the list and the forces always refer to the same coordinates. Per-atom outputs of
the model protocol (``potential.atomic``: ``"energy"``, and when the model declares them
``"charges"``, ``"features"``, ``"variance"``) come from :meth:`ForceProvider.atomic`, a forward
pass that MD calls only at log points (observers read them there).

Ensembles that need more than ``-∇E`` (a barostat reading the stress, a long-range term with its
own reciprocal-space sum, an ensemble of models) plug in here: anything with the same call
signature and :class:`ForceOutput` result drives the integrators of :mod:`jaxpot.md`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxpot import neighbors as nb
from jaxpot.neighbors import Neighbors
from jaxpot.potential import Potential, energy_and_forces, energy_forces_stress
from jaxpot.system import System

__all__ = ["ForceOutput", "ForceProvider", "provider"]

Params = Any


class ForceOutput(NamedTuple):
    """One force evaluation.

    Attributes:
      energy: scalar potential energy, eV.
      forces: ``[n_atoms, 3]`` eV/Å, exactly 0 on padding atoms.
      stress: ``[3, 3]`` virial stress, eV/Å³ (ASE sign, no kinetic part), or None when the
        call did not ask for it.
      neighbors: the neighbour list, updated at the evaluated positions (its sticky
        ``overflow`` flag says whether this evaluation can be trusted).
      atomic: dict of per-atom outputs (``"energy"`` ``[n_atoms]`` eV, ...); empty unless asked.
    """

    energy: jax.Array
    forces: jax.Array
    stress: jax.Array | None
    neighbors: Neighbors
    atomic: dict


class ForceProvider(NamedTuple):
    """Energy, forces, stress and per-atom outputs of a potential with fixed parameters.

    Build it with :func:`provider`. It is called inside jitted code (the MD step); it is not
    itself a pytree argument of ``jit`` (the potential holds functions), so build it inside the
    traced function from traced ``params`` when the parameters must not be baked in.

    Attributes:
      potential: the :class:`~jaxpot.Potential`.
      params: its parameters (a pytree).
    """

    potential: Potential
    params: Params

    @property
    def outputs(self) -> tuple[str, ...]:
        """Keys :meth:`atomic` returns (``()`` when the model has no per-atom outputs)."""
        return tuple(self.potential.outputs) if self.potential.atomic is not None else ()

    def __call__(self, system: System, neighbors: Neighbors, positions: jax.Array, *,
                 stress: bool = False) -> ForceOutput:
        """Evaluate at ``positions`` (``[n_atoms, 3]`` Å) with the list refreshed there.

        Args:
          system: the structure (species, cell, masks); its positions and edges are replaced.
          neighbors: the current list; updated (rebuilt only past half the skin).
          positions: ``[n_atoms, 3]`` Å, unwrapped.
          stress: also compute the virial stress (one backward pass either way).

        Returns:
          A :class:`ForceOutput` (``atomic`` empty).
        """
        moved = system.replace(positions=positions)
        neighbors = nb.update(neighbors, moved)
        full = neighbors.attach(moved)
        if stress:
            e, f, sigma = energy_forces_stress(self.potential)(self.params, full)
        else:
            (e, f), sigma = energy_and_forces(self.potential)(self.params, full), None
        return ForceOutput(energy=e, forces=f, stress=sigma, neighbors=neighbors, atomic={})

    def evaluate(self, system: System) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(energy, forces, stress)`` of a system that already carries its edges.

        The integrators use it once, for the state at step 0 (``__call__`` for every step
        after): a provider that changes the forces overrides both."""
        return energy_forces_stress(self.potential)(self.params, system)

    def atomic(self, system: System, neighbors: Neighbors) -> dict:
        """Per-atom outputs at ``system.positions`` with the edges of ``neighbors``.

        Returns:
          ``{}`` when the model declares none, else ``potential.atomic(params, system)``:
          ``"energy"`` ``[n_atoms]`` eV and the other declared keys, 0 on padding atoms.
        """
        if self.potential.atomic is None:
            return {}
        out = self.potential.atomic(self.params, neighbors.attach(system))
        mask = system.atom_mask
        return {k: jnp.where(mask.reshape(mask.shape + (1,) * (jnp.ndim(v) - 1)), v, 0)
                for k, v in out.items()}


def provider(potential: Potential | ForceProvider, params: Params = None) -> ForceProvider:
    """A :class:`ForceProvider` for ``potential`` at ``params``.

    Args:
      potential: a :class:`~jaxpot.Potential`, or a ready :class:`ForceProvider` (returned as
        is; ``params`` must then be None).
      params: the potential's parameters.

    Example:
      >>> from jaxpot import md, potentials
      >>> pot = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
      >>> md.provider(pot, pot.init(None, None)).outputs
      ('energy',)
    """
    if isinstance(potential, ForceProvider):
        if params is not None:
            raise ValueError("provider: a ForceProvider already carries its params; pass None")
        return potential
    if not isinstance(potential, Potential):
        raise TypeError(f"provider expects a jaxpot Potential, got {type(potential).__name__}")
    return ForceProvider(potential, params)
