"""Physics terms: pair potentials (Lennard-Jones, Morse).

Each factory returns a :class:`jaxpot.Potential` whose parameters live in ``params`` so they
can be fitted with ``jax.grad``.
"""

from jaxpot.potentials.pair import lennard_jones, morse, pair_energy

__all__ = ["lennard_jones", "morse", "pair_energy"]
