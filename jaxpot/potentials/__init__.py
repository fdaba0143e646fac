"""Physics terms: pair potentials (Lennard-Jones, Morse) and per-element energy offsets.

Each factory returns a :class:`jaxpot.Potential` whose parameters live in ``params`` so they
can be fitted with ``jax.grad``.
"""

from jaxpot.potentials.bmh import born_mayer_huggins
from jaxpot.potentials.dispersion import d3
from jaxpot.potentials.emt import emt
from jaxpot.potentials.offsets import element_refs_table, with_element_refs
from jaxpot.potentials.pair import lennard_jones, morse, pair_atomic_energies, pair_energy

__all__ = ["born_mayer_huggins", "d3", "element_refs_table", "emt", "lennard_jones", "morse",
           "pair_atomic_energies", "pair_energy", "with_element_refs"]
# The electrostatics live in the submodule jaxpot.potentials.coulomb (its factory has the same
# name, so it is not re-exported here: that would hide the module).
# Likewise the fitted-C6 factory jaxpot.potentials.dispersion.dispersion lives in its module.
