"""Channel-wise ("uvu") tensor products of node features with edge spherical harmonics.

For an edge ``e`` with sender features ``x_c`` (channel ``c``, irrep ``l1``) and spherical
harmonics ``Y(r̂_e)`` (irreps ``l2``), each allowed path ``(l1, l2) -> l3`` produces

    m_{e,c,path} = w_{e,c,path} · (x_c ⊗ Y)_{l3}

with radial weights ``w`` (one per edge, channel and path, from the radial MLP). Channels are
never mixed on edges; the linear layers on nodes do that. The product is evaluated by first
contracting the (edge-only) spherical harmonics with the Clebsch–Gordan coefficients of every
path leaving ``l1``, ``A[e] = Y(r̂_e) · CG``, shape ``[n_edges, 2l1+1, K]``, and then
``x[e] · A[e]``: a handful of small fused multiply-adds per edge and channel instead of a dense
tensor product, which keeps the per-edge work and memory small on CPU.
"""

from __future__ import annotations

import dataclasses
import functools

import e3nn_jax as e3nn
import jax  # noqa: F401
import jax.numpy as jnp
import numpy as np

__all__ = ["ChannelwisePlan", "channelwise_plan", "channelwise_conv", "to_irreps", "split_channels"]


@dataclasses.dataclass(frozen=True)
class ChannelwisePlan:
    """Static description of a channel-wise tensor product (built once, hashable by id).

    Attributes:
      irreps_in: per-channel input irreps (each with multiplicity 1), e.g. ``0e+1o+2e``.
      irreps_sh: spherical-harmonics irreps, e.g. ``0e+1o+2e``.
      paths: ``(i_in, i_sh, ir_out)`` for every path kept.
      blocks: per input irrep ``(offset, d_in, cg [d_sh, d_in * K_i], K_i, groups)`` with
        ``groups = ((ir_out, first path, number of paths), ...)``.
      path_dims: ``(2 l_out + 1)`` per path, in output order.
      irreps_out: the output irreps, one entry per path, grouped by irrep with multiplicity
        ``channels × paths`` once :func:`to_irreps` regroups them.
    """

    irreps_in: e3nn.Irreps
    irreps_sh: e3nn.Irreps
    paths: tuple
    blocks: tuple
    path_dims: tuple

    @property
    def num_paths(self) -> int:
        return len(self.paths)

    @property
    def dim_out(self) -> int:
        return int(sum(self.path_dims))


@functools.lru_cache(maxsize=64)
def channelwise_plan(irreps_in: str, irreps_sh: str, filter_ir_out: str) -> ChannelwisePlan:
    """Enumerate the paths ``ir_in ⊗ ir_sh -> ir_out`` with ``ir_out`` in ``filter_ir_out``.

    Args:
      irreps_in: per-channel input irreps, multiplicity 1 each (a string, for caching).
      irreps_sh: spherical-harmonics irreps.
      filter_ir_out: irreps allowed in the output (multiplicities ignored).

    Paths are ordered by input irrep, then output irrep, then spherical-harmonics irrep, so that
    within an input block the paths sharing an output irrep are contiguous and their weights
    broadcast without gathers. Each Clebsch–Gordan block is scaled so that every output
    component has unit variance for unit-variance inputs (component normalisation).
    """
    ir_in = e3nn.Irreps(irreps_in)
    ir_sh = e3nn.Irreps(irreps_sh)
    keep = {ir for _, ir in e3nn.Irreps(filter_ir_out)}
    if any(mul != 1 for mul, _ in ir_in) or any(mul != 1 for mul, _ in ir_sh):
        raise ValueError("channelwise_plan expects multiplicity-1 irreps per channel")
    d_sh = ir_sh.dim
    sh_offsets = np.concatenate([[0], np.cumsum([ir.dim for _, ir in ir_sh])])
    paths, blocks, path_dims = [], [], []
    in_offset = 0
    for i_in, (_, ir1) in enumerate(ir_in):
        d1 = ir1.dim
        found: dict = {}
        for i_sh, (_, ir2) in enumerate(ir_sh):
            for ir3 in ir1 * ir2:
                if ir3 in keep:
                    found.setdefault(ir3, []).append(i_sh)
        cols, groups = [], []
        for ir3 in sorted(found):
            groups.append((ir3, len(paths), len(found[ir3])))
            for i_sh in found[ir3]:
                ir2 = ir_sh[i_sh].ir
                cg = np.asarray(e3nn.clebsch_gordan(ir1.l, ir2.l, ir3.l)) * np.sqrt(ir3.dim)
                full = np.zeros((d_sh, d1, ir3.dim))
                full[sh_offsets[i_sh]:sh_offsets[i_sh + 1]] = np.transpose(cg, (1, 0, 2))
                cols.append(full)
                paths.append((i_in, i_sh, ir3))
                path_dims.append(ir3.dim)
        if cols:
            mat = np.concatenate(cols, axis=-1)  # [d_sh, d1, K_i]
            blocks.append((in_offset, d1, mat.reshape(d_sh, -1), mat.shape[-1], tuple(groups)))
        in_offset += d1
    if not paths:
        raise ValueError(f"no tensor-product path {irreps_in} x {irreps_sh} -> {filter_ir_out}")
    return ChannelwisePlan(ir_in, ir_sh, tuple(paths), tuple(blocks), tuple(path_dims))


