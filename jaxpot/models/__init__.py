"""Learned model families (registered as potentials on import)."""
