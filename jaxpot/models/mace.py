"""MACE: higher-body-order equivariant message passing via symmetric contractions.

Architecture (per structure, one unbatched :class:`~jaxpot.System`):

1. Species embedding → ``C x 0e`` node features (as in :mod:`jaxpot.models.nequip`).
2. ``num_layers`` MACE layers. Each layer

   - builds the atomic basis ``A_i`` with :class:`~jaxpot.nn.EdgeConvolution` (linear up;
     channel-wise tensor product of neighbour features with ``Y^{l ≤ l_max}(r̂_ij)`` weighted
     by a bias-free radial MLP of the Bessel × envelope embedding; ``segment_sum`` over
     receivers divided by ``avg_num_neighbors``) and a linear map to ``C`` channels per
     spherical-harmonic irrep;
   - forms the higher-order basis ``B_i`` with the species-dependent
     :class:`~jaxpot.nn.SymmetricContraction` of correlation order ν (body order ν + 1);
   - updates ``h_i ← Linear(B_i) + SelfConnection_{z_i}(h_i)``. The last layer keeps only
     scalars.

3. Each layer's scalars are read out (linear for inner layers, linear → silu → linear for the
   last) and summed into one normalised number per atom, then scaled and shifted per species
   (``params["atomic_scale"]``, ``params["atomic_shift"]``, see :mod:`jaxpot.nn.atomic`).
   The last readout's silu activations (``[n_atoms, readout_hidden]``) are the model's
   per-atom ``"features"`` (``potential.atomic(params, system)["features"]``).

Parity conventions are those of :mod:`jaxpot.models.nequip` (``parity=False``: SO(3) only).

References:
  Batatia, Kovács, Simm, Ortner, Csányi, "MACE: Higher order equivariant message passing neural
  networks for fast and accurate force fields", NeurIPS 2022.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import e3nn_jax as e3nn
import flax.linen as nn
import jax

from jaxpot.models.nequip import (
    NequIPConfig,
    _make,
    hidden_irreps,
    sh_irreps,
    spherical_harmonics,
)
from jaxpot.nn.atomic import AtomicModel
from jaxpot.nn.embedding import SpeciesEmbedding, species_table
from jaxpot.nn.interaction import EdgeConvolution
from jaxpot.nn.radial import edge_geometry, radial_embedding
from jaxpot.nn.symmetric_contraction import SymmetricContraction
from jaxpot.nn.tensor_product import split_channels
from jaxpot.potential import Potential, register

__all__ = ["MACEConfig", "MACENet", "mace", "mace_atomic_energies"]


@dataclasses.dataclass(frozen=True)
class MACEConfig(NequIPConfig):
    """Hyperparameters of :func:`mace` (all JSON-serialisable).

    The fields of :class:`~jaxpot.models.NequIPConfig` (cutoff, species, features, num_layers,
    l_max, parity, num_bessel, envelope_p, radial_hidden, avg_num_neighbors, readout_hidden,
    scale, shift), with these differences:

    Attributes:
      features: hidden node irreps of the inner layers, e.g. ``"32x0e+32x1o+32x2e"``; every
        irrep must have the same multiplicity C (the number of channels).
      l_max: largest degree of the edge spherical harmonics (and of the atomic basis A).
      correlation: order ν of the symmetric contraction (body order ν + 1).
      avg_num_neighbors: the atomic basis is divided by it; set it from the training data
        (:func:`jaxpot.models.average_num_neighbors`).
      readout_hidden: width of the last layer's readout MLP.
    """

    features: str = "32x0e+32x1o+32x2e"
    correlation: int = 3

    def validated(self):
        """A normalised copy (species as symbols, tuples) or ``ValueError``."""
        if self.correlation < 1:
            raise ValueError(f"correlation must be >= 1, got {self.correlation}")
        features = e3nn.Irreps(self.features).simplify()
        if len({mul for mul, _ in features}) != 1:
            raise ValueError(f"MACE features need one multiplicity for all irreps, got {features}")
        return dataclasses.replace(super().validated(), features=str(features))


class MACELayer(nn.Module):
    """One MACE layer: atomic basis, symmetric contraction, linear update + self-connection."""

    features: str  # output node irreps
    irreps_sh: str
    correlation: int
    num_species: int
    channels: int
    radial_hidden: Sequence[int]
    avg_num_neighbors: float

    @nn.compact
    def __call__(self, h, species, sh, radial, senders, receivers):
        irreps_a = e3nn.Irreps(self.irreps_sh)
        msg = EdgeConvolution(self.channels, self.irreps_sh, self.irreps_sh, self.radial_hidden,
                              self.avg_num_neighbors, name="conv")(
            h, sh, radial, senders, receivers)
        a = e3nn.flax.Linear(self.channels * irreps_a, force_irreps_out=True,
                             name="linear_a")(msg)
        a_list, per_channel = split_channels(a)  # [[n, 2l+1, C], ...]
        a_arr = jax.numpy.concatenate(a_list, axis=-2)  # [n, dim_a, C]
        out = e3nn.Irreps(self.features)
        b = SymmetricContraction(str(e3nn.Irreps([(1, ir) for _, ir in out])), self.correlation,
                                 self.num_species, name="contraction")(
            a_arr, per_channel, species)
        m = e3nn.flax.Linear(out, force_irreps_out=True, name="linear_b")(b)
        sc = e3nn.flax.Linear(out, num_indexed_weights=self.num_species, force_irreps_out=True,
                              name="self_connection")(species, h)
        return m + sc


class MACENet(nn.Module):
    """Per-atom normalised outputs of MACE for one structure.

    Per-atom features: the last layer's readout silu activations ``[n_atoms,
    readout_hidden]`` (invariant) are sown as ``("intermediates", "features")``; they are the
    ``"features"`` of the model protocol (:mod:`jaxpot.nn.atomic`).

    Attributes:
      config: a validated :class:`MACEConfig`.
    """

    sows_features = True
    config: MACEConfig

    @nn.compact
    def __call__(self, vectors, edge_mask, species, senders, receivers):
        """Args: ``vectors [n_edges, 3]`` Å, ``edge_mask [n_edges]``, ``species [n_atoms]``
        int indices, ``senders``/``receivers [n_edges]``. Returns ``[n_atoms]``."""
        cfg = self.config
        n_species = len(cfg.species)
        feats = hidden_irreps(cfg.features, cfg.parity)
        channels = feats[0].mul
        irreps_sh = sh_irreps(cfg.l_max, cfg.parity)
        r, safe, inside = edge_geometry(vectors, edge_mask, cfg.cutoff)
        radial = radial_embedding(r, inside, cutoff=cfg.cutoff, num_basis=cfg.num_bessel,
                                  envelope_p=cfg.envelope_p)
        sh = spherical_harmonics(cfg.l_max, safe)
        emb = SpeciesEmbedding(n_species, channels, name="embedding")(species)
        h = e3nn.IrrepsArray(f"{channels}x0e", emb.astype(vectors.dtype))
        energy = 0.0
        for i in range(cfg.num_layers):
            last = i == cfg.num_layers - 1
            out = e3nn.Irreps(f"{channels}x0e") if last else feats
            h = MACELayer(str(out), str(irreps_sh), cfg.correlation, n_species, channels,
                          tuple(cfg.radial_hidden), cfg.avg_num_neighbors, name=f"layer_{i}")(
                h, species, sh, radial, senders, receivers)
            s = h.filter(keep="0e")
            if last:
                s = e3nn.flax.Linear(f"{cfg.readout_hidden}x0e", name=f"readout_{i}_hidden")(s)
                s = e3nn.IrrepsArray(s.irreps, jax.nn.silu(s.array))
                self.sow("intermediates", "features", s.array)
            energy = energy + e3nn.flax.Linear("1x0e", name=f"readout_{i}")(s).array[:, 0]
        return energy


def _model(config: MACEConfig) -> AtomicModel:
    return AtomicModel(MACENet(config), species_table(config.species), config.scale,
                       config.shift)


def mace_atomic_energies(config: MACEConfig | dict | None = None, **overrides):
    """``(params, system) -> [n_atoms]`` atomic energies (eV) of :func:`mace`'s model."""
    return _model(_make(config, overrides, MACEConfig)).atomic_energies


