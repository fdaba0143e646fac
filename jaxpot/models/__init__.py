"""Learned model families (registered as potentials on import)."""

from jaxpot.models.nequip import NequIPConfig, nequip, nequip_atomic_energies

__all__ = ["NequIPConfig", "nequip", "nequip_atomic_energies"]
