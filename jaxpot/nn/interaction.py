"""Equivariant convolution shared by the message-passing models (NequIP, MACE).

One convolution maps node features ``h`` (an IrrepsArray) to aggregated messages

    m_i = (1/norm) Σ_{j ∈ N(i)} R(r_ij) ⊙ (W h_j ⊗ Y(r̂_ij))

where ``W`` is a linear "up" layer to ``C`` channels per irrep, ``Y`` the spherical harmonics
of the edge direction, ``⊗`` the channel-wise tensor product of
:mod:`jaxpot.nn.tensor_product` and ``R`` the radial MLP giving one weight per edge, channel and
path. Messages are summed with ``jax.ops.segment_sum`` over receivers (padding edges point at
the sentinel ``n_atoms`` and are dropped; their radial weights are exactly 0 anyway) and divided
by ``norm`` (``avg_num_neighbors`` or its square root).
"""

from __future__ import annotations

from collections.abc import Sequence

import e3nn_jax as e3nn
import flax.linen as nn
import jax

from jaxpot.nn.radial import RadialMLP
from jaxpot.nn.tensor_product import channelwise_conv, channelwise_plan, split_channels, to_irreps

__all__ = ["EdgeConvolution"]


class EdgeConvolution(nn.Module):
    """Linear up, weighted channel-wise tensor product on edges, aggregation.

    Attributes:
      channels: C, channels per irrep on edges.
      irreps_sh: spherical-harmonics irreps, e.g. ``"0e+1o+2e"``.
      filter_ir_out: irreps the messages may contain.
      radial_hidden: hidden widths of the radial MLP.
      norm: messages are divided by this (e.g. ``sqrt(avg_num_neighbors)``).
    """

    channels: int
    irreps_sh: str
    filter_ir_out: str
    radial_hidden: Sequence[int]
    norm: float

    @nn.compact
    def __call__(self, h: e3nn.IrrepsArray, sh: jax.Array, radial: jax.Array,
                 senders: jax.Array, receivers: jax.Array) -> e3nn.IrrepsArray:
        """Convolve.

        Args:
          h: ``[n_atoms, irreps]`` node features.
          sh: ``[n_edges, irreps_sh.dim]`` spherical harmonics (component normalisation).
          radial: ``[n_edges, num_basis]`` radial embedding, 0 on padding/outside edges.
          senders, receivers: ``[n_edges]`` int; padding = ``n_atoms``.

        Returns:
          ``[n_atoms, ...]`` aggregated messages; irrep ``l`` has multiplicity ``C × paths``.
        """
        n_atoms = h.shape[0]
        n_edges = sh.shape[0]
        assert radial.shape[0] == n_edges and senders.shape == (n_edges,)
        irs = sorted({ir for _, ir in h.irreps})
        up = e3nn.flax.Linear(e3nn.Irreps([(self.channels, ir) for ir in irs]),
                              force_irreps_out=True, name="linear_up")(h)
        xs, irreps_x = split_channels(up)  # [[n, 2l+1, C], ...]
        plan = channelwise_plan(str(irreps_x), self.irreps_sh, self.filter_ir_out)
        weights = RadialMLP(tuple(self.radial_hidden), self.channels * plan.num_paths,
                            name="radial_mlp")(radial)
        dtype = xs[0].dtype
        groups = channelwise_conv(plan, xs, sh.astype(dtype), weights.astype(dtype), senders,
                                  receivers, n_atoms)
        return to_irreps(plan, [g / self.norm for g in groups])
