"""Species handling: a fixed element list, an atomic-number lookup table, and the embedding.

Models are built for a fixed list of elements. :func:`species_table` turns it into a table of
119 entries mapping an atomic number to its index in the list, or ``-1`` for elements the model
does not know. Inside a model an unknown element on a *real* atom never yields a silently wrong
number: evaluated eagerly (concrete arrays) the model raises ``ValueError`` naming the atom;
under ``jit``/``vmap``/``grad`` (traced arrays) its atomic energy, and hence the total energy, is
NaN. Use :func:`check_species` on the host before jitting to get the error early.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["normalize_species", "species_table", "species_index", "check_species",
           "SpeciesEmbedding"]


def normalize_species(species: Sequence[str | int]) -> list[str]:
    """Element symbols for a list of symbols or atomic numbers (order kept, no duplicates).

    Raises:
      ValueError: empty list, unknown symbol or number, or a repeated element.
    """
    from ase.data import atomic_numbers, chemical_symbols

    if isinstance(species, str | int):
        species = [species]
    out = []
    for s in species:
        if isinstance(s, str):
            if s not in atomic_numbers or atomic_numbers[s] == 0:
                raise ValueError(f"unknown element symbol {s!r} in species list")
            sym = s
        else:
            z = int(s)
            if not 1 <= z <= 118:
                raise ValueError(f"unknown atomic number {z} in species list")
            sym = chemical_symbols[z]
        if sym in out:
            raise ValueError(f"element {sym} appears twice in the species list")
        out.append(sym)
    if not out:
        raise ValueError("the species list is empty")
    return out


def species_table(species: Sequence[str | int]) -> np.ndarray:
    """``[119]`` int32 table: atomic number -> index in ``species``, ``-1`` if absent."""
    from ase.data import atomic_numbers

    table = np.full(119, -1, np.int32)
    for i, sym in enumerate(normalize_species(species)):
        table[atomic_numbers[sym]] = i
    return table


def species_index(table: np.ndarray, numbers: jax.Array, atom_mask: jax.Array):
    """Map atomic numbers to species indices.

    Args:
      table: from :func:`species_table`.
      numbers: ``[n_atoms]`` int atomic numbers (0 on padding).
      atom_mask: ``[n_atoms]`` bool.

    Returns:
      ``(index [n_atoms] int32 clamped to >= 0, unknown [n_atoms] bool)``; ``unknown`` is True
      for real atoms whose element is not in the table.

    Raises:
      ValueError: eagerly (concrete inputs) when a real atom has an unknown element.
    """
    numbers = jnp.asarray(numbers)
    idx = jnp.asarray(table)[jnp.clip(numbers, 0, 118)]
    unknown = atom_mask & ((idx < 0) | (numbers < 0) | (numbers > 118))
    if not isinstance(unknown, jax.core.Tracer):
        _raise_unknown(table, np.asarray(numbers), np.asarray(unknown))
    return jnp.maximum(idx, 0), unknown


def _raise_unknown(table, numbers, unknown, where: str = "structure"):
    bad = np.nonzero(unknown)[0]
    if bad.size:
        from ase.data import chemical_symbols

        z = int(numbers[bad[0]])
        known = [chemical_symbols[i] for i in np.nonzero(table >= 0)[0]]
        name = chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"
        raise ValueError(
            f"{where}: atom {int(bad[0])} is {name} (atomic number {z}), which this model "
            f"was not built for (species: {', '.join(known)}); {bad.size} atom(s) affected"
        )


def check_species(table: np.ndarray, system, *, where: str = "structure") -> None:
    """Host-side check that every real atom of ``system`` has an element in ``table``.

    Works on one System or a batch (leading axis).

    Raises:
      ValueError: naming the first offending atom and its element.
    """
    numbers = np.asarray(system.species).reshape(-1)
    mask = np.asarray(system.atom_mask, bool).reshape(-1)
    idx = table[np.clip(numbers, 0, 118)]
    unknown = mask & ((idx < 0) | (numbers < 0) | (numbers > 118))
    _raise_unknown(table, numbers, unknown, where)


class SpeciesEmbedding(nn.Module):
    """Learnable embedding ``[n_species, features]`` of species indices (init std 1).

    Attributes:
      num_species: table size.
      features: embedding width.
    """

    num_species: int
    features: int

    @nn.compact
    def __call__(self, index: jax.Array) -> jax.Array:
        """``[n_atoms] int -> [n_atoms, features]``."""
        table = self.param("embedding", nn.initializers.normal(1.0),
                           (self.num_species, self.features))
        return table[index]
