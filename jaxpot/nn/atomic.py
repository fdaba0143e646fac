"""Wrap a per-atom Flax network as a :class:`~jaxpot.Potential` (Σ of atomic energies).

The network maps one unbatched structure's edge vectors and species indices to a normalised
per-atom output ``ε_i``; the atomic energy is

    E_i = atomic_scale[z_i] · ε_i + atomic_shift[z_i]     (eV)

with per-species ``atomic_scale`` and ``atomic_shift`` held in the params, so training can set
them from data (e.g. shift = per-element reference energies from a linear fit, scale = the RMS
of force components). Param layout::

    params = {
        "net": {...},                    # Flax params of the network
        "atomic_scale": [n_species],     # eV, order of config.species
        "atomic_shift": [n_species],     # eV
    }

Per-atom features: a network that calls ``self.sow("intermediates", "features", x)`` with
``x`` ``[n_atoms, F]`` invariant features (and sets the class attribute
``sows_features = True``) also gets ``"features"`` in the model protocol's ``atomic`` output
(:meth:`AtomicModel.features`). Sowing is a no-op in a plain ``apply``, so energies are the
same, bit for bit, whether or not a network sows.

Padding atoms get ``E_i = 0``; a real atom of an element the model does not know raises
``ValueError`` when evaluated eagerly and gives ``NaN`` under ``jit`` (see
:mod:`jaxpot.nn.embedding`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.nn.embedding import check_species, species_index
from jaxpot.system import System

__all__ = ["AtomicModel", "atomic_model"]


@functools.lru_cache(maxsize=32)
def _jitted_init(net: nn.Module):
    # One compiled init per (hashable) network, shared by every potential built from the same
    # config: random initialisation compiles slowly on CPU.
    return jax.jit(net.init)


class AtomicModel:
    """``init``, ``atomic_energies`` and ``energy`` of a network with per-species scale/shift.

    Args:
      net: Flax module called as ``net(vectors, edge_mask, species, senders, receivers)`` →
        ``[n_atoms]`` normalised atomic outputs.
      table: ``[119]`` atomic number → species index table (``-1`` for unknown).
      scale, shift: initial per-species scale and shift (eV).
    """

    def __init__(self, net: nn.Module, table: np.ndarray, scale: float, shift: float):
        self.net = net
        self.table = np.asarray(table)
        self.num_species = int((self.table >= 0).sum())
        self.scale = float(scale)
        self.shift = float(shift)

    def _apply(self, net_params, system: System, idx, **kwargs):
        return self.net.apply(
            {"params": net_params}, system.edge_vectors(), system.edge_mask, idx,
            system.senders, system.receivers, **kwargs,
        )

    @property
    def sows_features(self) -> bool:
        """Whether the network sows per-atom ``"features"`` (see the module docstring)."""
        return bool(getattr(self.net, "sows_features", False))

    def init(self, key: jax.Array, system: System):
        """Params for ``system``'s dtype (see the module docstring for the layout)."""
        if np.ndim(system.positions) != 2:
            raise ValueError("init expects one unbatched System (take batch[0] for a batch)")
        if not isinstance(system.species, jax.core.Tracer):
            check_species(self.table, system)
        dtype = system.positions.dtype
        idx, _ = species_index(self.table, system.species, system.atom_mask)
        variables = _jitted_init(self.net)(key, system.edge_vectors(), system.edge_mask, idx,
                                           system.senders, system.receivers)
        net_params = jax.tree.map(lambda p: jnp.asarray(p, dtype), variables["params"])
        return {
            "net": net_params,
            "atomic_scale": jnp.full((self.num_species,), self.scale, dtype),
            "atomic_shift": jnp.full((self.num_species,), self.shift, dtype),
        }

    def atomic_energies(self, params, system: System) -> jax.Array:
        """``[n_atoms]`` atomic energies in eV; 0 on padding, NaN on unknown species (jit)."""
        idx, unknown = species_index(self.table, system.species, system.atom_mask)
        out = self._apply(params["net"], system, idx)
        e = out * params["atomic_scale"][idx] + params["atomic_shift"][idx]
        e = jnp.where(system.atom_mask, e, 0.0)
        return jnp.where(unknown, jnp.nan, e)

    def energy(self, params, system: System) -> jax.Array:
        """Total energy in eV (scalar)."""
        return jnp.sum(self.atomic_energies(params, system))

    def _energies_and_features(self, params, system: System):
        idx, unknown = species_index(self.table, system.species, system.atom_mask)
        out, state = self._apply(params["net"], system, idx, mutable=["intermediates"])
        e = out * params["atomic_scale"][idx] + params["atomic_shift"][idx]
        e = jnp.where(unknown, jnp.nan, jnp.where(system.atom_mask, e, 0.0))
        sown = state["intermediates"]["features"]
        x = sown[-1] if isinstance(sown, tuple) else sown
        x = jnp.where(system.atom_mask[:, None], x, 0.0)
        return e, jnp.where(unknown[:, None], jnp.nan, x)

    def features(self, params, system: System) -> jax.Array:
        """``[n_atoms, F]`` invariant per-atom features sown by the network (last sown value).

        0 on padding atoms, NaN on atoms of unknown species (under ``jit``).

        Raises:
          ValueError: the network sows no features.
        """
        if not self.sows_features:
            raise ValueError(f"{type(self.net).__name__} sows no per-atom features")
        return self._energies_and_features(params, system)[1]

    def protocol(self) -> dict:
        """The model-protocol fields of :class:`~jaxpot.Potential` this network provides.

        ``atomic`` returns ``{"energy": [n_atoms]}``, plus ``"features"`` ``[n_atoms, F]`` when
        the network sows them (one forward pass gives both); ``species`` lists the atomic
        numbers of the table (None when the table holds all 118 elements).
        """
        known = tuple(int(z) for z in np.flatnonzero(self.table >= 0))
        species = known if len(known) < 118 else None
        if self.sows_features:
            def atomic(params, system):
                e, x = self._energies_and_features(params, system)
                return {"energy": e, "features": x}

            return {"atomic": atomic, "outputs": ("energy", "features"), "species": species}

        def atomic_energy_only(params, system):
            return {"energy": self.atomic_energies(params, system)}

        return {"atomic": atomic_energy_only, "outputs": ("energy",), "species": species}


def atomic_model(net: nn.Module, table: np.ndarray, scale: float, shift: float) -> AtomicModel:
    """Build an :class:`AtomicModel` (see the module docstring)."""
    return AtomicModel(net, table, scale, shift)


AtomicEnergiesFn = Callable[[object, System], jax.Array]