def split_channels(x: e3nn.IrrepsArray) -> tuple[list[jax.Array], e3nn.Irreps]:
    """``IrrepsArray [n, C×(ir1+ir2+...)]`` with one multiplicity C -> ``[[n, 2l+1, C], ...]``.

    Channels go last (the minor axis) so that per-channel work vectorises on CPU.
    Returns one array per irrep and the per-channel irreps (multiplicity 1 each).
    """
    muls = {mul for mul, _ in x.irreps}
    if len(muls) != 1:
        raise ValueError(f"expected a single multiplicity, got irreps {x.irreps}")
    # e3nn-jax keeps a structurally zero block as ``None`` (e.g. an irrep that no path of the
    # previous layer produced): materialise it.
    arrays = [jnp.zeros(x.shape[:-1] + (ir.dim, mul), x.dtype) if c is None
              else jnp.swapaxes(c, -1, -2) for c, (mul, ir) in zip(x.chunks, x.irreps, strict=True)]
    return arrays, e3nn.Irreps([(1, ir) for _, ir in x.irreps])


def _repeat(x: jax.Array, n: int, axis: int) -> jax.Array:
    # Broadcasting by concatenation: its transpose is a sum of slices (fused elementwise adds)
    # rather than a reduction over a small middle axis, which XLA:CPU runs slowly.
    return jnp.concatenate([x] * n, axis=axis) if n > 1 else x


def channelwise_conv(plan: ChannelwisePlan, xs: list[jax.Array], sh: jax.Array,
                     weights: jax.Array, senders: jax.Array, receivers: jax.Array,
                     n_atoms: int) -> list[jax.Array]:
    """Weighted channel-wise tensor product on edges, summed over receivers.

    Args:
      plan: from :func:`channelwise_plan`.
      xs: node features per input irrep, ``[[n_atoms, 2l+1, C], ...]`` (channels last).
      sh: ``[n_edges, irreps_sh.dim]`` spherical harmonics of the edge directions.
      weights: ``[n_edges, num_paths * C]`` path weights (path-major, channel-minor).
      senders, receivers: ``[n_edges]`` int; padding edges point at ``n_atoms`` (their
        weights must be 0; they are dropped by the sum).
      n_atoms: number of atom slots.

    Returns:
      One array per group of paths sharing input and output irreps, in plan order,
      ``[n_atoms, n_paths_in_group, 2 l_out + 1, C]``.
    """
    n_edges, c = sh.shape[0], xs[0].shape[-1]
    sizes = [n_p * c for block in plan.blocks for _, _, n_p in block[4]]
    w_groups = jnp.split(weights, np.cumsum(sizes)[:-1], axis=-1)
    d_sh = sh.shape[-1]
    results = []
    g = 0
    for _, d1, mat, k, groups in plan.blocks:
        i_in = plan.paths[groups[0][1]][0]
        x_e = jnp.take(xs[i_in], senders, axis=0, mode="clip")  # [E, d1, C]
        mat3 = mat.reshape(d_sh, d1, k)
        start = 0
        for ir3, _, n_p in groups:
            width = n_p * ir3.dim
            m = mat3[:, :, start:start + width].reshape(d_sh, d1 * width)
            a = (sh @ jnp.asarray(m, sh.dtype)).reshape(n_edges, d1, width)
            out = jnp.einsum("edk,edc->ekc", a, x_e).reshape(n_edges, n_p, ir3.dim, c)
            w = w_groups[g].reshape(n_edges, n_p, 1, c)
            msg = out * _repeat(w, ir3.dim, axis=2)
            results.append(jax.ops.segment_sum(msg, receivers, num_segments=n_atoms))
            start += width
            g += 1
    return results


def to_irreps(plan: ChannelwisePlan, groups: list[jax.Array]) -> e3nn.IrrepsArray:
    """Regroup :func:`channelwise_conv` outputs into an IrrepsArray ``(C·n)x ir_out``.

    Groups with the same output irrep are merged into one multiplicity.
    """
    lead = groups[0].shape[:-3]
    c = groups[0].shape[-1]
    by_ir: dict = {}
    g = 0
    for block in plan.blocks:
        for ir3, _, _ in block[4]:
            by_ir.setdefault(ir3, []).append(groups[g])
            g += 1
    irreps, chunks = [], []
    for ir3 in sorted(by_ir):
        block = jnp.concatenate(by_ir[ir3], axis=-3)  # [..., n_paths, d3, C]
        n_p = block.shape[-3]
        block = jnp.moveaxis(block, -1, -3)  # [..., C, n_paths, d3]
        chunks.append(block.reshape(*lead, c * n_p, ir3.dim))
        irreps.append((c * n_p, ir3))
    return e3nn.from_chunks(e3nn.Irreps(irreps), chunks, lead, groups[0].dtype)