@register("mace", data_options=("cutoff", "avg_num_neighbors", "species"))
def mace(config: MACEConfig | dict | None = None, **overrides) -> Potential:
    """Build a MACE potential.

    Args:
      config: a :class:`MACEConfig`, a dict of its fields, or None for the defaults.
      **overrides: fields replacing those of ``config``.

    Returns:
      A :class:`~jaxpot.Potential`; ``energy(params, system)`` is Σ atomic energies (eV) of
      one unbatched structure. Params are ``{"net", "atomic_scale", "atomic_shift"}``;
      ``config = {"name": "mace", "kwargs": {...}}``.

    Raises:
      ValueError: invalid config; an unknown element in a structure (eager evaluation; under
        ``jit`` the energy is NaN instead: check first with
        :func:`jaxpot.potential.check_species`, as the CLI, MD, training and the ASE
        calculator do).

    Example:
      >>> from ase.build import bulk
      >>> import jax, jaxpot
      >>> pot = mace(species=["Cu"], features="4x0e+4x1o", cutoff=3.0, radial_hidden=[8])
      >>> system = jaxpot.System.from_ase(bulk("Cu", cubic=True), cutoff=pot.cutoff)
      >>> params = pot.init(jax.random.key(0), system)
      >>> pot.energy(params, system).shape
      ()
    """
    cfg = _make(config, overrides, MACEConfig)
    model = _model(cfg)
    return Potential(model.init, model.energy, cfg.cutoff,
                     {"name": "mace", "kwargs": cfg.to_dict()}, **model.protocol())
