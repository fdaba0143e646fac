"""Flax (linen) building blocks for equivariant message-passing potentials.

- :mod:`~jaxpot.nn.radial`: Bessel basis, polynomial envelope, bias-free radial MLP, safe edge
  geometry.
- :mod:`~jaxpot.nn.embedding`: element lists, the atomic-number lookup table, species embedding.
- :mod:`~jaxpot.nn.tensor_product`: channel-wise tensor products of features with spherical
  harmonics.
- :mod:`~jaxpot.nn.interaction`: the equivariant edge convolution.
- :mod:`~jaxpot.nn.symmetric_contraction`: MACE's symmetric contraction.
- :mod:`~jaxpot.nn.atomic`: turning a per-atom network into a :class:`~jaxpot.Potential`.
"""

from jaxpot.nn import (
    atomic,
    embedding,
    interaction,
    radial,
    symmetric_contraction,
    tensor_product,
)
from jaxpot.nn.embedding import SpeciesEmbedding, check_species, species_table
from jaxpot.nn.interaction import EdgeConvolution
from jaxpot.nn.radial import RadialMLP, bessel_basis, polynomial_envelope, radial_embedding
from jaxpot.nn.symmetric_contraction import SymmetricContraction

__all__ = [
    "EdgeConvolution",
    "RadialMLP",
    "SpeciesEmbedding",
    "SymmetricContraction",
    "atomic",
    "bessel_basis",
    "check_species",
    "embedding",
    "interaction",
    "polynomial_envelope",
    "radial",
    "radial_embedding",
    "species_table",
    "symmetric_contraction",
    "tensor_product",
]
