"""jaxpot models inside LAMMPS (``fix external``, any number of MPI ranks): see
:mod:`jaxpot.lammps.coupling`."""

from jaxpot.lammps.coupling import JaxpotFix, ghost_shell, message_passing_layers

__all__ = ["JaxpotFix", "ghost_shell", "message_passing_layers"]
