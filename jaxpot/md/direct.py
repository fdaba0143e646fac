"""MD with directly predicted (non-conservative) forces.

:func:`direct_provider` wraps a potential that predicts ``"direct_forces"``
(:func:`jaxpot.models.direct_force.nequip_direct`) in a :class:`~jaxpot.md.ForceProvider` whose
forces are those predictions instead of ``−∇E``; the energy (and stress, the strain derivative
of the energy head) are still reported, so the log's total energy shows how far the dynamics is
from conserving anything. Pass it to :func:`jaxpot.md.simulate` in place of the potential::

    force = md.direct_provider(pot, params)
    res = md.simulate(force, None, system, ensemble="nve", dt_fs=2.0,
                      temperature_kelvin=600.0, steps=2000)

Every ensemble runs with it; a conservative potential's provider
(:func:`jaxpot.md.provider`) is unchanged. The forces need one forward pass per step and no
backward pass (the stress, asked for only at log points of periodic runs, adds one backward pass
with respect to the strain). Velocity Verlet with non-conservative forces is not symplectic for
any Hamiltonian: expect the total energy to drift (heat or cool) at a rate set by the curl of
the learned force field, not to oscillate around a constant; and unless the model projects out
the net force (``remove_net_force=True``) the total momentum drifts as well.
"""

from __future__ import annotations

import jax

from jaxpot import neighbors as nb
from jaxpot.md.forces import ForceOutput, ForceProvider
from jaxpot.models.direct_force import direct_energy_forces_stress, has_direct_forces
from jaxpot.neighbors import Neighbors
from jaxpot.potential import Potential
from jaxpot.system import System

__all__ = ["DirectForceProvider", "direct_provider"]


class DirectForceProvider(ForceProvider):
    """A :class:`~jaxpot.md.ForceProvider` whose forces are the model's ``"direct_forces"``.

    It also answers the few attributes :func:`jaxpot.md.simulate` reads from a potential
    (``cutoff``, ``config``, ``species``, ``local``), so it can be passed as ``simulate``'s
    potential with ``params=None``; its own params are then constants of the compiled loop.
    """

    __slots__ = ()

    @property
    def cutoff(self) -> float:
        """The potential's cutoff, Å."""
        return self.potential.cutoff

    @property
    def config(self) -> dict:
        """The potential's config."""
        return self.potential.config

    @property
    def species(self):
        """The potential's atomic numbers (or None)."""
        return self.potential.species

    @property
    def local(self) -> bool:
        """Whether the potential is local."""
        return self.potential.local

    def __call__(self, system: System, neighbors: Neighbors, positions: jax.Array, *,
                 stress: bool = False) -> ForceOutput:
        """Energy, direct forces (and stress) at ``positions`` with the list refreshed there."""
        moved = system.replace(positions=positions)
        neighbors = nb.update(neighbors, moved)
        e, f, sigma = direct_energy_forces_stress(self.potential, stress=stress)(
            self.params, neighbors.attach(moved))
        return ForceOutput(energy=e, forces=f, stress=sigma, neighbors=neighbors, atomic={})

    def evaluate(self, system: System) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(energy, direct forces, stress)`` of a system that carries its edges."""
        return direct_energy_forces_stress(self.potential)(self.params, system)


def direct_provider(potential: Potential, params) -> DirectForceProvider:
    """A force provider that integrates with ``potential``'s direct forces.

    Args:
      potential: a potential with a ``"direct_forces"`` per-atom output.
      params: its parameters.

    Raises:
      ValueError: the potential predicts no direct forces.
    """
    if not isinstance(potential, Potential):
        raise TypeError(f"direct_provider expects a jaxpot Potential, got "
                        f"{type(potential).__name__}")
    if not has_direct_forces(potential):
        raise ValueError(f"direct_provider: potential {potential.config.get('name')!r} "
                         "predicts no direct forces (outputs "
                         f"{tuple(potential.outputs)}); use md.provider for -∇E")
    return DirectForceProvider(potential, params)
