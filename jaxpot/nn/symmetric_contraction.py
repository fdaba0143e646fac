"""MACE's symmetric contraction: channel-wise products of the atomic basis up to order ν.

For every atom and channel ``c`` with atomic basis ``A_c`` (per-channel irreps, e.g.
``0e+1o+2e``, dimension ``d``) the layer computes, for each output irrep ``L``,

    B_{c,LM} = Σ_ν Σ_η w^{(ν)}_{z,c,η} Σ_{i1..iν} U^{(ν)}_{η,LM; i1..iν} A_{c,i1} ⋯ A_{c,iν}

where ``U^{(ν)}`` spans the symmetric rank-ν tensors that transform as ``L`` (from
:func:`e3nn_jax.reduced_symmetric_tensor_product_basis`) and the weights depend on the species
``z`` of the atom. Because ``U^{(ν)}`` is symmetric in its ν input indices, the sum over all
``d^ν`` index tuples collapses onto the ``C(d+ν−1, ν)`` sorted tuples (monomials) with their
multiplicities: jaxpot forms the monomials ``A_{i1} ⋯ A_{iν}`` (``i1 ≤ … ≤ iν``) once and
contracts them with the folded basis in one matrix product per order. For ``d = 9`` and ν = 3
that is 165 monomials instead of 729 index triples.

References:
  Batatia, Kovács, Simm, Ortner, Csányi, "MACE: Higher order equivariant message passing neural
  networks for fast and accurate force fields", NeurIPS 2022.
"""

from __future__ import annotations

import functools
import itertools
import math

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["symmetric_basis", "SymmetricContraction"]


@functools.lru_cache(maxsize=32)
def symmetric_basis(irreps_in: str, degree: int, irreps_out: str):
    """Folded symmetric coupling basis for one order.

    Args:
      irreps_in: per-channel input irreps (multiplicity 1 each).
      degree: correlation order ν ≥ 1.
      irreps_out: output irreps to keep (multiplicities ignored).

    Returns:
      ``(monomials [n_mono, ν] int, basis [n_mono, dim], out)`` where ``out`` lists
      ``(ir, η)`` in output order and ``dim = Σ η (2l+1)``, laid out irrep by irrep as
      ``[η, 2l+1]`` blocks. Monomials that no output uses are dropped.
    """
    ir_in = e3nn.Irreps(irreps_in)
    keep = e3nn.Irreps(irreps_out)
    u = e3nn.reduced_symmetric_tensor_product_basis(ir_in, degree, keep_ir=keep).regroup()
    d = ir_in.dim
    mono = list(itertools.combinations_with_replacement(range(d), degree))
    blocks, out = [], []
    for mul, ir in u.irreps:
        if mul == 0:
            continue
        chunk = np.asarray(u.filter(keep=[ir]).array)  # [d]*ν + [mul * dim]
        chunk = chunk.reshape((d,) * degree + (mul, ir.dim))
        rows = []
        for t in mono:
            counts = np.bincount(np.asarray(t), minlength=d)
            n_perm = math.factorial(degree) // int(np.prod([math.factorial(k) for k in counts]))
            rows.append(n_perm * chunk[t])
        blocks.append(np.stack(rows).reshape(len(mono), mul * ir.dim))
        out.append((ir, mul))
    basis = np.concatenate(blocks, axis=-1)
    used = np.abs(basis).max(axis=-1) > 1e-10
    return np.asarray(mono, np.int32)[used], basis[used], tuple(out)


class SymmetricContraction(nn.Module):
    """Species-dependent symmetric contraction of a per-channel atomic basis.

    Attributes:
      irreps_out: output irreps per channel (multiplicities ignored), e.g. ``"0e+1o+2e"``.
      correlation: maximal order ν (MACE's body order is ν + 1).
      num_species: number of weight sets.
    """

    irreps_out: str
    correlation: int
    num_species: int

    @nn.compact
    def __call__(self, a: jax.Array, irreps_a: e3nn.Irreps, species: jax.Array
                 ) -> e3nn.IrrepsArray:
        """Contract.

        Args:
          a: ``[n_atoms, irreps_a.dim, C]`` atomic basis, channels last and independent.
          irreps_a: per-channel irreps of ``a`` (multiplicity 1 each).
          species: ``[n_atoms]`` int species indices.

        Returns:
          IrrepsArray ``[n_atoms, C×irreps_out]`` (multiplicity C per output irrep).
        """
        irreps_a = e3nn.Irreps(irreps_a)
        n, d, c = a.shape
        if d != irreps_a.dim or species.shape != (n,):
            raise ValueError(f"expected a of shape [n, {irreps_a.dim}, C] and species [n], got "
                             f"{a.shape} and {species.shape}")
        keep = [ir for _, ir in e3nn.Irreps(self.irreps_out)]
        results: dict = {}
        for nu in range(1, self.correlation + 1):
            mono, basis, out = symmetric_basis(str(irreps_a), nu, str(e3nn.Irreps(keep)))
            if not out:
                continue
            prod = a[:, mono[:, 0], :]
            for k in range(1, nu):
                prod = prod * a[:, mono[:, k], :]  # [n, n_mono, C]
            b = jnp.einsum("nmc,mk->nkc", prod, jnp.asarray(basis, a.dtype))  # [n, dim, C]
            offset = 0
            for ir, eta in out:
                w = self.param(f"w{nu}_{ir}", nn.initializers.normal(1.0),
                               (self.num_species, eta, c))
                w = w[species].astype(a.dtype) / np.sqrt(eta * self.correlation)  # [n, η, C]
                blk = b[:, offset:offset + eta * ir.dim, :].reshape(n, eta, ir.dim, c)
                term = jnp.sum(blk * w[:, :, None, :], axis=1)  # [n, 2l+1, C]
                results[ir] = results[ir] + term if ir in results else term
                offset += eta * ir.dim
        irreps, chunks = [], []
        for ir in keep:
            if ir in results:
                irreps.append((c, ir))
                chunks.append(jnp.swapaxes(results[ir], -1, -2))
        return e3nn.from_chunks(e3nn.Irreps(irreps), chunks, (n,), a.dtype)
